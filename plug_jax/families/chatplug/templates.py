"""ChatPLUG's instruction templates: how a dialogue and its passages become FiD passages.

ChatPLUG (MODEL_SPECS.md section 13) reads one dialogue as a set of passages, each encoded
on its own (fusion-in-decoder). Every passage is the same instruction about the current
conversation followed by ONE extra passage::

    <base template with the context> # <suffix with one history / knowledge / profile text>

* The **context** is the last turns of the dialogue (the user's utterance and, by default,
  the two turns before it), rewritten as alternating speaker tags that end with the user:
  ``我：…你：…我：…`` (English ``Me: … You: … Me: …``), end punctuation added to a turn
  that has none (:func:`rewrite_history`).
* The **history** (older turns, up to ``max_history_turns`` counted back from the
  utterance) goes into its own passage, rewritten the same way, its last turn tagged
  ``你`` (with the released 3-turn context the assistant spoke just before it began; the
  tags keep alternating across the boundary for any context length).
* Each **knowledge** passage (one retrieved text), the **user profile** and the **bot
  profile** (persona) get a passage of their own.
* With nothing besides the context, the base template alone is the only passage.

Order as the released inference builds them: history, knowledge..., user profile..., bot
profile...; at most ``max_passages`` (released: 20), the tail dropped.

The released data keeps a dialogue's extra passages in one field, ``;;;``-separated, each
prefixed with its kind (``knowledge:``, ``history:``, ``user_profile:``,
``bot_profile:``); :func:`passage_field` writes that layout and :func:`parse_passage_field`
reads it back into ``(kind, text)`` pairs, the form :func:`render_passages` turns into FiD
passage strings.

The Chinese wording is our own paraphrase of the released templates (same slots and
meaning, not their text): "imagine we are chatting; give me a fitting, informative and
vivid reply; our conversation is: {context}", plus one ``#``-led suffix per passage kind
("before this we also talked about", "you also know the following", "you also know this
about me", "you also have this persona"). The English templates (for Shop World's English
dialogues) say the same. This module imports the standard library only.
"""
from __future__ import annotations

import string
from typing import Iterable, Sequence, Union

LANGS = ("zh", "en")
KINDS = ("history", "knowledge", "user_profile", "bot_profile")  # released prefixes
FIELD_SEPARATOR = ";;;"

# Our own paraphrases (see the module docstring). "{context}" etc. are the slots.
BASE_TEMPLATE = {
    "zh": "设想我们正在聊天，请给我一个恰当、有信息量又生动的回答。我们的对话如下：{context}",
    "en": "Imagine we are chatting. Give me a fitting, informative and lively reply. "
          "Our conversation: {context}",
}
SUFFIX_TEMPLATES = {
    "zh": {"history": "#在这之前我们还聊过：{history}",
           "knowledge": "#你还知道以下知识：{knowledge}",
           "user_profile": "#你还了解我的这些信息：{user_profile}",
           "bot_profile": "#你还有这样的人物设定：{bot_profile}"},
    "en": {"history": "#Before this we also said: {history}",
           "knowledge": "#You also know this: {knowledge}",
           "user_profile": "#You also know this about me: {user_profile}",
           "bot_profile": "#You also have this persona: {bot_profile}"},
}
# Speaker tags (the user is "me", the assistant "you") and how tagged turns are joined.
SPEAKER_TAGS = {"zh": {"me": "我：", "you": "你："}, "en": {"me": "Me: ", "you": "You: "}}
TURN_JOIN = {"zh": "", "en": " "}
# A turn ending in none of these gets FULL_STOP appended (ASCII and CJK punctuation).
END_PUNCTUATION = frozenset(string.punctuation + "、。，？！；：“”‘’（）【】《》〈〉…")
FULL_STOP = {"zh": "。", "en": "."}

# Released limits (XDPX FIDT5Chat / chat pipeline).
MAX_PASSAGES = 20
MAX_CONTEXT_TURNS = 2
MAX_HISTORY_TURNS = 10

Profile = Union[str, Sequence[str], None]


def check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"no ChatPLUG templates for language {lang!r}; use one of {LANGS}")


def rewrite_history(turns: Sequence[str], lang: str = "zh", last: str = "me") -> str:
    """Turns as one string of alternating speaker tags, the last turn tagged ``last``.

    ``last="me"`` for the context (it ends with the user's utterance), ``"you"`` for the
    history (the assistant spoke just before the context). Each turn is stripped and gets
    a full stop when it does not end in punctuation::

        rewrite_history(["您好", "我想买夹克"])         == "你：您好。我：我想买夹克。"
        rewrite_history(["Hi!", "A jacket"], "en")   == "You: Hi! Me: A jacket."
    """
    check_lang(lang)
    if last not in ("me", "you"):
        raise ValueError(f"last speaker must be 'me' or 'you', not {last!r}")
    tags = SPEAKER_TAGS[lang]
    other = {"me": "you", "you": "me"}
    out, who = [], last
    for turn in reversed(list(turns)):
        turn = str(turn).strip()
        if turn and turn[-1] not in END_PUNCTUATION:
            turn += FULL_STOP[lang]
        out.append(tags[who] + turn)
        who = other[who]
    return TURN_JOIN[lang].join(reversed(out))


