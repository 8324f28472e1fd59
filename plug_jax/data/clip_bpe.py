"""OpenAI CLIP's byte-level BPE as a ``seqio.Vocabulary`` (X-CLIP's captions).

The vocabulary is read from a folder holding the published CLIP tokenizer files,
``vocab.json`` + ``merges.txt`` (the files of the hub's ``openai/clip-vit-base-patch32``),
or the ``tokenizer.json`` that ``CLIPTokenizer.save_pretrained`` writes with transformers
5 (the ``convert`` extra's pin; transformers 4 also wrote the two files). Tokenization is ``transformers.CLIPTokenizer`` loaded from that
folder (``from_pretrained(folder, local_files_only=True)``; nothing is downloaded):
NFC, whitespace collapsed, lower-cased, CLIP's word regex, byte-level BPE with ``</w>``
word ends. transformers is an optional dependency of plug_jax (the ``convert`` extra), so
it is imported when the vocabulary is first loaded.

Ids, as the released CLIP / X-CLIP text tower reads them (OpenAI: 49408 ids):

* ``encode(text)`` = ``[<|startoftext|>] + BPE ids``, without ``<|endoftext|>``: seqio's
  ``append_eos_after_trim`` adds ``eos_id`` after trimming, so a caption of a task with
  ``targets`` length L is ``[start] + at most L - 2 BPE ids + [end]``, as the X-CLIP
  release builds its ``max_words`` captions;
* ``eos_id`` = ``<|endoftext|>`` (49407, the largest id: the text tower pools the argmax),
  ``bos_id`` = ``<|startoftext|>`` (49406), ``unk_id`` = ``<|endoftext|>`` (CLIPTokenizer's
  ``unk_token``; byte-level BPE has no unknown text);
* padding is id 0, as X-CLIP pads (id 0 is also the token ``!``);
* ``decode`` reads up to the first ``<|endoftext|>``, drops ``<|startoftext|>``, trailing 0s
  (padding, for ids without an end token) and ids outside the vocabulary, and joins the
  words with single spaces (``CLIPTokenizer.decode``): lower-cased text, punctuation
  spaced (``"a cat plays!"`` decodes as ``"a cat plays !"``).

Not reproduced from OpenAI's own ``SimpleTokenizer`` (which the X-CLIP release uses): its
``ftfy.fix_text`` and HTML-unescaping of the input, so mojibake and ``&amp;``-style
entities tokenize differently; plain text (MSR-VTT's captions) gives the same ids.

``ClipBpeVocabulary(folder, lazy=True)`` (or a zero-argument callable giving the folder)
touches nothing until it is first used, so tasks register it at import without the files;
a missing folder or file, or transformers not installed, is then a one-line ``ValueError``
naming the path and the fix. A failed load is not remembered: the next use tries again.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Callable, Optional, Sequence, Union

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data.wordpiece import PythonTokenizerTF, _as_text  # noqa: E402

VOCAB_FILES = ("vocab.json", "merges.txt")
TOKENIZER_FILE = "tokenizer.json"
START_OF_TEXT = "<|startoftext|>"
END_OF_TEXT = "<|endoftext|>"
OPENAI_VOCAB_SIZE = 49408  # the released CLIP text towers' rows
HUB_NAME = "openai/clip-vit-base-patch32"


def fix_hint(folder: str) -> str:
    """How to put the files in ``folder`` (one line)."""
    return (f"on a machine with internet run CLIPTokenizer.from_pretrained('{HUB_NAME}')"
            f".save_pretrained(DIR) (transformers) and copy DIR's files into {folder!r}, or "
            f"put the published {' + '.join(VOCAB_FILES)} of {HUB_NAME} there")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


class ClipBpeVocabulary(PythonTokenizerTF, seqio.Vocabulary):
    """CLIP's BPE from a tokenizer folder (module docstring).

    Args:
      folder: the folder with ``vocab.json`` + ``merges.txt`` (or ``tokenizer.json``), or a
        zero-argument callable returning it (called when the files are first needed, so an
        environment variable is read then, not at import).
      lazy: False (default) reads the files now, so a missing one fails here; True waits
        for the first use (tasks).
      expected_vocab_size: optional. When given, ``vocab_size`` answers it before the files
        are read (listings such as ``plug-tasks list`` work without the data), and files
        that give another size are a one-line ``ValueError`` when they are loaded.
      missing_hint: the fix appended to a missing folder's or file's error (default:
        :func:`fix_hint`).
    """

    def __init__(self, folder: Union[str, os.PathLike, Callable[[], str]], *,
                 lazy: bool = False, expected_vocab_size: Optional[int] = None,
                 missing_hint: Optional[str] = None):
        super().__init__(extra_ids=0)
        if not (callable(folder) or isinstance(folder, (str, os.PathLike))):
            raise ValueError(f"ClipBpeVocabulary takes a folder or a zero-argument callable "
                             f"returning one, got {type(folder).__name__}")
        self._source = folder if callable(folder) else os.fspath(folder)
        self._expected_size = None if expected_vocab_size is None else int(expected_vocab_size)
        self._missing_hint = missing_hint
        self._tokenizer = None
        self._loaded_folder: Optional[str] = None
        self._ids: dict = {}
        self._lock = threading.RLock()
        if not lazy:
            self.load()

    # ----------------------------------------------------------------- loading
    def _resolve(self) -> str:
        if self._loaded_folder is not None:
            return self._loaded_folder
        return os.fspath(self._source() if callable(self._source) else self._source)

    @property
    def folder(self) -> str:
        """The tokenizer folder: resolved now (not opened) until loaded, then the one read."""
        return self._resolve()

    @property
    def loaded(self) -> bool:
        return self._tokenizer is not None

    def _files(self, folder: str) -> tuple[str, ...]:
        """The tokenizer files of ``folder`` (one-line ``ValueError`` when there are none)."""
        hint = self._missing_hint or fix_hint(folder)
        if not os.path.isdir(folder):
            raise ValueError(f"CLIP BPE folder {folder!r} not found; {hint}")
        have = tuple(f for f in VOCAB_FILES + (TOKENIZER_FILE,)
                     if os.path.isfile(os.path.join(folder, f)))
        if not (set(VOCAB_FILES) <= set(have) or TOKENIZER_FILE in have):
            missing = [f for f in VOCAB_FILES if f not in have]
            raise ValueError(f"CLIP BPE folder {folder!r} has no {' / '.join(missing)} (nor "
                             f"{TOKENIZER_FILE}); {hint}")
        return have

    def load(self):
        """The ``transformers.CLIPTokenizer`` (read from the folder on the first call)."""
        if self._tokenizer is not None:
            return self._tokenizer
        with self._lock:
            if self._tokenizer is not None:
                return self._tokenizer
            folder = self._resolve()
            self._files(folder)
            try:
                from transformers import CLIPTokenizer  # noqa: PLC0415  (optional dependency)
            except ImportError:
                raise ValueError(f"reading the CLIP BPE in {folder!r} needs transformers, which "
                                 f"is not installed; pip install -e '.[convert]'") from None
            try:
                tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
            except Exception as e:  # noqa: BLE001 - any unreadable file: one line
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ValueError(f"CLIP BPE folder {folder!r} could not be read ({first}); "
                                 f"{self._missing_hint or fix_hint(folder)}") from None
            vocab = tok.get_vocab()
            absent = [t for t in (START_OF_TEXT, END_OF_TEXT) if t not in vocab]
            if absent:
                raise ValueError(f"CLIP BPE folder {folder!r} has no {' / '.join(absent)} "
                                 f"token; use CLIP's tokenizer files ({fix_hint(folder)})")
            size = len(tok)
            if self._expected_size is not None and size != self._expected_size:
                raise ValueError(f"CLIP BPE folder {folder!r} gives {size} ids but "
                                 f"{self._expected_size} are expected; "
                                 f"{self._missing_hint or fix_hint(folder)}")
            self._ids = {"bos": vocab[START_OF_TEXT], "eos": vocab[END_OF_TEXT],
                         "unk": tok.unk_token_id if tok.unk_token_id is not None
                         else vocab[END_OF_TEXT], "size": size}
            self._loaded_folder = folder
            self._tokenizer = tok
        return self._tokenizer

    # ----------------------------------------------------------------- ids / metadata
    def _id(self, key: str) -> int:
        self.load()
        return int(self._ids[key])

    @property
    def bos_id(self) -> int:
        return self._id("bos")

    @property
    def eos_id(self) -> int:
        return self._id("eos")

    @property
    def unk_id(self) -> int:
        return self._id("unk")

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def _base_vocab_size(self) -> int:
        if self._tokenizer is None and self._expected_size is not None:
            return self._expected_size
        return self._id("size")

    @property
    def spec(self) -> dict:
        """What identifies the vocabulary: kind, folder and a sha256 prefix of each tokenizer
        file there (reads the files' bytes; task registrations describe the folder without
        opening it instead)."""
        folder = self._resolve()
        files = self._files(folder)
        return {"kind": "clip_bpe", "folder": folder,
                "files": {f: _sha256(os.path.join(folder, f)) for f in files}}

    @property
    def fingerprint(self) -> str:
        """Short sha256 of the loaded token -> id table and merges: equal means the same ids,
        whichever of the two file layouts they were read from."""
        tok = self.load()
        model = json.loads(tok.backend_tokenizer.to_str())["model"]
        merges = [" ".join(m) if isinstance(m, (list, tuple)) else m
                  for m in model.get("merges", [])]
        blob = json.dumps([sorted(tok.get_vocab().items(), key=lambda kv: kv[1]), merges],
                          ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    # ----------------------------------------------------------------- tokenization
    def tokenize(self, text: str) -> list[str]:
        """The BPE pieces of ``text`` (``</w>`` ends a word), without the start token."""
        tok = self.load()
        with self._lock:
            return tok.convert_ids_to_tokens(self._encode(text)[1:])

    def _encode(self, s: str) -> list[int]:
        tok = self.load()
        text = _as_text(s)
        with self._lock:  # the Rust tokenizer is shared by the tf.data threads
            ids = tok.encode(text, add_special_tokens=False)
        return [self._ids["bos"]] + [int(i) for i in ids]

    def _clean(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        eos = self._ids["eos"]
        if eos in ids:
            ids = ids[:ids.index(eos)]
        else:
            while ids and ids[-1] == 0:  # padding
                ids.pop()
        size = self._ids["size"]
        return [i for i in ids if 0 <= i < size and i != self._ids["bos"]]

    def _decode(self, ids: Sequence[int]) -> str:
        tok = self.load()
        clean = self._clean(ids)
        with self._lock:
            return tok.decode(clean, skip_special_tokens=True)

    # ----------------------------------------------------------------- TensorFlow
    def _prepare_tf(self) -> None:
        self.load()  # a missing folder fails here, in python, not inside the graph

    # ----------------------------------------------------------------- identity
    def __eq__(self, other):
        if not isinstance(other, ClipBpeVocabulary):
            return NotImplemented if not isinstance(other, seqio.Vocabulary) else False
        if other is self or os.path.abspath(self._resolve()) == os.path.abspath(
                other._resolve()):
            return True
        return self.fingerprint == other.fingerprint

    def __hash__(self):
        return hash(self.fingerprint)

    def __getstate__(self):  # picklable / deep-copyable: reloaded from the folder on use
        state = dict(self.__dict__)
        del state["_lock"]
        state["_tokenizer"], state["_ids"] = None, {}
        if state["_loaded_folder"] is not None:
            state["_source"] = state["_loaded_folder"]
        state["_loaded_folder"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = "loaded" if self._tokenizer is not None else "not loaded"
        size = self._ids.get("size", self._expected_size)
        return f"ClipBpeVocabulary({self._resolve()!r}, vocab_size={size}, {state})"
