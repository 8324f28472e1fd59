"""Retrieved knowledge for ChatPLUG: a local BM25 retriever over Shop World catalog passages.

Released ChatPLUG searches the internet for each user turn and gives the search snippets
to the model as knowledge passages. Here a local index stands in for the search engine,
behind an interface a user can point at their own index:

* :class:`Retriever` (a ``typing.Protocol``): ``search(query, k) -> list[Passage]``, best
  first. Anything with that method works: the data tasks (``tasks/chatplug.py``) and the
  chat mode only call ``search``.
* :class:`Passage`: ``(id, title, text, score)``; the FiD knowledge passage is ``text``.
* :class:`BM25Retriever`: BM25 (Lucene variant, ``k1=1.5``, ``b=0.75``) on ``bm25s``
  (pinned in setup.py) over ``title + "\\n" + text`` of every passage.
  ``BM25Retriever.from_passages(rows)`` indexes your own ``(id, title, text)`` rows;
  ``BM25Retriever.shop_world(lang, split)`` indexes the Shop World catalog (below).

**Tokenisation** (:func:`tokenize`, language-agnostic and deterministic, no trained
model): NFKC, lower case, then Han and kana runs become their single characters plus
their character bigrams (the usual unsegmented-CJK indexing: unigrams match single
attribute characters such as 棉, bigrams keep word order such as 灰色 / 夹克), and every
other run of letters or digits is one word (English, digits, prices, sizes); punctuation
and symbols are dropped. Query tokens are de-duplicated, so a long dialogue query does
not weight a word by how often it was repeated. It needs no vocabulary file, so an index
never goes stale against a retrained SentencePiece model, and it reads any language.

**The Shop World catalog** (:func:`shop_world_catalog`): the products of TFDS config
``shop_world/text_{lang}`` of one split (indices ``0..n-1``; 10,000 train, 1,000
validation, 1,000 test), each as ``(product_id, title, description)``. A Shop World
dialogue is about product ``i`` of its split, and its gold passage is that product's
description (``plug_jax/data/shop_world/dialogue.py``), so every dialogue's gold passage
is in its split's catalog. The dialogues' own distractor passages are products at far
indices, outside the catalog: they are not needed, the retriever finds its own.

**Save / load without pickle**: ``save(dir)`` writes bm25s's own files (the CSC score
matrix as three ``.npy`` arrays written with ``allow_pickle=False``, ``vocab.index.json``,
``params.index.json``) plus ``passages.jsonl`` (one ``{"id", "title", "text"}`` per line) and
``retriever.json`` (format, tokenizer, sizes); ``load(dir)`` reads them back with
``allow_pickle=False``. A directory that is not such an index raises
:class:`RetrieverIndexError`, one line naming the fix.

Write a catalog index from the command line::

    python -m plug_jax.families.chatplug.retrieval --lang zh --split test --out DIR \\
        [--query "灰色涤纶夹克"]

``bm25s`` is imported when an index is built or loaded (it imports JAX and runs one
``jax.lax.top_k`` at import), never when this module is.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import unicodedata
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

FORMAT = "plug_jax.chatplug.bm25/v1"
TOKENIZER = "cjk_unigram_bigram+words/v1"
META_FILE = "retriever.json"
PASSAGES_FILE = "passages.jsonl"
BM25_FILES = ("params.index.json", "vocab.index.json", "data.csc.index.npy",
              "indices.csc.index.npy", "indptr.csc.index.npy")
BM25_PARAMS = {"method": "lucene", "k1": 1.5, "b": 0.75}
WORLD_SEED = 0
# Products per split of TFDS config shop_world/text_{lang} (shop_world_tfds.TEXT_SPLIT_SIZES).
CATALOG_SIZES = {"train": 10_000, "validation": 1_000, "test": 1_000}


class Passage(NamedTuple):
    """One retrieved passage: ``id`` (e.g. a product id), ``title``, ``text`` (what the model
    reads as knowledge) and the retriever's ``score`` (higher is better)."""
    id: str
    title: str
    text: str
    score: float


