"""BERT WordPiece vocabulary (``vocab.txt``) as a ``seqio.Vocabulary``.

The released Chinese AliceMind checkpoints (PLUG, StructBERT, PALM) use the 21128-entry
BERT-Chinese ``vocab.txt``; PLUG's embedding has 21504 rows (the vocabulary padded to a
multiple of 128). ``WordPieceVocabulary(path, pad_to_multiple_of=128)`` reproduces that.

Tokenization follows BERT exactly: clean the text (drop NUL, U+FFFD and control characters,
map whitespace to spaces), put spaces around CJK ideographs, split on whitespace, lower-case
and strip accents (``do_lower_case``), split off every punctuation character, then greedy
longest-match-first WordPiece with ``##`` continuations; a word that cannot be covered (or
is longer than 100 characters) becomes ``[UNK]``. The special tokens ``[PAD] [UNK] [CLS]
[SEP] [MASK]`` and every ``extra_tokens`` entry written literally in the text encode as
their single id (they are matched before normalisation, case-sensitively).

Id layout: the file's tokens keep their line numbers; ``extra_tokens`` (e.g.
``location_tokens(1000)`` for grounding) follow; then, with ``pad_to_multiple_of``, unused
``[PLUG_UNUSED_k]`` placeholders fill up to the next multiple. Extra tokens thus take rows a
padded checkpoint already has (21128.. for BERT-Chinese) while the total still fits.

seqio conventions: ``[PAD]`` must have id 0 (seqio pads with 0); ``eos_id`` is ``[SEP]``,
``bos_id`` is ``[CLS]``; ``extra_ids`` is always 0 (use ``extra_tokens``).

``LazyWordPieceVocabulary(path_or_callable, ...)`` is the same vocabulary built on first use:
tasks over a ``vocab.txt`` the user supplies (e.g. mPLUG's bert-base-uncased file) register
at import without the file, and a missing file is one ``ValueError`` line when the task is
first used.
"""
from __future__ import annotations

import hashlib
import os
import threading
import unicodedata
from typing import Iterable, Optional, Sequence

import numpy as np

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_INPUT_CHARS_PER_WORD = 100
PLACEHOLDER_FORMAT = "[PLUG_UNUSED_{}]"

# Code-point blocks BERT treats as CJK ideographs (split into single characters).
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)
# Decoding: no space before these (ASCII closers) / after these (ASCII openers).
_NO_SPACE_BEFORE = set(".,!?;:)]}%'\"")
_NO_SPACE_AFTER = set("([{")


def location_tokens(n: int, prefix: str = "loc") -> list[str]:
    """``["<loc_0>", ..., "<loc_{n-1}>"]``: quantised box-coordinate tokens for grounding."""
    if int(n) < 0:
        raise ValueError(f"location_tokens needs n >= 0, got {n}; pass the number of bins")
    return [f"<{prefix}_{i}>" for i in range(int(n))]


def is_cjk_char(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # BERT counts every non-alphanumeric printable ASCII character as punctuation.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text)
                   if unicodedata.category(c) != "Mn")


def basic_tokenize(text: str, do_lower_case: bool = True) -> list[str]:
    """BERT's BasicTokenizer: clean, split CJK / whitespace / punctuation, lower-case."""
    chars = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        if _is_whitespace(ch):
            chars.append(" ")
        elif is_cjk_char(ch):
            chars.extend((" ", ch, " "))
        else:
            chars.append(ch)
    out = []
    for word in "".join(chars).split():
        if do_lower_case:
            word = _strip_accents(word.lower())
        current = []
        for ch in word:
            if _is_punctuation(ch):
                if current:
                    out.append("".join(current))
                    current = []
                out.append(ch)
            else:
                current.append(ch)
        if current:
            out.append("".join(current))
    return out


def _read_vocab_file(vocab_file: str) -> list[str]:
    path = os.fspath(vocab_file)
    if not os.path.isfile(path):
        raise ValueError(f"WordPiece vocab file {path!r} not found; pass the path of a "
                         f"BERT-style vocab.txt (one token per line)")
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\r\n") for line in f]
    while tokens and not tokens[-1].strip():  # trailing blank lines
        tokens.pop()
    if not tokens:
        raise ValueError(f"WordPiece vocab file {path!r} is empty; pass a BERT-style "
                         f"vocab.txt (one token per line)")
    return tokens


