"""Shop World text: titles, descriptions and reviews over the product records.

Each text *kind* is a function ``fn(product, rng, lang) -> dict`` registered in ``KINDS``.
Its random stream is ``default_rng([seed, split_code, index, crc32(kind)])``, so

* a kind's text depends only on ``(seed, split, index, lang)``;
* adding a kind (QA, dialogues, glossary, triples, queries, image captions ...) never changes
  the text of the existing kinds;
* every random draw is made independently of ``lang`` and the template pools are parallel
  (entry ``i`` of a pool is the same sentence in every language), so the Chinese and the
  English text of one ``(seed, split, index)`` are translations of each other. New kinds
  must keep that contract: draw first, then render.

Descriptions follow a fixed discourse order (``DESCRIPTION_SLOTS``): intro -> material ->
optional detail -> use/season -> audience/size -> closing/price, each sentence drawn from a
paraphrase pool and stating the product's own attributes, so a model can learn both the
sentence order and the attribute copying from the title.
"""
from __future__ import annotations

import zlib
from typing import Callable

import numpy as np

from plug_jax.data.shop_world import world
from plug_jax.data.shop_world.world import Product, check_lang

# Bump whenever any generated text (or product) changes; it keys the vocabulary cache.
GENERATOR_VERSION = "shop_world_text_v1"

KindFn = Callable[[Product, np.random.Generator, str], dict]
KINDS: dict[str, KindFn] = {}
DEFAULT_KINDS = ("title", "description", "review")

SENTENCE_JOIN = {"zh": "", "en": " "}
REVIEW_PREFIX = {"zh": "买家评价：", "en": "Review: "}
SENTIMENTS = ("negative", "positive")  # label 0, 1


def register_kind(name: str) -> Callable[[KindFn], KindFn]:
    """Decorator: register a text kind under ``name`` (idempotent for the same function)."""
    def deco(fn: KindFn) -> KindFn:
        old = KINDS.get(name)
        if old is not None and old.__qualname__ != fn.__qualname__:
            raise ValueError(f"Shop World text kind {name!r} is already registered")
        KINDS[name] = fn
        return fn
    return deco


def kind_rng(seed: int, split: str, index: int, kind: str) -> np.random.Generator:
    world.check_split(split)
    world.check_index(seed, index)
    code = zlib.crc32(kind.encode("utf-8"))
    return np.random.default_rng([int(seed), world.SPLIT_CODES[split], int(index), code])


def _pick(rng: np.random.Generator, n: int) -> int:
    return int(rng.integers(n))


def _title_case(s: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in s.split(" "))


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def fields(p: Product, lang: str) -> dict[str, str]:
    """Template fields for ``p`` in ``lang`` (draw-dependent fields are added by the kinds)."""
    check_lang(lang)
    cat = p.category_info
    season = world.SEASON_BY_KEY[p.season]
    names = p.names(lang)
    f = dict(names)
    f.update(
        cat=names["category"],
        season_long=season.long.get(lang),
        season_t=season.title.get(lang),
        size=p.size_info.clause.get(lang),
        size_short=names["size"],
        price=str(p.price),
    )
    if lang == "en":
        plural = cat.plural
        style = names["style"]
        f.update(
            Brand=names["brand"],
            Cat=_title_case(names["category"]),
            Colour=_title_case(names["colour"]),
            Material=_title_case(names["material"]),
            Style=_title_case(style),
            Audience=_title_case(names["audience"]),
            a_style=("an " if style[0] in "aeiou" else "a ") + style,
            Season_long=_cap(season.long.en),
            this="these" if plural else "this",
            This="These" if plural else "This",
            it="they" if plural else "it",
            It="They" if plural else "It",
            its="their" if plural else "its",
            is_="are" if plural else "is",
            has="have" if plural else "has",
            s="" if plural else "s",
        )
    return f


def _render(pool, i: int, lang: str, f: dict) -> str:
    return pool[i][0 if lang == "zh" else 1].format(**f)


