"""seqio tasks that read Shop World through its TFDS builder (``plug_jax.data.shop_world_tfds``).

``shop_lm_{lang}_v1``: the LM documents (title, description, review) of TFDS config
``shop_world/text_{lang}``, tokenized with the Shop World SentencePiece vocabulary; the same
text as ``gpt3_shoplm_{lang}_v1`` (which generates on the fly) but read from prepared TFDS
files with ``seqio.TfdsDataSource``, like any real dataset. The config is prepared on first
use (about 10 s per language) or ahead with ``make prepare``.
"""
from __future__ import annotations

from plug_jax.data import configure_tensorflow

configure_tensorflow()

from plug_jax.data import registry  # noqa: E402
from plug_jax.data.shop_world_tfds import VERSION, ShopWorldTfdsSource  # noqa: E402
from plug_jax.data.vocab import ShopWorldVocabulary  # noqa: E402

from .gpt3 import WORLD_SEED, add_lm_task  # noqa: E402

# shop_*: the data source's own tasks (any family can train on them).
registry.add_task_prefixes("shop")


def register_tfds_lm_task(name: str, lang: str = "zh"):
    vocab = ShopWorldVocabulary(None, seed=WORLD_SEED, lang=lang)
    spec = {"kind": "shop_tfds_lm", "config": f"text_{lang}", "version": VERSION,
            "vocab": {k: v for k, v in vocab.spec.items() if k != "cache_dir"}}

    def build():
        return add_lm_task(name, ShopWorldTfdsSource(f"text_{lang}", features=["lm_document"]), "lm_document", vocab)

    return registry.register_task(name, spec, build)


for _lang in ("zh", "en"):
    register_tfds_lm_task(f"shop_lm_{_lang}_v1", _lang)