class PythonTokenizerTF:
    """The TensorFlow half of a seqio Vocabulary whose tokenizer is Python code: ``encode_tf`` /
    ``decode_tf`` run the class's ``_encode(str) -> ids`` / ``_decode(ids) -> str`` through
    ``tf.numpy_function`` (a scalar string gives int32 ``[n]``, rank-1 strings a
    ``tf.RaggedTensor``; ids ``[..., n]`` decode to strings ``[...]``). ``_prepare_tf()`` runs
    in Python before the graph op is built (a vocabulary read lazily loads its files there, so
    a missing file fails as one line, not inside the graph)."""

    def _prepare_tf(self) -> None:
        pass

    def _encode_np(self, s) -> np.ndarray:
        return np.asarray(self._encode(_as_text(s)), dtype=np.int32)

    def _encode_batch_np(self, strings) -> tuple[np.ndarray, np.ndarray]:
        rows = [self._encode(_as_text(s)) for s in np.asarray(strings).reshape(-1)]
        flat = np.asarray([i for r in rows for i in r], dtype=np.int32)
        return flat, np.asarray([len(r) for r in rows], dtype=np.int64)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """Scalar string -> int32 ``[n]``; rank-1 strings -> ``tf.RaggedTensor``."""
        self._prepare_tf()
        s = tf.convert_to_tensor(s, dtype=tf.string)
        if s.shape.rank == 0:
            ids = tf.numpy_function(self._encode_np, [s], tf.int32, stateful=False)
            ids.set_shape([None])
            return ids
        if s.shape.rank == 1:
            flat, lengths = tf.numpy_function(self._encode_batch_np, [s],
                                              [tf.int32, tf.int64], stateful=False)
            flat.set_shape([None])
            lengths.set_shape(s.shape)
            return tf.RaggedTensor.from_row_lengths(flat, lengths)
        raise ValueError(f"{type(self).__name__}.encode_tf takes a scalar or rank-1 string "
                         f"tensor, got rank {s.shape.rank}; reshape it first")

    def _decode_np(self, ids: np.ndarray) -> np.ndarray:
        flat = ids.reshape(-1, ids.shape[-1]) if ids.ndim else ids.reshape(1, 1)
        out = np.array([self._decode(row.tolist()).encode("utf-8") for row in flat],
                       dtype=object)
        return out.reshape(ids.shape[:-1]) if ids.ndim else out.reshape(())

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int ``[..., n]`` -> string ``[...]``."""
        self._prepare_tf()
        if isinstance(ids, tf.RaggedTensor):
            ids = ids.to_tensor(default_value=self.pad_id)
        ids = tf.convert_to_tensor(ids)
        out = tf.numpy_function(self._decode_np, [ids], tf.string, stateful=False)
        if ids.shape.rank is not None:
            out.set_shape(ids.shape[:-1])
        return out


class WordPieceVocabulary(PythonTokenizerTF, seqio.Vocabulary):
    """A BERT ``vocab.txt`` WordPiece vocabulary usable in seqio tasks and feature converters.

    Args:
      vocab_file: path of the ``vocab.txt`` (one token per line; id = line number).
      do_lower_case: lower-case and strip accents before WordPiece (True for
        BERT-Chinese / PLUG).
      pad_to_multiple_of: pad the vocabulary (after ``extra_tokens``) with unused
        placeholder tokens so ``vocab_size`` is a multiple of this (PLUG: 128 -> 21504).
      extra_tokens: new tokens appended after the file's, each encoding as one id.
    """

    def __init__(self, vocab_file: str | os.PathLike, *, do_lower_case: bool = True,
                 pad_to_multiple_of: Optional[int] = None, extra_tokens: Iterable[str] = ()):
        super().__init__(extra_ids=0)
        self._vocab_file = os.fspath(vocab_file)
        self._do_lower_case = bool(do_lower_case)
        file_tokens = _read_vocab_file(self._vocab_file)
        self._file_size = len(file_tokens)
        self._token_to_id: dict[str, int] = {}
        for i, tok in enumerate(file_tokens):
            self._token_to_id[tok] = i  # a repeated line: the last one wins, like BERT
        missing = [t for t in SPECIAL_TOKENS if t not in self._token_to_id]
        if missing:
            raise ValueError(f"WordPiece vocab file {self._vocab_file!r} lacks special "
                             f"token(s) {missing}; use a BERT vocab.txt that has all of "
                             f"{list(SPECIAL_TOKENS)}")
        if self._token_to_id["[PAD]"] != 0:
            raise ValueError(f"WordPiece vocab file {self._vocab_file!r} has [PAD] at id "
                             f"{self._token_to_id['[PAD]']}; seqio pads with id 0, so put "
                             f"[PAD] on the first line")
        extra = [str(t) for t in extra_tokens]
        bad = sorted({t for t in extra if t in self._token_to_id or extra.count(t) > 1
                      or not t or any(_is_whitespace(c) for c in t)})
        if bad:
            raise ValueError(f"extra_tokens must be new, unique, non-empty tokens without "
                             f"whitespace; offending: {bad[:5]}; rename or drop them")
        self._extra_tokens = tuple(extra)
        id_to_token = list(file_tokens) + extra
        for k, tok in enumerate(extra):
            self._token_to_id[tok] = self._file_size + k
        if pad_to_multiple_of is not None:
            m = int(pad_to_multiple_of)
            if m <= 0:
                raise ValueError(f"pad_to_multiple_of must be a positive int, got "
                                 f"{pad_to_multiple_of}; pass e.g. 128 or None")
            n_pad = -len(id_to_token) % m
            id_to_token += [PLACEHOLDER_FORMAT.format(k) for k in range(n_pad)]
        self._pad_to_multiple_of = None if pad_to_multiple_of is None else int(
            pad_to_multiple_of)
        self._id_to_token = id_to_token
        # Tokens matched literally in raw text before BERT normalisation, longest first.
        self._atomic = sorted(set(SPECIAL_TOKENS) | set(extra), key=len, reverse=True)
        self._skip_on_decode = {self.pad_id, self.cls_id, self.sep_id}
        self._skip_on_decode.update(range(len(file_tokens) + len(extra), len(id_to_token)))
        with open(self._vocab_file, "rb") as f:
            digest = hashlib.sha256(f.read())
        digest.update(repr((self._do_lower_case, self._extra_tokens,
                            self._pad_to_multiple_of)).encode())
        self._fingerprint = digest.hexdigest()[:16]

    # ----------------------------------------------------------------- ids / metadata
    @property
    def vocab_file(self) -> str:
        return self._vocab_file

    @property
    def do_lower_case(self) -> bool:
        return self._do_lower_case

    @property
    def extra_tokens(self) -> tuple[str, ...]:
        return self._extra_tokens

    @property
    def file_vocab_size(self) -> int:
        """Number of lines (tokens) in ``vocab.txt``."""
        return self._file_size

    @property
    def fingerprint(self) -> str:
        """Short sha256 of the file bytes and options: equal means the same token ids."""
        return self._fingerprint

    @property
    def _base_vocab_size(self) -> int:
        return len(self._id_to_token)

    @property
    def pad_id(self) -> int:
        return self._token_to_id["[PAD]"]

    @property
    def unk_id(self) -> int:
        return self._token_to_id["[UNK]"]

    @property
    def cls_id(self) -> int:
        return self._token_to_id["[CLS]"]

    @property
    def sep_id(self) -> int:
        return self._token_to_id["[SEP]"]

    @property
    def mask_id(self) -> int:
        return self._token_to_id["[MASK]"]

    @property
    def eos_id(self) -> int:
        return self.sep_id

    @property
    def bos_id(self) -> int:
        return self.cls_id

    def token_to_id(self, token: str) -> int:
        return self._token_to_id.get(token, self.unk_id)

    def id_to_token(self, i: int) -> str:
        i = int(i)
        return self._id_to_token[i] if 0 <= i < len(self._id_to_token) else "[UNK]"

    # ----------------------------------------------------------------- tokenization
    def _split_atomic(self, text: str) -> list[tuple[bool, str]]:
        """Split ``text`` into (is_atomic_token, piece) runs."""
        out, start, i = [], 0, 0
        while i < len(text):
            for tok in self._atomic:
                if text.startswith(tok, i):
                    if start < i:
                        out.append((False, text[start:i]))
                    out.append((True, tok))
                    i += len(tok)
                    start = i
                    break
            else:
                i += 1
        if start < len(text):
            out.append((False, text[start:]))
        return out

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > MAX_INPUT_CHARS_PER_WORD:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = self._token_to_id.get(piece)
                if found is not None and found < self._file_size:
                    break
                found = None
                end -= 1
            if found is None:
                return [self.unk_id]
            ids.append(found)
            start = end
        return ids

    def tokenize(self, text: str) -> list[str]:
        return [self._id_to_token[i] for i in self._encode(text)]

    def _encode(self, s: str) -> list[int]:
        if isinstance(s, bytes):
            s = s.decode("utf-8")
        ids: list[int] = []
        for atomic, piece in self._split_atomic(s):
            if atomic:
                ids.append(self._token_to_id[piece])
                continue
            for word in basic_tokenize(piece, self._do_lower_case):
                ids.extend(self._wordpiece(word))
        return ids

    def _decode(self, ids: Sequence[int]) -> str:
        pieces: list[str] = []
        for i in ids:
            i = int(i)
            if i in self._skip_on_decode:
                continue
            pieces.append(self.id_to_token(i))
        return detokenize(pieces)

    # ----------------------------------------------------------------- identity
    def __eq__(self, other):
        if not isinstance(other, WordPieceVocabulary):
            return NotImplemented if not isinstance(other, seqio.Vocabulary) else False
        return self._fingerprint == other._fingerprint

    def __hash__(self):
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        return (f"WordPieceVocabulary({self._vocab_file!r}, do_lower_case="
                f"{self._do_lower_case}, pad_to_multiple_of={self._pad_to_multiple_of}, "
                f"extra_tokens=<{len(self._extra_tokens)}>, vocab_size={self.vocab_size})")


def _as_text(s) -> str:
    if isinstance(s, np.ndarray):
        s = s.item()
    return s.decode("utf-8") if isinstance(s, bytes) else str(s)


def _is_cjk_piece(tok: str) -> bool:
    """A token that should not be space-separated: one CJK ideograph or non-ASCII
    punctuation (full-width ``，。！？`` etc.)."""
    return len(tok) == 1 and (is_cjk_char(tok) or (ord(tok) > 127 and _is_punctuation(tok)))


def detokenize(tokens: Sequence[str]) -> str:
    """Join WordPiece tokens: ``##`` pieces glue to the previous token, no spaces next to
    CJK characters or full-width punctuation, none before ASCII closers (``.,!?;:)``) or
    after openers (``([{``); other tokens are separated by one space."""
    out: list[str] = []
    prev: Optional[str] = None
    for tok in tokens:
        if tok.startswith("##") and len(tok) > 2 and prev is not None:
            out.append(tok[2:])
            prev = tok[2:]
            continue
        if prev is not None and not (
                _is_cjk_piece(tok) or _is_cjk_piece(prev) or tok in _NO_SPACE_BEFORE
                or prev in _NO_SPACE_AFTER):
            out.append(" ")
        out.append(tok)
        prev = tok
    return "".join(out)


# ------------------------------------------------------------------ Shop World vocab.txt
SHOP_WORLD_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def shop_world_vocab_lines(seed: int = 0) -> list[str]:
    """A character-level Chinese WordPiece vocabulary for Shop World (BERT-Chinese style).

    Specials, then every character of the zh training corpus (in first-seen order, so the
    file is identical on every machine), then the lower-cased English words of the en
    corpus and ``##`` continuation pieces of their characters (digits included), so English
    and numbers inside Chinese text also encode without ``[UNK]``.
    """
    from plug_jax.data import vocab as sp_vocab  # noqa: PLC0415  (the fixed corpora)
    lines, seen = list(SHOP_WORLD_SPECIALS), set(SHOP_WORLD_SPECIALS)

    def add(tok: str) -> None:
        if tok and tok not in seen:
            seen.add(tok)
            lines.append(tok)

    for text in sp_vocab.training_corpus(seed, "zh"):
        for tok in basic_tokenize(text, do_lower_case=True):
            if len(tok) == 1:
                add(tok)
            else:  # latin words and numbers inside Chinese text: characters as pieces
                add(tok[0])
                for ch in tok[1:]:
                    add("##" + ch)
    for text in sp_vocab.training_corpus(seed, "en"):
        for tok in basic_tokenize(text, do_lower_case=True):
            add(tok)
            add(tok[0])
            for ch in tok[1:]:
                add("##" + ch)
    return lines


def shop_world_wordpiece(seed: int = 0, cache_dir: Optional[str] = None,
                         **kwargs) -> "WordPieceVocabulary":
    """``WordPieceVocabulary`` over the Shop World ``vocab.txt``, written once to the cache."""
    from plug_jax.data import vocab as sp_vocab  # noqa: PLC0415
    lines = shop_world_vocab_lines(seed)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = sp_vocab.default_cache_dir(cache_dir) / "vocab" / f"shop_world_wordpiece_{digest}.txt"
    if not path.exists():
        sp_vocab._write_once(path, data)
    return WordPieceVocabulary(str(path), **kwargs)


# ------------------------------------------------------------------ lazy variant
class LazyWordPieceVocabulary(seqio.Vocabulary):
    """A :class:`WordPieceVocabulary` built on first use, so tasks over a user-supplied
    ``vocab.txt`` can be registered when ``plug_jax.tasks`` is imported without the file.

    Constructing one never touches the file. The first call that needs the tokens
    (``encode`` / ``decode`` and their TF versions, ``eos_id``, ``unk_id``, ``pad_id``,
    ``bos_id``, the WordPiece extras such as ``cls_id`` or ``fingerprint``) builds the real
    vocabulary once and delegates to it from then on. Until then ``vocab_file`` answers
    with the path the file would be read from (nothing is opened).

    Args:
      vocab_file: the path of ``vocab.txt``, or a zero-argument callable returning it
        (called at first use, so e.g. an environment variable is read then, not at import).
      expected_vocab_size: optional. When given, ``vocab_size`` answers it without reading
        the file (listings such as ``plug-tasks list`` work on a machine without the data),
        and a file that gives another size is a one-line ``ValueError`` when it is loaded.
      missing_hint: the fix appended to the one-line ``ValueError`` a missing file raises.
      do_lower_case, pad_to_multiple_of, extra_tokens: as :class:`WordPieceVocabulary`.

    A failed load (missing file) is not remembered: the next use tries again. Two lazy
    vocabularies with the same path and options compare equal without reading the file;
    otherwise equality compares the loaded vocabularies (write ``lazy == other``: the
    eager class's ``__eq__`` does not know this one).
    """

    def __init__(self, vocab_file, *, do_lower_case: bool = True,
                 pad_to_multiple_of: Optional[int] = None, extra_tokens: Iterable[str] = (),
                 expected_vocab_size: Optional[int] = None,
                 missing_hint: str = "put a BERT-style vocab.txt (one token per line) there"):
        super().__init__(extra_ids=0)
        if not (callable(vocab_file) or isinstance(vocab_file, (str, os.PathLike))):
            raise ValueError(f"LazyWordPieceVocabulary takes a path or a zero-argument "
                             f"callable returning one, got {type(vocab_file).__name__}")
        self._source = vocab_file if callable(vocab_file) else os.fspath(vocab_file)
        self._kwargs = {"do_lower_case": bool(do_lower_case),
                        "pad_to_multiple_of": (None if pad_to_multiple_of is None
                                               else int(pad_to_multiple_of)),
                        "extra_tokens": tuple(str(t) for t in extra_tokens)}
        self._expected_size = None if expected_vocab_size is None else int(expected_vocab_size)
        self._missing_hint = str(missing_hint)
        self._vocab: Optional[WordPieceVocabulary] = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- loading
    def _resolve(self) -> str:
        if self._vocab is not None:
            return self._vocab.vocab_file
        return os.fspath(self._source() if callable(self._source) else self._source)

    @property
    def loaded(self) -> bool:
        """Whether the file has been read (the real vocabulary exists)."""
        return self._vocab is not None

    def load(self) -> WordPieceVocabulary:
        """The real :class:`WordPieceVocabulary` (read from the file on the first call)."""
        if self._vocab is None:
            with self._lock:
                if self._vocab is None:
                    path = self._resolve()
                    if not os.path.isfile(path):
                        raise ValueError(f"WordPiece vocab file {path!r} not found; "
                                         f"{self._missing_hint}")
                    vocab = WordPieceVocabulary(path, **self._kwargs)
                    if (self._expected_size is not None
                            and vocab.vocab_size != self._expected_size):
                        raise ValueError(f"WordPiece vocab file {path!r} gives "
                                         f"{vocab.vocab_size} ids but {self._expected_size} "
                                         f"are expected; {self._missing_hint}")
                    self._vocab = vocab
        return self._vocab

    # ----------------------------------------------------------------- ids / metadata
    @property
    def vocab_file(self) -> str:
        """The file's path: resolved now (not opened) until loaded, then the one read."""
        return self._resolve()

    @property
    def do_lower_case(self) -> bool:
        return self._kwargs["do_lower_case"]

    @property
    def extra_tokens(self) -> tuple[str, ...]:
        return self._kwargs["extra_tokens"]

    @property
    def file_vocab_size(self) -> int:
        return self.load().file_vocab_size

    @property
    def fingerprint(self) -> str:
        return self.load().fingerprint

    @property
    def _base_vocab_size(self) -> int:
        if self._vocab is None and self._expected_size is not None:
            return self._expected_size
        return self.load()._base_vocab_size

    @property
    def pad_id(self) -> int:
        return self.load().pad_id

    @property
    def unk_id(self) -> int:
        return self.load().unk_id

    @property
    def cls_id(self) -> int:
        return self.load().cls_id

    @property
    def sep_id(self) -> int:
        return self.load().sep_id

    @property
    def mask_id(self) -> int:
        return self.load().mask_id

    @property
    def eos_id(self) -> int:
        return self.load().eos_id

    @property
    def bos_id(self) -> int:
        return self.load().bos_id

    def token_to_id(self, token: str) -> int:
        return self.load().token_to_id(token)

    def id_to_token(self, i: int) -> str:
        return self.load().id_to_token(i)

    def tokenize(self, text: str) -> list[str]:
        return self.load().tokenize(text)

    # ----------------------------------------------------------------- tokenization
    def _encode(self, s: str) -> list[int]:
        return self.load()._encode(s)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.load()._decode(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        return self.load()._encode_tf(s)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        return self.load()._decode_tf(ids)

    # ----------------------------------------------------------------- identity
    def _descriptor(self) -> tuple:
        return (self._resolve(), tuple(sorted(self._kwargs.items())))

    def __eq__(self, other):
        if isinstance(other, LazyWordPieceVocabulary):
            if self._descriptor() == other._descriptor():
                return True
            return self.load() == other.load()
        if isinstance(other, WordPieceVocabulary):
            return self.load() == other
        return NotImplemented if not isinstance(other, seqio.Vocabulary) else False

    def __hash__(self):
        return hash(self.load())

    def __getstate__(self):  # picklable / deep-copyable: the lock is recreated
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "loaded" if self._vocab is not None else "not loaded"
        return (f"LazyWordPieceVocabulary({self._resolve()!r}, do_lower_case="
                f"{self._kwargs['do_lower_case']}, pad_to_multiple_of="
                f"{self._kwargs['pad_to_multiple_of']}, extra_tokens="
                f"<{len(self._kwargs['extra_tokens'])}>, {state})")