# ---------------------------------------------------------------------------- title
TITLE_POOL = (
    ("{brand} {season_t}新款 {colour}{material}{cat} {style}风 {audience}款",
     "{Brand} {season_t} New {Colour} {Material} {Cat}, {Style} Style, for {Audience}"),
    ("【{brand}】{style}{colour}{cat} {material}材质 {audience}{season_t}必备",
     "[{Brand}] {Style} {Colour} {Cat} in {Material}, {season_t} Essential for {Audience}"),
    ("{brand}官方 {material}{cat} {colour} {style}百搭 适合{audience}",
     "{Brand} Official {Material} {Cat} in {Colour}, Versatile {Style} Look for {Audience}"),
    ("{season_t}上新 {brand}{style}款{material}{cat}（{colour}）{audience}适用",
     "{season_t} Arrival: {Brand} {Style} {Material} {Cat} ({Colour}) for {Audience}"),
)


@register_kind("title")
def title_kind(p: Product, rng: np.random.Generator, lang: str) -> dict:
    i = _pick(rng, len(TITLE_POOL))
    return {"title": _render(TITLE_POOL, i, lang, fields(p, lang))}


# ---------------------------------------------------------------------------- description
DESCRIPTION_SLOTS = ("intro", "material", "detail", "use", "audience", "closing")

INTRO_POOL = (
    ("这款{brand}{cat}采用{style}设计，{colour}的配色大方耐看。",
     "{This} {cat} from {Brand} {has} {a_style} design, and the {colour} colour looks great "
     "every day."),
    ("{brand}推出的这款{colour}{cat}走{style}路线，细节处理很用心。",
     "{Brand} made {this} {colour} {cat} in {a_style} style, with care in every detail."),
    ("{style}风格的{colour}{cat}来自{brand}，一眼就能看出品质。",
     "{This} {style} {colour} {cat} from {Brand} show{s} {its} quality at first sight."),
    ("来自{brand}的{colour}{cat}，整体是{style}风格，简单又好搭配。",
     "From {Brand} come{s} {this} {colour} {cat}, {a_style} look that is simple and easy "
     "to match."),
)
MATERIAL_POOL = (
    ("{cat}采用{material}材质，{prop}。", "{It} {is_} made of {material}, which is {prop}."),
    ("选用优质{material}，{prop}，做工扎实。",
     "Made from quality {material}, {it} {is_} {prop} and well finished."),
    ("{material}的质地{prop}，经久耐用。", "The {material} is {prop} and built to last."),
    ("主体材质为{material}，{prop}，触感舒适。",
     "The main material is {material}: {prop} and pleasant to the touch."),
)
DETAIL_POOL = (("{feature}。", "{feature}."),)
USE_POOL = (
    ("{season}{use}都很合适。", "{It} {is_} a great fit for {use} {season_long}."),
    ("特别适合在{season}用于{use}。", "{It} {is_} especially suited to {use} {season_long}."),
    ("{season_long}里，{use}都少不了它。", "{Season_long}, {it} {is_} a must for {use}."),
    ("{season}首选，{use}都不在话下。", "A top pick {season_long}, {it} handle{s} {use} with ease."),
)
AUDIENCE_POOL = (
    ("专为{audience}设计，{size}。", "Designed for {audience}, {it} {size}."),
    ("{audience}使用尤其合适，{size}。", "{It} suit{s} {audience} especially well and {size}."),
    ("推荐给{audience}，{size}，大小刚刚好。", "Recommended for {audience}: {it} {size}, just the right size."),
    ("很多{audience}都在用，{size}。", "Loved by many {audience}, {it} {size}."),
)
CLOSING_POOL = (
    ("到手价仅{price}元，喜欢就带回家吧。", "Now just ¥{price}: take {it} home today."),
    ("现价{price}元，性价比很高。", "At ¥{price}, {it} {is_} great value."),
    ("售价{price}元，数量有限，先到先得。", "Priced at ¥{price} while stocks last, so order soon."),
    ("只要{price}元，就能把{brand}的品质带回家。", "For just ¥{price}, bring {Brand} quality home."),
)
DETAIL_PROBABILITY = 0.5


