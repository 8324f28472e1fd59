"""SentencePiece vocabularies trained on Shop World text, cached on disk.

``shop_world_sentencepiece`` trains a unigram SentencePiece model on a fixed set of
generated ``train`` documents the first time it is needed and caches the ``.model`` file
under ``cache_dir``, ``$PLUG_JAX_CACHE`` or ``~/.cache/plug_jax`` (in ``vocab/``), keyed by
a hash of the generator version, the training options, the vocabulary size, the world seed
and the language. Training is single-threaded so the model bytes (and so
``vocab_fingerprint``) are identical on every machine; it takes about a second.

Ids follow seqio: pad 0, eos 1, unk 2, no bos. Normalisation is (almost) the identity and extra
whitespace is kept, so ``decode(encode(text)) == text`` for every generated text; ``"\\n"``
(the LM document's field separator) is a user-defined piece of its own.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Optional

from plug_jax.data import configure_tensorflow

configure_tensorflow()

import seqio  # noqa: E402
import sentencepiece as spm  # noqa: E402

from plug_jax.data import shop_world  # noqa: E402

DEFAULT_VOCAB_SIZE = {"zh": 1024, "en": 512}
NUM_TRAINING_DOCUMENTS = 3000
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

# Normalisation: the identity except U+3000 (ideographic space) -> space, which generated
# text never holds. SentencePiece refuses a literal identity rule table, and its built-in
# "identity" rule makes every TF tokenizer log "precompiled_charsmap is empty".
_NORMALIZATION_RULES = "3000\t20\n"
# Bump _TRAINER_VERSION when _TRAINER_OPTIONS or the training corpus change.
_TRAINER_VERSION = "spm_unigram_v1"
_TRAINER_OPTIONS = dict(
    model_type="unigram",
    character_coverage=1.0,
    pad_id=PAD_ID,
    eos_id=EOS_ID,
    unk_id=UNK_ID,
    bos_id=-1,
    remove_extra_whitespaces=False,
    user_defined_symbols=["\n"],
    split_digits=True,
    max_sentence_length=1 << 14,
    num_threads=1,  # multi-threaded EM is not bit-reproducible
    minloglevel=2,
)


def default_cache_dir(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """``cache_dir``, else ``$PLUG_JAX_CACHE``, else ``~/.cache/plug_jax``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("PLUG_JAX_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "plug_jax"


def _resolve_vocab_size(vocab_size: Optional[int], lang: str) -> int:
    shop_world.world.check_lang(lang)
    return DEFAULT_VOCAB_SIZE[lang] if vocab_size is None else int(vocab_size)


def vocab_cache_key(vocab_size: int, seed: int, lang: str) -> str:
    blob = json.dumps({
        "generator": shop_world.GENERATOR_VERSION, "trainer": _TRAINER_VERSION,
        "num_documents": NUM_TRAINING_DOCUMENTS, "vocab_size": int(vocab_size),
        "seed": int(seed), "lang": lang, "options": _TRAINER_OPTIONS,
        "rules": _NORMALIZATION_RULES,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_path(vocab_size: int, seed: int, lang: str,
               cache_dir: Optional[str | os.PathLike] = None) -> Path:
    key = vocab_cache_key(vocab_size, seed, lang)
    return default_cache_dir(cache_dir) / "vocab" / f"shop_world_{lang}_{vocab_size}_{key}.model"


@functools.lru_cache(maxsize=4)
def training_corpus(seed: int, lang: str) -> tuple[str, ...]:
    """The fixed training text: ``NUM_TRAINING_DOCUMENTS`` train LM documents plus every
    attribute surface form (so no name can fall out of the vocabulary)."""
    docs = shop_world.lm_documents(seed, "train", 0, NUM_TRAINING_DOCUMENTS, lang)
    return tuple(docs) + tuple(shop_world.corpus_lexicon(lang))


def train_model(vocab_size: int, seed: int = 0, lang: str = "zh") -> bytes:
    """Train the Shop World SentencePiece model; returns the serialized model proto.

    Raises a one-line ``ValueError`` when SentencePiece cannot build ``vocab_size`` pieces.
    """
    corpus = training_corpus(int(seed), lang)
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        rules = os.path.join(tmp, "rules.tsv")
        with open(rules, "w", encoding="utf-8") as f:
            f.write(_NORMALIZATION_RULES)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(corpus), model_writer=buf, vocab_size=int(vocab_size),
                normalization_rule_tsv=rules, **_TRAINER_OPTIONS)
        except RuntimeError as e:
            raise ValueError(_vocab_size_error(str(e), vocab_size, lang)) from None
    return buf.getvalue()


def _vocab_size_error(msg: str, vocab_size: int, lang: str) -> str:
    high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", msg)
    if high:
        return (f"vocab_size={vocab_size} is too large for Shop World {lang!r} text: "
                f"SentencePiece can build at most {high.group(2)} pieces from it; pass "
                f"vocab_size <= {high.group(2)} (default for {lang!r}: "
                f"{DEFAULT_VOCAB_SIZE[lang]})")
    low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", msg)
    if low:
        return (f"vocab_size={vocab_size} is too small for Shop World {lang!r} text: "
                f"covering every character (character_coverage=1.0) plus pad/eos/unk takes "
                f"{low.group(2)} pieces; pass vocab_size >= {low.group(2)} (default for "
                f"{lang!r}: {DEFAULT_VOCAB_SIZE[lang]})")
    first = " ".join(msg.split())
    return (f"SentencePiece could not train a vocab_size={vocab_size} Shop World {lang!r} "
            f"vocabulary ({first}); try the default vocab_size={DEFAULT_VOCAB_SIZE[lang]}")


def _write_once(path: Path, data: bytes) -> None:
    """Publish ``data`` at ``path`` atomically; the first writer wins.

    The bytes go to a temporary file in the same directory, which is then hard-linked to
    ``path`` (fails if ``path`` exists, so a model another process already loaded is never
    replaced) or, where links are unsupported, renamed over it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:
            if not path.exists():
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_model_file(vocab_size: Optional[int] = None, seed: int = 0, lang: str = "zh",
                      cache_dir: Optional[str | os.PathLike] = None) -> str:
    """Path of the cached model, training and caching it first if needed."""
    vocab_size = _resolve_vocab_size(vocab_size, lang)
    path = model_path(vocab_size, seed, lang, cache_dir)
    if not path.exists():
        _write_once(path, train_model(vocab_size, seed, lang))
    return str(path)


def ensure_corpus_model(corpus, vocab_size: int, name: str,
                        cache_dir: Optional[str | os.PathLike] = None) -> str:
    """Path of a SentencePiece model trained on ``corpus`` (a sequence of texts) with the
    Shop World trainer options and normalisation (single-threaded, and without the temporary
    rules file's path in the proto: the same bytes on every machine), cached in ``vocab/`` of
    the cache dir as ``{name}_{vocab_size}_{key}.model`` (``key`` hashes the corpus, the size
    and the options) and trained first if missing: for tasks whose text is not the Shop World
    documents (e.g. the AMTSS multilingual queries).
    A size SentencePiece cannot build raises a one-line ``ValueError``."""
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"ensure_corpus_model: name {name!r} is not lower-case [a-z0-9_]")
    corpus = tuple(corpus)
    digest = hashlib.sha256()
    digest.update(json.dumps({"trainer": _TRAINER_VERSION, "options": _TRAINER_OPTIONS,
                              "rules": _NORMALIZATION_RULES, "vocab_size": int(vocab_size)},
                             sort_keys=True).encode())
    for text in corpus:
        digest.update(text.encode("utf-8") + b"\0")
    path = (default_cache_dir(cache_dir) / "vocab"
            / f"{name}_{int(vocab_size)}_{digest.hexdigest()[:16]}.model")
    if not path.exists():
        buf = io.BytesIO()
        with tempfile.TemporaryDirectory() as tmp:
            rules = os.path.join(tmp, "rules.tsv")
            with open(rules, "w", encoding="utf-8") as f:
                f.write(_NORMALIZATION_RULES)
            try:
                spm.SentencePieceTrainer.train(
                    sentence_iterator=iter(corpus), model_writer=buf,
                    vocab_size=int(vocab_size), normalization_rule_tsv=rules,
                    **_TRAINER_OPTIONS)
            except RuntimeError as e:
                first = " ".join(str(e).split())
                raise ValueError(f"SentencePiece could not train a vocab_size={vocab_size} "
                                 f"{name!r} vocabulary ({first})") from None
        # The proto records the temporary rules file's path; drop it, so the bytes (and
        # vocab_fingerprint) depend on the corpus and options only.
        from sentencepiece import sentencepiece_model_pb2
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(buf.getvalue())
        proto.normalizer_spec.ClearField("normalization_rule_tsv")
        _write_once(path, proto.SerializeToString())
    return str(path)


class ShopWorldVocabulary(seqio.SentencePieceVocabulary):
    """A ``seqio.SentencePieceVocabulary`` whose model is trained and cached at first use.

    Building one is free (tasks create theirs at import time); the cache directory is
    resolved, and the model trained if missing, the first time the model is needed.
    """

    def __init__(self, vocab_size: Optional[int] = None, seed: int = 0, lang: str = "zh",
                 cache_dir: Optional[str | os.PathLike] = None, extra_ids: int = 0):
        self._shop_world_spec = (_resolve_vocab_size(vocab_size, lang), int(seed), lang,
                                 None if cache_dir is None else str(cache_dir))
        super().__init__(sentencepiece_model_file="", extra_ids=extra_ids)

    @property
    def spec(self) -> dict:
        vocab_size, seed, lang, cache_dir = self._shop_world_spec
        return {"vocab_size": vocab_size, "seed": seed, "lang": lang, "cache_dir": cache_dir}

    def _ensure_file(self) -> None:
        if not self._sentencepiece_model_file:
            self._sentencepiece_model_file = ensure_model_file(*self._shop_world_spec)

    def _model_context(self):
        if self._model is None:
            self._ensure_file()
        return super()._model_context()

    @property
    def sentencepiece_model_file(self) -> str:
        self._ensure_file()
        return self._sentencepiece_model_file

    def __eq__(self, other):
        if not isinstance(other, ShopWorldVocabulary):
            return NotImplemented if not isinstance(other, seqio.Vocabulary) else False
        return (self._shop_world_spec, self.extra_ids) == (other._shop_world_spec,
                                                           other.extra_ids)

    def __hash__(self):
        return hash((self._shop_world_spec, self.extra_ids))

    def __repr__(self) -> str:
        vocab_size, seed, lang, _ = self._shop_world_spec
        return (f"ShopWorldVocabulary(vocab_size={vocab_size}, seed={seed}, lang={lang!r}, "
                f"extra_ids={self.extra_ids})")


def shop_world_sentencepiece(vocab_size: Optional[int] = None, seed: int = 0, lang: str = "zh",
                             cache_dir: Optional[str | os.PathLike] = None, *,
                             lazy: bool = False) -> seqio.SentencePieceVocabulary:
    """The Shop World SentencePiece vocabulary (pad 0, eos 1, unk 2, no bos).

    Args:
      vocab_size: number of pieces; ``None`` = ``DEFAULT_VOCAB_SIZE[lang]`` (zh 1024,
        en 512; English Shop World text supports at most about 690 pieces).
      seed: the Shop World seed whose train documents the model is trained on.
      lang: ``"zh"`` or ``"en"``.
      cache_dir: where ``vocab/*.model`` lives; default ``$PLUG_JAX_CACHE`` or
        ``~/.cache/plug_jax``.
      lazy: if True, train/load only when the model is first used (tasks use this, so
        importing them is free); if False (default), train/load now, so a bad
        ``vocab_size`` fails here with a one-line ``ValueError``.
    """
    vocab = ShopWorldVocabulary(vocab_size, seed, lang, cache_dir)
    if not lazy:
        vocab.load_model()
    return vocab


def vocab_fingerprint(vocab: seqio.Vocabulary) -> str:
    """Short sha256 hex of the serialized model (extra ids included), for checkpoint
    metadata: equal fingerprints mean the same token ids."""
    sp_model = getattr(vocab, "sp_model", None)
    if not isinstance(sp_model, bytes):
        raise TypeError(f"vocab_fingerprint supports SentencePiece vocabularies, got "
                        f"{type(vocab).__name__}")
    return hashlib.sha256(sp_model).hexdigest()[:16]