@runtime_checkable
class Retriever(Protocol):
    """What ChatPLUG's data tasks and chat mode need from a knowledge source."""

    def search(self, query: str, k: int) -> list[Passage]:
        """At most ``k`` passages for ``query``, best first (fewer, or none, when fewer
        match)."""
        ...


class RetrieverIndexError(ValueError):
    """A directory is not a readable BM25Retriever index (one line, naming the fix)."""


# ------------------------------------------------------------------------ tokenisation
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana, Han (incl. ext. A)
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+")
_IS_CJK = re.compile(rf"[{_CJK}]")


def tokenize(text: str) -> list[str]:
    """BM25 terms of ``text``: CJK characters and character bigrams, other words whole.

    >>> tokenize("灰色夹克 239元, Grey JACKET!")
    ['灰', '色', '夹', '克', '灰色', '色夹', '夹克', '239', '元', 'grey', 'jacket']
    """
    out = []
    for m in _TOKEN.finditer(unicodedata.normalize("NFKC", text).lower()):
        run = m.group()
        if _IS_CJK.match(run):
            out += list(run)
            out += [run[i:i + 2] for i in range(len(run) - 1)]
        else:
            out.append(run)
    return out


# --------------------------------------------------------------------------- catalog
def shop_world_catalog(lang: str, split: str, size: Optional[int] = None,
                       seed: int = WORLD_SEED) -> list[tuple[str, str, str]]:
    """``(product_id, title, description)`` of products ``0..size-1`` of ``split`` (default
    size: :data:`CATALOG_SIZES`, the ``text_{lang}`` TFDS config's), as the generator and
    TFDS give them."""
    from plug_jax.data.shop_world import spans, world  # noqa: PLC0415
    world.check_lang(lang)
    world.check_split(split)
    n = CATALOG_SIZES[split] if size is None else int(size)
    rows = []
    for i in range(n):
        p = world.product(seed, split, i)
        rows.append((p.product_id, spans.title_of(p, lang),
                     spans.description_of(p, lang)["description"]))
    return rows


# ------------------------------------------------------------------------- retriever
def _fix(directory) -> str:
    return (f"fix: write it with BM25Retriever.from_passages(rows).save({str(directory)!r}) "
            f"or python -m plug_jax.families.chatplug.retrieval --lang zh --split train "
            f"--out {directory}")