@register_kind("description")
def description_kind(p: Product, rng: np.random.Generator, lang: str) -> dict:
    cat = p.category_info
    mat = p.material_info
    # All draws first, independent of lang.
    intro = _pick(rng, len(INTRO_POOL))
    material = _pick(rng, len(MATERIAL_POOL))
    prop = _pick(rng, len(mat.props))
    has_detail = bool(rng.random() < DETAIL_PROBABILITY)
    feature = _pick(rng, len(cat.features))
    use_tmpl = _pick(rng, len(USE_POOL))
    use = _pick(rng, len(cat.uses))
    audience = _pick(rng, len(AUDIENCE_POOL))
    closing = _pick(rng, len(CLOSING_POOL))

    f = fields(p, lang)
    f.update(prop=mat.props[prop].get(lang), feature=cat.features[feature].get(lang),
             use=cat.uses[use].get(lang))
    plan = [("intro", INTRO_POOL, intro), ("material", MATERIAL_POOL, material)]
    if has_detail:
        plan.append(("detail", DETAIL_POOL, 0))
    plan += [("use", USE_POOL, use_tmpl), ("audience", AUDIENCE_POOL, audience),
             ("closing", CLOSING_POOL, closing)]
    sentences = tuple(_render(pool, i, lang, f) for _, pool, i in plan)
    return {
        "description": SENTENCE_JOIN[lang].join(sentences),
        "description_sentences": sentences,
        "description_slots": tuple(slot for slot, _, _ in plan),
    }


# ---------------------------------------------------------------------------- review
# Each pool is indexed [label][i] with label 0 = negative, 1 = positive.
REVIEW_OPENINGS = (
    (("很失望。", "Very disappointed."),
     ("差评！", "One star."),
     ("这款{cat}让人失望。", "{This} {cat} let me down."),
     ("踩雷了。", "A bad buy.")),
    (("非常满意！", "Very happy with {it}!"),
     ("好评！", "Five stars!"),
     ("很喜欢这款{cat}。", "I love {this} {cat}."),
     ("超出预期，太棒了。", "Better than expected, a great buy.")),
)
REVIEW_ASPECTS = ("colour", "material", "size", "price", "delivery")
REVIEW_ASPECT_POOL = (
    (("实物颜色发暗，和图片里的{colour}不符。", "The {colour} looks nothing like the photos."),
     ("{material}摸起来很廉价，做工粗糙。", "The {material} feels cheap and the finish is rough."),
     ("{size_short}的实际大小和描述不符。", "The size ({size_short}) does not match the listing."),
     ("{price}元太贵了，根本不值。", "Way overpriced at ¥{price}."),
     ("物流太慢，包装还破了。", "Slow delivery and a damaged box.")),
    (("{colour}和图片一模一样，颜色很正。", "The {colour} is exactly like the photos."),
     ("{material}的质感很好，{prop}。", "The {material} feels premium: {prop}."),
     ("{size_short}的大小正合适。", "The size ({size_short}) is just right."),
     ("{price}元买到很值。", "Well worth ¥{price}."),
     ("物流很快，包装完好。", "Fast delivery and neat packaging.")),
)
REVIEW_CLOSINGS = (
    (("不会再买了。", "Never buying again."),
     ("已经申请退货。", "Returned it for a refund."),
     ("大家慎重购买。", "Think twice before buying."),
     ("对{brand}很失望。", "{Brand} let me down.")),
    (("推荐购买！", "Highly recommended!"),
     ("会回购的。", "Would buy again."),
     ("值得入手。", "Worth every penny."),
     ("给{brand}点赞！", "Well done, {Brand}!")),
)
# Cue phrases: every review holds at least one cue of its own sentiment and none of the
# other's (checked by the tests; keep it true when editing the pools).
REVIEW_CUES = {
    "zh": {
        "negative": ("失望", "差评", "踩雷", "不符", "廉价", "太贵", "不值", "太慢", "退货",
                     "不会再买", "慎重"),
        "positive": ("满意", "喜欢", "好评", "太棒", "一模一样", "质感很好", "正合适", "很值",
                     "物流很快", "推荐", "回购", "值得", "点赞"),
    },
    "en": {
        "negative": ("disappointed", "one star", "let me down", "bad buy", "nothing like",
                     "cheap", "does not match", "overpriced", "slow delivery", "never buying",
                     "returned", "think twice"),
        "positive": ("happy", "love", "five stars", "great", "exactly like", "premium",
                     "just right", "worth", "fast delivery", "recommended", "would buy again",
                     "well done"),
    },
}
POSITIVE_PROBABILITY = 0.5


