"""Shop World: the embedded, deterministic, generated e-commerce world (text part).

Pure Python + numpy; importing it never imports TensorFlow. See docs/data.md.

    >>> from plug_jax.data import shop_world as sw
    >>> sw.product(0, "train", 0)                      # a Product record
    >>> sw.text_example(0, "train", 0, lang="zh")      # record + title/description/review
    >>> sw.lm_document(0, "train", 0, lang="en")       # "title\\ndescription\\nReview: ..."
    >>> sw.text_example(0, "train", 0, "en", kinds=("attribute_qa", "dialogue", "glossary",
    ...                                             "triples"))
    >>> sw.query_example(0, "train", 0, lang="de")     # record + query/intent/category labels
"""
from plug_jax.data.shop_world.dialogue import format_dialogue
from plug_jax.data.shop_world.glossary_terms import glossary, glossary_mentions
from plug_jax.data.shop_world.images import (
    GLYPHS,
    POSITIONS,
    blank_image,
    glyph_mask,
    image_example,
    material_texture,
)
from plug_jax.data.shop_world.qa import QA_ATTRIBUTES, qa_answer
from plug_jax.data.shop_world.queries import (
    INTENTS,
    QUERY_LANGS,
    check_query_lang,
    query_example,
    query_names,
)
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
from plug_jax.data.shop_world.triples import RELATIONS, product_triples
from plug_jax.data.shop_world.videos import EVENT_TYPES, shuffle_frames, video_example
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
    # kinds added by qa / dialogue / glossary_terms / triples / queries
    "INTENTS", "QA_ATTRIBUTES", "QUERY_LANGS", "RELATIONS", "check_query_lang",
    "format_dialogue", "glossary", "glossary_mentions", "product_triples", "qa_answer",
    "query_example", "query_names",
    # images / videos
    "EVENT_TYPES", "GLYPHS", "POSITIONS", "blank_image", "glyph_mask", "image_example",
    "material_texture", "shuffle_frames", "video_example",
]
