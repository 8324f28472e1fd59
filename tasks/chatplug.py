"""ChatPLUG's fusion-in-decoder dialogue tasks on Shop World.

``chatplug_shop_{zh,en}_v1``: one example per dialogue of TFDS config
``shop_world/dialogue_{lang}``; the model answers the user's last turn with the dialogue's
final assistant turn (``targets``, which names a product attribute and quotes the sentence
of the product's description that states it). The encoder reads ``P`` passages
(``plug_jax/families/chatplug/templates.py``), each the instruction with the context
(the last two turns and the user's utterance, ``我：…你：…我：…``) plus ONE of

* the **history** (older turns, as released memory keeps them), when there is any;
* a **knowledge** passage: one of the ``top_k`` catalog descriptions that the retriever
  (``plug_jax/families/chatplug/retrieval.py``, BM25 over the split's Shop World catalog)
  returns, at data time, for the dialogue as memory keeps it;
* the **user profile** (audience, style, budget) and the **bot profile** (the persona's
  sentences, one passage).

``chatplug_shop_nopassage_{zh,en}_v1``: the control, the same examples without the knowledge
passages (their slots stay empty), so a model trained on it can only guess the attributes.

**Encoding** (feature ``inputs``, add_eos False): each passage is tokenised, cut to ``L - 1``
tokens, ends in EOS (1) and is padded with 0 to exactly ``L``; the ``P`` passages are
concatenated into one 1-D row of ``P * L`` ids (passage ``p`` at ``[p * L, (p + 1) * L)``),
unused slots all zeros. The FiD network reshapes it to ``[P, L]``
(``ChatPLUGConfig.num_passages`` / ``passage_length``); set the ``inputs`` feature length
to exactly ``P * L`` and read the task unpacked (``pack=False``: packing would put
several examples' passages in one row). ``targets``: the response, EOS appended. Extra features for
evaluation and inspection: ``passages`` (the ``P`` passage strings, ``""`` for empty
slots), ``knowledge_ids`` (the ``top_k`` retrieved product ids, ``""`` padded),
``gold_rank`` (the gold product's rank among them, -1 when not retrieved or no knowledge),
``product_id`` and ``targets_pretokenized``.

**Sizes.** Released: :data:`RELEASED_NUM_PASSAGES` x :data:`RELEASED_PASSAGE_LENGTH`
(20 x 380 mT5 tokens), decoder :data:`RELEASED_MAX_DECODER_LENGTH` (512). Shop World:
:data:`SHOP_NUM_PASSAGES` = 6 = 3 knowledge + history + user profile + bot profile (every
slot used in a 5- or 6-turn dialogue; a Shop World dialogue has at most one of each
non-knowledge passage). ``L`` (:data:`SHOP_PASSAGE_LENGTH`) is the longest passage of any
split plus a margin, rounded up to a multiple of 32, so no passage is cut: the instruction
with its context alone is 85-160 tokens (the small Shop World vocabularies split Chinese
into characters and English into word pieces), a knowledge passage up to about 210 (zh)
and 330 (en). A small ``L`` such as 64 would cut every knowledge passage away entirely,
since the passage follows the instruction. ``targets`` fit :data:`SHOP_TARGET_LENGTH`.

**Retrieval.** The query is the dialogue as released memory keeps it (history and context
turns), not the user's last turn alone: Shop World's follow-up questions ("它是什么材质的？")
name no product, and the last turn alone retrieves the gold description for at most 1% of
them; the remembered turns (the assistant's recommendation names brand, colour, material
and price) put it first for all of them. Measured recall of the gold description in the
top 3 (zh / en): validation 0.86 / 0.91, test 0.89 / 0.94, train 0.82 / 0.80 (the train
catalog holds 10,000 products). What is missed are the 3-turn dialogues, whose response
is the recommendation itself: their only query is the user's request (audience, category,
style, budget), which many catalog products match (their recall: test 0.56 / 0.74,
train 0.13 / 0.06). So that every training target is
grounded in a passage, the ``train`` split puts the gold description in the last
knowledge slot when retrieval missed it (``gold_rank`` stays -1); validation and test use
retrieval alone. Passages are encoded independently and the decoder's cross-attention
has no position, so the slot it lands in tells the model nothing.

**Vocabulary.** :class:`ShopDialogueVocabulary`: the Shop World SentencePiece setup (same
trainer options, sizes zh 1024 / en 512, 100 extra ids) trained on the Shop World LM
corpus plus 1,000 train dialogues and the template strings. The plain Shop World
vocabulary is trained on titles, descriptions and reviews only, so it has no piece for 54
characters of the dialogues in Chinese (我, 你, ？, “ ” among them: every speaker tag
would be ``<unk>``) and for ``? ' “ ”`` in English; this one round-trips every Shop World
dialogue and every template exactly. It is cached like the Shop World vocabulary (in
``vocab/`` of ``$PLUG_JAX_CACHE``), keyed by its corpus and templates.
"""
from __future__ import annotations

