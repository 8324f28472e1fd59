"""Shop World: the embedded, deterministic, generated e-commerce world (text part).

Pure Python + numpy; importing it never imports TensorFlow. See docs/data.md.

    >>> from plug_jax.data import shop_world as sw
    >>> sw.product(0, "train", 0)                      # a Product record
    >>> sw.text_example(0, "train", 0, lang="zh")      # record + title/description/review
    >>> sw.lm_document(0, "train", 0, lang="en")       # "title\\ndescription\\nReview: ..."
"""
from plug_jax.data.shop_world.text import (
    DEFAULT_KINDS,
    DESCRIPTION_SLOTS,
    GENERATOR_VERSION,
    KINDS,
    REVIEW_CUES,
    REVIEW_PREFIX,
    SENTIMENTS,
    corpus_lexicon,
    description_prompt,
    description_prompts,
    format_lm_document,
    kind_rng,
    lm_document,
    lm_documents,
    register_kind,
    text_example,
)
from plug_jax.data.shop_world.world import (
    ALL_COMBINATIONS,
    AUDIENCES,
    BRANDS,
    CATEGORIES,
    COLOURS,
    HELDOUT_COMBINATIONS,
    LANGS,
    MATERIALS,
    SEASONS,
    SPLITS,
    STYLES,
    TRAIN_COMBINATIONS,
    Product,
    heldout_combinations,
    product,
    split_combinations,
)

__all__ = [
    "ALL_COMBINATIONS", "AUDIENCES", "BRANDS", "CATEGORIES", "COLOURS", "DEFAULT_KINDS",
    "DESCRIPTION_SLOTS", "GENERATOR_VERSION", "HELDOUT_COMBINATIONS", "KINDS", "LANGS",
    "MATERIALS", "Product", "REVIEW_CUES", "REVIEW_PREFIX", "SEASONS", "SENTIMENTS", "SPLITS",
    "STYLES", "TRAIN_COMBINATIONS", "corpus_lexicon", "description_prompt",
    "description_prompts", "format_lm_document", "heldout_combinations", "kind_rng",
    "lm_document", "lm_documents", "product", "register_kind", "split_combinations",
    "text_example",
]