@register_kind("review")
def review_kind(p: Product, rng: np.random.Generator, lang: str) -> dict:
    mat = p.material_info
    label = int(rng.random() < POSITIVE_PROBABILITY)
    rating = int(rng.integers(4, 6)) if label else int(rng.integers(1, 3))
    opening = _pick(rng, len(REVIEW_OPENINGS[label]))
    n_aspects = 1 + _pick(rng, 2)
    aspects = [int(a) for a in rng.permutation(len(REVIEW_ASPECTS))[:n_aspects]]
    closing = _pick(rng, len(REVIEW_CLOSINGS[label]))
    prop = _pick(rng, len(mat.props))

    f = fields(p, lang)
    f["prop"] = mat.props[prop].get(lang)
    sentences = [_render(REVIEW_OPENINGS[label], opening, lang, f)]
    sentences += [_render(REVIEW_ASPECT_POOL[label], a, lang, f) for a in aspects]
    sentences.append(_render(REVIEW_CLOSINGS[label], closing, lang, f))
    return {
        "review": SENTENCE_JOIN[lang].join(sentences),
        "sentiment": SENTIMENTS[label],
        "label": label,
        "rating": rating,
        "review_aspects": tuple(REVIEW_ASPECTS[a] for a in aspects),
    }


# ---------------------------------------------------------------------------- public API
def text_example(seed: int, split: str, index: int, lang: str = "zh",
                 kinds: tuple[str, ...] = DEFAULT_KINDS) -> dict:
    """One example: the product record plus the text of ``kinds`` in ``lang``.

    A pure function of its arguments. Keys: the ``Product`` fields and ``product_id``,
    ``lang``, then per kind: ``title``; ``description``, ``description_sentences``,
    ``description_slots``; ``review``, ``sentiment`` ("positive"/"negative"), ``label``
    (1/0), ``rating`` (1-5), ``review_aspects``.
    """
    check_lang(lang)
    p = world.product(seed, split, index)
    ex = p.as_dict()
    ex["lang"] = lang
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown Shop World text kind {kind!r}; known: {sorted(KINDS)}")
        ex.update(KINDS[kind](p, kind_rng(seed, split, index, kind), lang))
    return ex


def format_lm_document(ex: dict) -> str:
    """``title \\n description \\n <review prefix>review``: the LM training document."""
    return f"{ex['title']}\n{ex['description']}\n{REVIEW_PREFIX[ex['lang']]}{ex['review']}"


def lm_document(seed: int, split: str, index: int, lang: str = "zh") -> str:
    """The LM document at ``(seed, split, index)`` (see ``format_lm_document``)."""
    return format_lm_document(text_example(seed, split, index, lang))


def lm_documents(seed: int, split: str, start: int, stop: int, lang: str = "zh") -> list[str]:
    return [lm_document(seed, split, i, lang) for i in range(start, stop)]


def description_prompt(seed: int, split: str, index: int, lang: str = "zh",
                       prefix_units: int | None = None) -> tuple[str, str]:
    """``(prompt, reference)`` where prompt = title, newline, the first words of the
    description (``prefix_units`` characters in zh, words in en; default 4 and 3) and
    reference is the whole LM document."""
    ex = text_example(seed, split, index, lang)
    desc = ex["description"]
    if lang == "zh":
        prefix = desc[: prefix_units or 4]
    else:
        prefix = " ".join(desc.split(" ")[: prefix_units or 3])
    return f"{ex['title']}\n{prefix}", format_lm_document(ex)


def description_prompts(seed: int = 0, split: str = "test", num: int = 4, lang: str = "zh",
                        prefix_units: int | None = None) -> list[str]:
    """``num`` fixed prompts (indices ``0..num-1`` of ``split``) for demos to continue.

    The default ``test`` split holds (category, colour, material) combinations never seen
    in training, so a continuation that restates the title's colour and material shows the
    model copies attributes instead of recalling memorised products.
    """
    return [description_prompt(seed, split, i, lang, prefix_units)[0] for i in range(num)]


def corpus_lexicon(lang: str = "zh") -> list[str]:
    """Every attribute surface form in ``lang``, one per line (guarantees vocabulary coverage)."""
    check_lang(lang)
    out = []
    tables = (world.BRANDS, world.COLOURS, world.MATERIALS, world.STYLES, world.AUDIENCES,
              world.SEASONS, world.CATEGORIES)
    for table in tables:
        out += [t.name.get(lang) for t in table]
    for s in world.SEASONS:
        out += [s.long.get(lang), s.title.get(lang)]
    for c in world.CATEGORIES:
        out += [s.short.get(lang) for s in c.sizes] + [s.clause.get(lang) for s in c.sizes]
        out += [u.get(lang) for u in c.uses] + [x.get(lang) for x in c.features]
    for m in world.MATERIALS:
        out += [x.get(lang) for x in m.props]
    return out