import functools
import threading
from typing import Callable, Optional, Sequence

import numpy as np

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import registry, shop_world  # noqa: E402
from plug_jax.data import vocab as shop_vocab  # noqa: E402
from plug_jax.data.shop_world_tfds import VERSION, ShopWorldTfdsSource  # noqa: E402
from plug_jax.families.chatplug import retrieval, templates  # noqa: E402

from .curricula import EXTRA_IDS  # noqa: E402
from .gpt3 import WORLD_SEED  # noqa: E402

registry.add_task_prefixes("chatplug")

LANGS = ("zh", "en")
# Released limits (XDPX FIDT5Chat): passages, tokens per passage, decoder tokens.
RELEASED_NUM_PASSAGES = templates.MAX_PASSAGES  # 20
RELEASED_PASSAGE_LENGTH = 380
RELEASED_MAX_DECODER_LENGTH = 512
# The Shop World experiment (module docstring, "Sizes").
SHOP_TOP_K = 3
SHOP_NUM_PASSAGES = SHOP_TOP_K + 3  # + history, user profile, bot profile
SHOP_PASSAGE_LENGTH = {"zh": 224, "en": 352}
SHOP_TARGET_LENGTH = {"zh": 64, "en": 96}
# Splits whose examples get the gold description when retrieval misses it.
INJECT_GOLD_SPLITS = ("train",)
PAD_ID, EOS_ID = shop_vocab.PAD_ID, shop_vocab.EOS_ID

TASKS = {(knowledge, lang): f"chatplug_shop_{'' if knowledge else 'nopassage_'}{lang}_v1"
         for knowledge in (True, False) for lang in LANGS}


# ------------------------------------------------------------------------ vocabulary
DIALOGUE_CORPUS = "shop_world_lm+dialogues_v1"
NUM_VOCAB_DIALOGUES = 1000


def dialogue_document(ex: dict) -> str:
    """The text of a Shop World dialogue (``text_example(..., kinds=("dialogue",))``): its
    turns, profile and persona, one per line."""
    return "\n".join([t["text"] for t in ex["dialogue_turns"]]
                     + [ex["dialogue_profile"]["text"], *ex["dialogue_persona"]])


@functools.lru_cache(maxsize=4)
def vocabulary_corpus(seed: int, lang: str) -> tuple[str, ...]:
    """The Shop World vocabulary's corpus, ``NUM_VOCAB_DIALOGUES`` train dialogues and the
    template strings."""
    dialogues = [dialogue_document(shop_world.text_example(seed, "train", i, lang,
                                                           kinds=("dialogue",)))
                 for i in range(NUM_VOCAB_DIALOGUES)]
    return (shop_vocab.training_corpus(seed, lang) + tuple(dialogues)
            + tuple(templates.template_texts(lang)))


def ensure_dialogue_model_file(vocab_size: int, seed: int, lang: str,
                               cache_dir: Optional[str] = None) -> str:
    """Path of the cached dialogue SentencePiece model, trained first if missing
    (:func:`plug_jax.data.vocab.ensure_corpus_model`: the Shop World trainer options,
    single-threaded, so the bytes are the same on every machine; keyed by the corpus)."""
    return shop_vocab.ensure_corpus_model(vocabulary_corpus(int(seed), lang), vocab_size,
                                          f"shop_dialogue_{lang}", cache_dir)


class ShopDialogueVocabulary(shop_vocab.ShopWorldVocabulary):
    """The Shop World SentencePiece vocabulary, trained with the dialogues and templates
    too (module docstring, "Vocabulary"); trained and cached at first use."""

    def __init__(self, lang: str = "zh", seed: int = WORLD_SEED,
                 cache_dir: Optional[str] = None, extra_ids: int = EXTRA_IDS):
        super().__init__(None, seed=seed, lang=lang, cache_dir=cache_dir, extra_ids=extra_ids)

    @property
    def spec(self) -> dict:
        return {**super().spec, "corpus": DIALOGUE_CORPUS}

    def _ensure_file(self) -> None:
        if not self._sentencepiece_model_file:
            self._sentencepiece_model_file = ensure_dialogue_model_file(
                *self._shop_world_spec)

    @property
    def _base_vocab_size(self) -> int:
        # seqio's SentencePiece size: the model's pieces, extra ids included. SentencePiece
        # builds exactly the requested number (or training fails), so the size is known
        # without training the model (``plug-tasks list``).
        return int(self._shop_world_spec[0]) + self.extra_ids

    def __eq__(self, other):
        if not isinstance(other, ShopDialogueVocabulary):
            return NotImplemented if not isinstance(other, seqio.Vocabulary) else False
        return (self._shop_world_spec, self.extra_ids) == (other._shop_world_spec,
                                                           other.extra_ids)

    def __hash__(self):
        return hash((DIALOGUE_CORPUS, self._shop_world_spec, self.extra_ids))

    def __repr__(self) -> str:
        vocab_size, seed, lang, _ = self._shop_world_spec
        return (f"ShopDialogueVocabulary(vocab_size={vocab_size}, seed={seed}, "
                f"lang={lang!r}, extra_ids={self.extra_ids})")