class BM25Retriever:
    """BM25 over ``(id, title, text)`` passages (see the module docstring)."""

    def __init__(self, bm25, passages: Sequence[tuple[str, str, str]], meta: dict):
        self._bm25 = bm25
        self._passages = [tuple(map(str, p)) for p in passages]
        self.meta = dict(meta)

    # ---- building
    @classmethod
    def from_passages(cls, rows: Iterable[Sequence[str]], **meta) -> "BM25Retriever":
        """Index ``(id, title, text)`` rows (``title`` may be empty)."""
        import bm25s  # noqa: PLC0415  (imports JAX: only when an index is built)
        passages = [(str(r[0]), str(r[1]), str(r[2])) for r in rows]
        if not passages:
            raise ValueError("BM25Retriever needs at least one passage to index")
        bm25 = bm25s.BM25(**BM25_PARAMS)
        bm25.index([tokenize(f"{title}\n{text}") for _, title, text in passages],
                   show_progress=False)
        return cls(bm25, passages, {"format": FORMAT, "tokenizer": TOKENIZER,
                                    "bm25s": bm25s.__version__, **BM25_PARAMS,
                                    "num_passages": len(passages), **meta})

    @classmethod
    def shop_world(cls, lang: str, split: str, size: Optional[int] = None,
                   seed: int = WORLD_SEED) -> "BM25Retriever":
        """The index of :func:`shop_world_catalog` (about 0.3 s per 1,000 products)."""
        rows = shop_world_catalog(lang, split, size, seed)
        return cls.from_passages(rows, catalog={"lang": lang, "split": split,
                                                "size": len(rows), "seed": seed})

    # ---- searching
    def __len__(self) -> int:
        return len(self._passages)

    def passage(self, i: int, score: float = 0.0) -> Passage:
        return Passage(*self._passages[i], float(score))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for ``query`` (float32 ``[num_passages]``)."""
        vocab = self._bm25.vocab_dict
        ids = sorted({vocab[t] for t in tokenize(query) if t in vocab})
        if not ids:
            return np.zeros(len(self._passages), np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), np.float32)

    def search(self, query: str, k: int) -> list[Passage]:
        """The ``k`` best passages with a positive score, best first; equal scores in index
        order (deterministic)."""
        if k < 1:
            return []
        s = self.scores(query)
        hits = np.flatnonzero(s > 0)
        order = hits[np.lexsort((hits, -s[hits]))][:k]
        return [self.passage(int(i), s[i]) for i in order]

    # ---- saving
    def save(self, directory) -> str:
        """Write the index to ``directory`` (created); returns its path. No pickle."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self._bm25.save(str(d), allow_pickle=False, show_progress=False)
        with open(d / PASSAGES_FILE, "w", encoding="utf-8") as f:
            for pid, title, text in self._passages:
                f.write(json.dumps({"id": pid, "title": title, "text": text},
                                   ensure_ascii=False) + "\n")
        # Written last: a directory without it is incomplete.
        tmp = d / f".{META_FILE}.tmp"
        tmp.write_text(json.dumps(self.meta, ensure_ascii=False, indent=1, sort_keys=True))
        os.replace(tmp, d / META_FILE)
        return str(d)

    @classmethod
    def load(cls, directory) -> "BM25Retriever":
        """Read an index written by :meth:`save` (arrays with ``allow_pickle=False``)."""
        d = Path(directory)
        if not d.is_dir():
            raise RetrieverIndexError(f"BM25 index directory {d} does not exist; {_fix(d)}")
        missing = [n for n in (META_FILE, PASSAGES_FILE) + BM25_FILES if not (d / n).is_file()]
        if missing:
            raise RetrieverIndexError(f"{d} is not a complete BM25Retriever index (missing "
                                      f"{', '.join(missing)}); {_fix(d)}")
        try:
            meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT or meta.get("tokenizer") != TOKENIZER:
                raise ValueError(f"format {meta.get('format')!r} / tokenizer "
                                 f"{meta.get('tokenizer')!r}, this code reads {FORMAT!r} / "
                                 f"{TOKENIZER!r}")
            with open(d / PASSAGES_FILE, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            passages = [(r["id"], r["title"], r["text"]) for r in rows]
            import bm25s  # noqa: PLC0415
            bm25 = bm25s.BM25.load(str(d), allow_pickle=False, mmap=False,
                                   show_progress=False)
            num_docs = int(bm25.scores["num_docs"])
            if not len(passages) == num_docs == int(meta.get("num_passages", -1)):
                raise ValueError(f"{len(passages)} passages, {num_docs} indexed documents, "
                                 f"{meta.get('num_passages')} in {META_FILE}")
        except RetrieverIndexError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            reason = " ".join(str(e).split())[:200]
            raise RetrieverIndexError(f"cannot read the BM25 index in {d} ({reason}); "
                                      f"{_fix(d)}") from None
        return cls(bm25, passages, meta)


# ------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plug_jax.families.chatplug.retrieval",
                                 description="Write the BM25 index of a Shop World catalog.")
    ap.add_argument("--lang", default="zh", choices=("zh", "en"))
    ap.add_argument("--split", default="train", choices=tuple(CATALOG_SIZES))
    ap.add_argument("--size", type=int, default=None, help="products (default: the split's)")
    ap.add_argument("--out", required=True, help="index directory")
    ap.add_argument("--query", default=None, help="search the written index once")
    ap.add_argument("-k", type=int, default=3)
    args = ap.parse_args(argv)
    path = BM25Retriever.shop_world(args.lang, args.split, args.size).save(args.out)
    print(f"wrote the BM25 index of shop_world/text_{args.lang} {args.split} to {path}")
    if args.query:
        for p in BM25Retriever.load(path).search(args.query, args.k):
            print(f"{p.score:8.3f}  {p.id}  {p.title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