def memory(turns: Sequence[str], max_context_turns: int = MAX_CONTEXT_TURNS,
           max_history_turns: int = MAX_HISTORY_TURNS) -> tuple[list[str], list[str]]:
    """``(context_turns, history_turns)`` of a dialogue that ends with the user's utterance.

    As the released chat pipeline keeps memory: the context is the ``max_context_turns``
    turns before the utterance plus the utterance; the history is the turns from
    ``max_history_turns`` back (counted before the utterance) up to the context, so it holds
    at most ``max_history_turns - max_context_turns`` turns (8 by default). Older turns are
    forgotten.
    """
    turns = [str(t) for t in turns]
    if not turns:
        raise ValueError("memory needs at least the user's utterance; got no turns")
    if not 0 <= max_context_turns <= max_history_turns:
        raise ValueError(f"need 0 <= max_context_turns <= max_history_turns, got "
                         f"{max_context_turns} and {max_history_turns}")
    before, utterance = turns[:-1], turns[-1]
    start = max(len(before) - max_context_turns, 0)
    context = before[start:] + [utterance]
    history = before[max(len(before) - max_history_turns, 0):start]
    return context, history


def _as_list(texts: Profile) -> list[str]:
    if texts is None:
        return []
    if isinstance(texts, str):
        texts = [texts]
    return [str(t).strip() for t in texts if str(t).strip()]


def tagged_passages(history_turns: Sequence[str] = (), knowledge: Iterable[str] = (),
                    user_profile: Profile = None, bot_profile: Profile = None,
                    lang: str = "zh", history_last: str = "you") -> list[tuple[str, str]]:
    """The extra passages as ``(kind, text)`` in the released order: the history (its turns
    rewritten, the last one tagged ``history_last``) as one passage, then each knowledge
    text, each user profile text, each bot profile text. Empty texts are left out."""
    check_lang(lang)
    out = []
    if list(history_turns):
        out.append(("history", rewrite_history(history_turns, lang, last=history_last)))
    for kind, texts in (("knowledge", knowledge), ("user_profile", user_profile),
                        ("bot_profile", bot_profile)):
        out += [(kind, t) for t in _as_list(texts)]
    return out


def render_passages(context: str, tagged: Sequence[tuple[str, str]], lang: str = "zh",
                    max_passages: int = MAX_PASSAGES) -> list[str]:
    """FiD passage strings: base template (with the rewritten ``context``) + one suffix per
    ``(kind, text)``; the base template alone when ``tagged`` is empty."""
    check_lang(lang)
    if max_passages < 1:
        raise ValueError(f"max_passages must be at least 1, got {max_passages}")
    base = BASE_TEMPLATE[lang].format(context=context)
    out = []
    for kind, text in tagged:
        if kind not in KINDS:
            raise ValueError(f"unknown passage kind {kind!r}; use one of {KINDS}")
        out.append(base + SUFFIX_TEMPLATES[lang][kind].format(**{kind: text}))
    return (out or [base])[:max_passages]


def build_passages(context_turns: Sequence[str], history_turns: Sequence[str] = (),
                   knowledge: Iterable[str] = (), user_profile: Profile = None,
                   bot_profile: Profile = None, lang: str = "zh",
                   max_passages: int = MAX_PASSAGES) -> list[str]:
    """The FiD passages of one dialogue step (see the module docstring).

    Args:
      context_turns: the context, ending with the user's utterance (``memory(turns)[0]``).
      history_turns: older turns (``memory(turns)[1]``); one passage when non-empty.
      knowledge: retrieved texts, one passage each.
      user_profile, bot_profile: a text or a list of texts, one passage each.
      lang: ``"zh"`` or ``"en"``.
      max_passages: keep at most this many (released: 20), dropping the tail.
    """
    context = rewrite_history(context_turns, lang, last="me")
    # The history's last turn came just before the context's first: "you" after an odd
    # context (released: always 3 turns, so always "你"), "me" after an even one.
    history_last = "you" if len(context_turns) % 2 else "me"
    tagged = tagged_passages(history_turns, knowledge, user_profile, bot_profile, lang,
                             history_last)
    return render_passages(context, tagged, lang, max_passages)


def passage_field(tagged: Sequence[tuple[str, str]]) -> str:
    """The released data layout: ``kind:text`` entries joined by ``;;;``."""
    for kind, text in tagged:
        if kind not in KINDS:
            raise ValueError(f"unknown passage kind {kind!r}; use one of {KINDS}")
        if FIELD_SEPARATOR in text:
            raise ValueError(f"a {kind} passage contains the separator {FIELD_SEPARATOR!r}")
    return FIELD_SEPARATOR.join(f"{kind}:{text}" for kind, text in tagged)


def parse_passage_field(field: str) -> list[tuple[str, str]]:
    """``(kind, text)`` pairs of a released ``;;;`` passage field. As the released reader
    does, an entry without a known prefix is knowledge and empty entries are skipped."""
    out = []
    for entry in field.split(FIELD_SEPARATOR):
        entry = entry.strip()
        if not entry:
            continue
        kind = next((k for k in KINDS if entry.startswith(k + ":")), None)
        if kind is None:
            out.append(("knowledge", entry))
        else:
            out.append((kind, entry[len(kind) + 1:]))
    return out


def template_texts(lang: str) -> list[str]:
    """Every fixed string the templates add (for vocabulary coverage)."""
    check_lang(lang)
    fixed = [BASE_TEMPLATE[lang].format(context="")]
    fixed += [t.format(**{k: ""}) for k, t in SUFFIX_TEMPLATES[lang].items()]
    fixed += list(SPEAKER_TAGS[lang].values()) + [FULL_STOP[lang]]
    return fixed