@functools.lru_cache(maxsize=None)
def vocabulary(lang: str) -> ShopDialogueVocabulary:
    return ShopDialogueVocabulary(lang)


# ------------------------------------------------------------------------- retrieval
_RETRIEVERS: dict = {}
_RETRIEVER_LOCK = threading.Lock()


def shop_retriever(lang: str, split: str) -> retrieval.BM25Retriever:
    """The BM25 index of ``split``'s Shop World catalog, built once per process (about 4 s
    for train's 10,000 products, 0.3 s for validation or test)."""
    with _RETRIEVER_LOCK:
        if (lang, split) not in _RETRIEVERS:
            _RETRIEVERS[(lang, split)] = retrieval.BM25Retriever.shop_world(lang, split)
        return _RETRIEVERS[(lang, split)]


def split_of(product_id: str) -> str:
    """``"sw0-test-12"`` -> ``"test"``."""
    parts = product_id.split("-")
    if len(parts) != 3 or parts[1] not in shop_world.SPLITS:
        raise ValueError(f"not a Shop World product id: {product_id!r}")
    return parts[1]


# -------------------------------------------------------------------------- examples
def memory_query(turns: Sequence[str]) -> str:
    """The retrieval query of a dialogue that ends with the user's utterance: the turns
    memory keeps (history, then context), space-joined."""
    context, history = templates.memory(turns)
    return " ".join(history + context)


def fid_passages(turns: Sequence[str], profile: str, persona: Sequence[str], lang: str,
                 retriever: Optional[retrieval.Retriever], *, top_k: int = SHOP_TOP_K,
                 num_passages: int = SHOP_NUM_PASSAGES,
                 gold: Optional[retrieval.Passage] = None, inject_gold: bool = False
                 ) -> tuple[list[str], list[retrieval.Passage], int]:
    """``(passage strings, knowledge passages, gold rank)`` of one dialogue step.

    ``turns`` end with the user's utterance. Knowledge: ``retriever``'s ``top_k`` for
    :func:`memory_query` (none when ``retriever`` is None). ``gold_rank``: the rank of
    ``gold.id`` among them, -1 if absent; with ``inject_gold`` a missing ``gold`` replaces
    the last knowledge passage.
    """
    context, history = templates.memory(turns)
    knowledge, rank = [], -1
    if retriever is not None:
        knowledge = list(retriever.search(memory_query(turns), top_k))[:top_k]
        ids = [p.id for p in knowledge]
        if gold is not None and gold.id in ids:
            rank = ids.index(gold.id)
        elif gold is not None and inject_gold and top_k > 0:
            knowledge = knowledge[:top_k - 1] + [gold]
    bot_profile = templates.TURN_JOIN[lang].join(s.strip() for s in persona)
    passages = templates.build_passages(context, history, [p.text for p in knowledge],
                                        profile, bot_profile, lang, max_passages=num_passages)
    return passages, knowledge, rank


def encode_passages(passages: Sequence[str], vocab: seqio.Vocabulary, num_passages: int,
                    passage_length: int) -> np.ndarray:
    """int32 ``[num_passages * passage_length]``: each passage cut to ``L - 1`` tokens, EOS,
    zero-padded to ``L``; missing passages all zeros."""
    if len(passages) > num_passages:
        raise ValueError(f"{len(passages)} passages do not fit num_passages={num_passages}")
    if passage_length < 2:
        raise ValueError(f"passage_length must be at least 2, got {passage_length}")
    out = np.full((num_passages, passage_length), PAD_ID, np.int32)
    for i, text in enumerate(passages):
        if text:
            ids = list(vocab.encode(text))[:passage_length - 1] + [EOS_ID]
            out[i, :len(ids)] = ids
    return out.reshape(-1)


def split_inputs(inputs: np.ndarray, passage_length: int) -> np.ndarray:
    """``[P * L]`` (or ``[B, P * L]``) -> ``[P, L]`` (``[B, P, L]``)."""
    inputs = np.asarray(inputs)
    return inputs.reshape(inputs.shape[:-1] + (-1, passage_length))


