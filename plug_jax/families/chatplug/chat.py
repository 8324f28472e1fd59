"""``plug-infer --chat``: a multi-turn chat with a ChatPLUG checkpoint, memory and retrieval
as released.

Each user turn is answered as the data tasks build an example (``tasks/chatplug.py``):

1. **memory** (:func:`templates.memory`): the last 2 turns before the utterance plus the
   utterance are the context; the turns from 10 back up to the context are the history
   passage; older turns are forgotten;
2. **retrieval**: the retriever's ``top_k`` passages for the remembered turns (one
   knowledge passage each; ``top_k`` = the model's ``num_passages`` - 3, at most
   :data:`tasks.chatplug.SHOP_TOP_K`);
3. the **passages** (instruction + context + one of knowledge, history, user profile, bot
   profile), each cut to ``passage_length`` and encoded once;
4. **decoding** with ``loop.infer``'s settings (the experiment gins bind ChatPLUG's
   released defaults: beams 3, length penalty 1.2, repetition penalty 1.2, no-repeat
   6-gram, minimum length 10); the response joins the memory.

The retriever is BM25 over the Shop World catalog of ``catalog_split`` in the task's
language, or the index in ``index_dir`` (``BM25Retriever.save`` writes one; ``python -m
plug_jax.families.chatplug.retrieval`` from a JSONL of your passages). ``--show_passages``
prints the passages the model read before each response. Turns come from ``--prompt``
flags (a scripted chat, in order) or, without them, from standard input, one turn a line
(``/reset`` forgets the dialogue, ``/exit`` or end of input stops).
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional, Sequence

import numpy as np

SPEAKER = {"zh": ("我", "ChatPLUG"), "en": ("Me", "ChatPLUG")}


class ChatSession:
    """One dialogue: ``reply(user_text)`` -> ``(response, passages, knowledge)``."""

    def __init__(self, model, params, vocabulary, *, lang: str, retriever,
                 decode_kw: dict, user_profile: str = "", bot_profile: Sequence[str] = (),
                 top_k: Optional[int] = None):
        from plug_jax.tasks import chatplug as tasks
        self.model, self.params, self.vocab, self.lang = model, params, vocabulary, lang
        self.retriever, self.decode_kw = retriever, dict(decode_kw)
        self.user_profile, self.bot_profile = user_profile, list(bot_profile)
        cfg = model.config
        self.num_passages, self.passage_length = int(cfg.num_passages), int(cfg.passage_length)
        if self.num_passages < 4:
            raise ValueError(f"chat needs num_passages >= 4 (knowledge + history + user and "
                             f"bot profile); this model has {self.num_passages}")
        self.top_k = min(tasks.SHOP_TOP_K, self.num_passages - 3) if top_k is None \
            else int(top_k)
        self.turns: list[str] = []
        self._tasks = tasks

    def reset(self) -> None:
        self.turns = []

    def reply(self, user_text: str):
        from plug_jax.trainer.loop import _decode_with_methods
        user_text = user_text.strip()
        if not user_text:
            raise ValueError("empty turn")
        turns = self.turns + [user_text]
        passages, knowledge, _ = self._tasks.fid_passages(
            turns, self.user_profile, self.bot_profile, self.lang, self.retriever,
            top_k=self.top_k, num_passages=self.num_passages)
        enc = self._tasks.encode_passages(passages, self.vocab, self.num_passages,
                                          self.passage_length)[None]
        kw = dict(self.decode_kw, methods=list(self.decode_kw["methods"])[:1])
        params = {"model": self.params, "encoder_ids": enc}
        ids, mask = np.zeros((1, 1), np.int32), np.ones((1, 1), np.int32)
        (_, texts), = _decode_with_methods(self.model, params, ids, mask, self.vocab, kw)
        response = texts[0].strip()
        self.turns = turns + [response]
        return response, passages, knowledge


def _turns(prompts: Sequence[str], stream) -> Iterable[str]:
    if prompts:
        yield from prompts
        return
    for line in stream:
        yield line.rstrip("\n")


def run_chat(*, model, params, vocabulary, dataset_cfg, prompts: Sequence[str],
             decode_kw: dict, show_passages: bool = False, model_dir: str = "",
             step=None, index_dir: Optional[str] = None, catalog_split: str = "test",
             user_profile: str = "", bot_profile: Sequence[str] = (),
             top_k: Optional[int] = None, stream=None) -> list[dict]:
    """The chat loop (module docstring); returns ``[{"user", "response", "passages",
    "knowledge_ids"}]`` per turn. ``index_dir``, ``catalog_split``, ``user_profile``,
    ``bot_profile`` and ``top_k`` are gin-configurable: a gin file that imports
    ``plug_jax.families.chatplug.chat as chat`` binds ``chat.run_chat.index_dir = '/path'``
    (``loop.infer`` calls gin's configured version)."""
    import seqio

    from plug_jax.families.chatplug import retrieval
    task = seqio.get_mixture_or_task(dataset_cfg.mixture_or_task_name)
    lang = (getattr(task, "plug_jax_spec", None) or {}).get("lang", "zh")
    if index_dir:
        retriever = retrieval.BM25Retriever.load(index_dir)
        where = index_dir
    else:
        from plug_jax.tasks.chatplug import shop_retriever
        retriever = shop_retriever(lang, catalog_split)
        where = f"Shop World {catalog_split} catalog ({lang})"
    session = ChatSession(model, params, vocabulary, lang=lang, retriever=retriever,
                          decode_kw=decode_kw, user_profile=user_profile,
                          bot_profile=bot_profile, top_k=top_k)
    me, bot = SPEAKER[lang]
    print(f"chat with {model_dir}" + (f" @ step {step}" if step is not None else "")
          + f": knowledge from {where}, {session.num_passages} passages of "
          f"{session.passage_length} tokens; memory 2 context + 10 history turns; decoding "
          + ", ".join(f"{k} {decode_kw[k]}" for k in ("num_beams", "length_penalty",
                                                     "repetition_penalty",
                                                     "no_repeat_ngram_size", "min_length"))
          + ("" if prompts else "\n(type a turn; /reset forgets the dialogue, /exit stops)"),
          flush=True)
    out = []
    for text in _turns(prompts, stream if stream is not None else sys.stdin):
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            session.reset()
            print("(dialogue forgotten)", flush=True)
            continue
        if not text.strip():
            continue
        response, passages, knowledge = session.reply(text)
        print(f"{me}：{text}" if lang == "zh" else f"{me}: {text}", flush=True)
        if show_passages:
            for i, p in enumerate(passages):
                print(f"    [passage {i}] {p}", flush=True)
            if knowledge:
                print("    knowledge: " + ", ".join(f"{k.id} ({k.score:.2f})"
                                                    for k in knowledge), flush=True)
        print(f"{bot}：{response}" if lang == "zh" else f"{bot}: {response}", flush=True)
        out.append({"user": text, "response": response, "passages": passages,
                    "knowledge_ids": [k.id for k in knowledge]})
    return out
