"""Shop World attribute QA: question/answer pairs about one product's attributes.

Kind ``attribute_qa``. Every answer is a surface form copied from the product record (the
price as ``"129元"`` / ``"¥129"``), so a reader model can learn to copy it from the title or
description. The attributes asked, their order and the question wording are drawn before
rendering, so the Chinese and English pairs of one ``(seed, split, index)`` are translations.
"""
from __future__ import annotations

import numpy as np

from plug_jax.data.shop_world import text
from plug_jax.data.shop_world.world import Product, check_lang

QA_ATTRIBUTES = ("colour", "material", "category", "season", "audience", "size", "price",
                 "brand")
MIN_QUESTIONS, MAX_QUESTIONS = 4, 6

# Per attribute a parallel pool of (zh, en) question templates (fields from ``text.fields``).
QUESTION_POOLS = {
    "colour": (("这款{cat}是什么颜色的？", "What colour {is_} {this} {cat}?"),
               ("{cat}有哪种颜色？", "Which colour does the {cat} come in?"),
               ("请问这件商品的颜色是？", "What is the colour of this item?")),
    "material": (("这款{cat}是什么材质的？", "What material {is_} {this} {cat} made of?"),
                 ("{cat}用的是什么面料或材料？", "What is the {cat} made from?"),
                 ("请问商品的主体材质是什么？", "What is the main material of this item?")),
    "category": (("这是什么商品？", "What kind of product is this?"),
                 ("{brand}的这件商品属于哪一类？", "Which category does this {Brand} item belong to?"),
                 ("请问这是哪类产品？", "What type of item is this?")),
    "season": (("这款{cat}适合什么季节？", "Which season {is_} {this} {cat} for?"),
               ("什么季节用这款{cat}最合适？", "When is the best season to use the {cat}?"),
               ("请问适用季节是？", "What season is this item made for?")),
    "audience": (("这款{cat}适合什么人群？", "Who {is_} {this} {cat} designed for?"),
                 ("{cat}是给谁设计的？", "Which customers is the {cat} made for?"),
                 ("请问适用人群是？", "Who is the target customer of this item?")),
    "size": (("这款{cat}是什么尺码？", "What size {is_} {this} {cat}?"),
             ("{cat}的规格是多少？", "What are the size specs of the {cat}?"),
             ("请问商品尺寸是多少？", "What size is this item?")),
    "price": (("这款{cat}多少钱？", "How much {is_} {this} {cat}?"),
              ("{cat}的售价是多少？", "What is the price of the {cat}?"),
              ("请问现在卖多少钱？", "What does this item cost now?")),
    "brand": (("这款{cat}是什么牌子的？", "Which brand makes {this} {cat}?"),
              ("{cat}的品牌是？", "What brand is the {cat}?"),
              ("请问这是哪个品牌的商品？", "Which brand is this item from?")),
}


def _cap_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def qa_answer(p: Product, attribute: str, lang: str) -> str:
    """The answer to a question about ``attribute``: copied from the product record."""
    check_lang(lang)
    if attribute == "price":
        return f"{p.price}元" if lang == "zh" else f"¥{p.price}"
    if attribute not in QA_ATTRIBUTES:
        raise ValueError(f"unknown Shop World QA attribute {attribute!r}")
    return p.names(lang)[attribute]


@text.register_kind("attribute_qa")
def attribute_qa_kind(p: Product, rng: np.random.Generator, lang: str) -> dict:
    n = int(rng.integers(MIN_QUESTIONS, MAX_QUESTIONS + 1))
    order = [int(a) for a in rng.permutation(len(QA_ATTRIBUTES))[:n]]
    templates = [int(rng.integers(len(QUESTION_POOLS[QA_ATTRIBUTES[a]]))) for a in order]

    f = text.fields(p, lang)
    pairs = []
    for a, t in zip(order, templates):
        attr = QA_ATTRIBUTES[a]
        question = text._render(QUESTION_POOLS[attr], t, lang, f)
        pairs.append({"attribute": attr, "question": _cap_first(question),
                      "answer": qa_answer(p, attr, lang)})
    return {"qa_pairs": tuple(pairs), "qa_attributes": tuple(q["attribute"] for q in pairs)}