# ------------------------------------------------------------------ preprocessors
def _fid_examples(dataset, *, lang: str, knowledge: bool, top_k: int, num_passages: int,
                  passage_length: int, retriever_fn: Callable[[str, str], retrieval.Retriever]):
    vocab = vocabulary(lang)

    def build(product_id, turns, profile, persona, titles, texts, gold_index):
        pid = product_id.decode()
        split = split_of(pid)
        turns = [t.decode() for t in turns][:-1]  # the last turn is the response
        gold = retrieval.Passage(pid, titles[gold_index].decode(),
                                 texts[gold_index].decode(), 0.0)
        passages, hits, rank = fid_passages(
            turns, profile.decode(), [p.decode() for p in persona], lang,
            retriever_fn(lang, split) if knowledge else None, top_k=top_k,
            num_passages=num_passages, gold=gold, inject_gold=split in INJECT_GOLD_SPLITS)
        ids = [p.id for p in hits] + [""] * (top_k - len(hits))
        padded = passages + [""] * (num_passages - len(passages))
        return (encode_passages(passages, vocab, num_passages, passage_length),
                np.array([p.encode() for p in padded], dtype=object),
                np.array([i.encode() for i in ids], dtype=object), np.int32(rank))

    def f(ex):
        inputs, passages, ids, rank = tf.numpy_function(
            build, [ex["product_id"], ex["turn"], ex["profile"], ex["persona"],
                    ex["passage_title"], ex["passage"], ex["gold_passage"]],
            [tf.int32, tf.string, tf.string, tf.int32], stateful=False)
        inputs.set_shape([num_passages * passage_length])
        passages.set_shape([num_passages])
        ids.set_shape([top_k])
        rank.set_shape([])
        response = ex["turn"][-1]
        return {"inputs": inputs, "targets": vocab.encode_tf(response),
                "targets_pretokenized": response, "passages": passages,
                "knowledge_ids": ids, "gold_rank": rank, "product_id": ex["product_id"]}

    return dataset.map(f, num_parallel_calls=tf.data.AUTOTUNE)


def _check_input_length(dataset, sequence_length=None, *, length: int):
    """One-line error when the ``inputs`` length would cut the passage layout."""
    want = (sequence_length or {}).get("inputs")
    if want is not None and int(want) != length:
        raise ValueError(f"the ChatPLUG inputs are {length} ids (passages x passage length); "
                         f"set the 'inputs' feature length to {length}, not {want}")
    return dataset


def register_chatplug_task(name: str, lang: str, *, knowledge: bool = True,
                           top_k: int = SHOP_TOP_K, num_passages: int = SHOP_NUM_PASSAGES,
                           passage_length: Optional[int] = None,
                           retriever_fn: Callable[[str, str], retrieval.Retriever]
                           = shop_retriever):
    """Register (once) a FiD dialogue task on ``shop_world/dialogue_{lang}``.

    ``retriever_fn(lang, split)`` gives the knowledge source of a split (default: BM25 over
    the split's Shop World catalog); ``num_passages`` must hold ``top_k`` + 3.
    """
    if lang not in LANGS:
        raise ValueError(f"ChatPLUG Shop World tasks come in {LANGS}, not {lang!r}")
    if num_passages < top_k + 3:
        raise ValueError(f"num_passages={num_passages} cannot hold {top_k} knowledge "
                         f"passages + history + user profile + bot profile")
    length = SHOP_PASSAGE_LENGTH[lang] if passage_length is None else int(passage_length)
    vocab = vocabulary(lang)
    spec = {"kind": "chatplug_shop_fid", "version": VERSION, "lang": lang,
            "knowledge": bool(knowledge), "top_k": top_k, "num_passages": num_passages,
            "passage_length": length, "inject_gold": list(INJECT_GOLD_SPLITS),
            "retriever": (f"{retrieval.FORMAT} {retrieval.TOKENIZER} {retrieval.BM25_PARAMS}"
                          if retriever_fn is shop_retriever else repr(retriever_fn)),
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}

    def build():
        source = ShopWorldTfdsSource(f"dialogue_{lang}", features=[
            "product_id", "turn", "profile", "persona", "passage_title", "passage",
            "gold_passage"])
        preprocessors = [
            functools.partial(_fid_examples, lang=lang, knowledge=knowledge, top_k=top_k,
                              num_passages=num_passages, passage_length=length,
                              retriever_fn=retriever_fn),
            functools.partial(_check_input_length, length=num_passages * length),
            seqio.preprocessors.append_eos_after_trim]
        output = {"inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
                  "targets": seqio.Feature(vocab, add_eos=True, dtype=tf.int32)}
        return seqio.TaskRegistry.add(name, source=source, preprocessors=preprocessors,
                                      output_features=output, shuffle_buffer_size=1024)

    return registry.register_task(name, spec, build)


for (_knowledge, _lang), _name in TASKS.items():
    register_chatplug_task(_name, _lang, knowledge=_knowledge)
