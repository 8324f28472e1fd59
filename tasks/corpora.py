"""seqio tasks over real corpora read from a manual directory (``plug_jax.data.corpora``).

Text-feature tasks of the PLUG family (no tokenization: a fine-tuning task maps these text
features to ``inputs``/``targets`` with its own vocabulary, e.g. ``WordPieceVocabulary``):

==========================  ===================================================  ===========
task                        features                                             files in
==========================  ===================================================  ===========
``plug_tnews_zh_v1``        idx, sentence, keywords, label (0..14), label_desc   ``tnews/``
``plug_afqmc_zh_v1``        idx, sentence1, sentence2, label (0/1)               ``afqmc/``
``plug_lcsts_zh_v1``        id, text, summary, human_label (-1 = none)           ``lcsts/``
``plug_xnli_zh_v1``         language, premise, hypothesis, label (e/n/c = 0/1/2)  ``xnli/``
``plug_xnli_en_v1``         same, English rows / ``multinli.train.en.tsv``       ``xnli/``
==========================  ===================================================  ===========

The directory is ``$PLUG_JAX_DATA_DIR/<corpus>`` (default ``~/.cache/plug_jax/data/<corpus>``),
resolved when a dataset is built; ``register_corpus_task(..., data_dir=...)`` fixes another.
Registration never touches the files, so importing this module works without them; building
a dataset without them raises a one-line ``ValueError`` naming the expected files.
Registration is idempotent (same name + same arguments returns the registered task).
"""
from __future__ import annotations

from typing import Optional

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()

import seqio  # noqa: E402

from plug_jax.data import corpora, registry  # noqa: E402

# corpus key (also the sub-directory of $PLUG_JAX_DATA_DIR) -> (reader, features, splits)
CORPORA = {
    "tnews": (corpora.read_tnews, corpora.TNEWS_FEATURES, tuple(corpora.CLUE_FILES)),
    "afqmc": (corpora.read_afqmc, corpora.AFQMC_FEATURES, tuple(corpora.CLUE_FILES)),
    "lcsts": (corpora.read_lcsts, corpora.LCSTS_FEATURES, tuple(corpora.LCSTS_FILES)),
    "xnli": (corpora.read_xnli, corpora.XNLI_FEATURES, tuple(corpora.XNLI_FILES)),
}
SHUFFLE_BUFFER_SIZE = 10_000


def register_corpus_task(name: str, corpus: str, *, data_dir: Optional[str] = None,
                         **reader_kwargs) -> seqio.Task:
    """Register (once) a text-feature task over ``corpus`` (a key of ``CORPORA``).

    ``reader_kwargs`` go to the reader (``language=`` for XNLI). Re-registering ``name``
    with the same arguments returns the existing task; different arguments raise.
    """
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; pass one of {sorted(CORPORA)}")
    reader, features, splits = CORPORA[corpus]
    spec = {"kind": "corpus", "corpus": corpus,
            "data_dir": None if data_dir is None else str(data_dir),
            "reader_kwargs": dict(sorted(reader_kwargs.items()))}

    def build():
        source = seqio.FunctionDataSource(
            corpora.corpus_dataset_fn(reader, features, corpus, data_dir, **reader_kwargs),
            splits=splits)
        return seqio.TaskRegistry.add(name, source=source, preprocessors=[],
                                      output_features={},
                                      shuffle_buffer_size=SHUFFLE_BUFFER_SIZE)

    return registry.register_task(name, spec, build)


TNEWS_ZH = "plug_tnews_zh_v1"
AFQMC_ZH = "plug_afqmc_zh_v1"
LCSTS_ZH = "plug_lcsts_zh_v1"
XNLI_ZH = "plug_xnli_zh_v1"
XNLI_EN = "plug_xnli_en_v1"

register_corpus_task(TNEWS_ZH, "tnews")
register_corpus_task(AFQMC_ZH, "afqmc")
register_corpus_task(LCSTS_ZH, "lcsts")
register_corpus_task(XNLI_ZH, "xnli", language="zh")
register_corpus_task(XNLI_EN, "xnli", language="en")
