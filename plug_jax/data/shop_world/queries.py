"""Shop World shopping-intent queries in six languages (multilingual intent classification).

Kind ``query``: one short user query about the product with an intent label (``INTENTS``,
drawn uniformly) and a category label (the index of the product's category in
``world.CATEGORIES``). Languages are ``QUERY_LANGS``: Chinese and English take their surface
forms from ``world``; German, French, Spanish and Japanese use the tables below. Queries are
keyword-style, as typed into a shop search box, so no gender or number agreement is needed.
The intent, template and second brand/material are drawn before rendering and the template
pools are parallel, so the queries of one ``(seed, split, index)`` are translations.

``world.check_lang`` only allows zh/en, so this module checks its own languages: use
``query_example`` (``text_example`` only renders zh/en).
"""
from __future__ import annotations

import string

import numpy as np

from plug_jax.data.shop_world import text, world
from plug_jax.data.shop_world.world import Product

QUERY_LANGS = ("zh", "en", "de", "fr", "es", "ja")
INTENTS = ("search", "compare", "ask_price", "ask_shipping", "return_item")
CATEGORY_KEYS = tuple(c.key for c in world.CATEGORIES)

_CAT_KEYS = ("dress", "tshirt", "sneakers", "backpack", "mug", "lamp", "phone_case", "hat",
             "watch", "sofa", "kettle", "umbrella", "scarf", "jacket")
_COLOUR_KEYS = ("black", "white", "red", "blue", "green", "yellow", "pink", "grey", "brown",
                "purple")
_MATERIAL_KEYS = ("cotton", "linen", "silk", "wool", "leather", "canvas", "polyester", "nylon",
                  "ceramic", "glass", "stainless_steel", "wood", "silicone", "plastic")


def _table(keys, **by_lang) -> dict[str, dict[str, str]]:
    out = {}
    for lang, words in by_lang.items():
        assert len(words) == len(keys), lang
        out[lang] = dict(zip(keys, words))
    return out


CATEGORY_NAMES = _table(
    _CAT_KEYS,
    de=("Kleid", "T-Shirt", "Sneaker", "Rucksack", "Tasse", "Schreibtischlampe", "Handyhülle",
        "Hut", "Uhr", "Sofa", "Wasserkocher", "Regenschirm", "Schal", "Jacke"),
    fr=("robe", "t-shirt", "baskets", "sac à dos", "mug", "lampe de bureau",
        "coque de téléphone", "chapeau", "montre", "canapé", "bouilloire", "parapluie",
        "écharpe", "veste"),
    es=("vestido", "camiseta", "zapatillas", "mochila", "taza", "lámpara de escritorio",
        "funda de móvil", "sombrero", "reloj", "sofá", "hervidor", "paraguas", "bufanda",
        "chaqueta"),
    ja=("ワンピース", "Tシャツ", "スニーカー", "リュック", "マグカップ", "デスクライト",
        "スマホケース", "帽子", "腕時計", "ソファ", "電気ケトル", "傘", "マフラー", "ジャケット"),
)
COLOUR_NAMES = _table(
    _COLOUR_KEYS,
    de=("schwarz", "weiß", "rot", "blau", "grün", "gelb", "rosa", "grau", "braun", "lila"),
    fr=("noir", "blanc", "rouge", "bleu", "vert", "jaune", "rose", "gris", "marron", "violet"),
    es=("negro", "blanco", "rojo", "azul", "verde", "amarillo", "rosa", "gris", "marrón",
        "morado"),
    ja=("黒", "白", "赤", "青", "緑", "黄色", "ピンク", "グレー", "茶色", "紫"),
)
MATERIAL_NAMES = _table(
    _MATERIAL_KEYS,
    de=("Baumwolle", "Leinen", "Seide", "Wolle", "Leder", "Canvas", "Polyester", "Nylon",
        "Keramik", "Glas", "Edelstahl", "Massivholz", "Silikon", "Kunststoff"),
    fr=("coton", "lin", "soie", "laine", "cuir", "toile", "polyester", "nylon", "céramique",
        "verre", "inox", "bois massif", "silicone", "plastique"),
    es=("algodón", "lino", "seda", "lana", "cuero", "lona", "poliéster", "nailon", "cerámica",
        "vidrio", "acero inoxidable", "madera maciza", "silicona", "plástico"),
    ja=("綿", "リネン", "シルク", "ウール", "本革", "キャンバス", "ポリエステル", "ナイロン",
        "陶器", "ガラス", "ステンレス", "無垢材", "シリコン", "プラスチック"),
)

# intent -> parallel pool of templates, one column per language in QUERY_LANGS order.
QUERY_TEMPLATES = {
    "search": (
        ("{colour}{material}{cat}", "{colour} {material} {cat}", "{cat} {material} {colour}",
         "{cat} {material} {colour}", "{cat} de {material} {colour}",
         "{colour} {material} {cat}"),
        ("{brand}{cat} {colour} {material}款", "{brand} {cat} {colour} {material}",
         "{brand} {cat} aus {material} in {colour}", "{cat} {brand} en {material} couleur {colour}",
         "{cat} {brand} {material} color {colour}", "{brand} {cat} {material} {colour}"),
    ),
    "compare": (
        ("{brand}和{brand2}的{cat}哪个好", "{brand} vs {brand2} {cat} which is better",
         "{cat} {brand} oder {brand2} was ist besser", "{cat} {brand} ou {brand2} lequel choisir",
         "{cat} {brand} o {brand2} cuál es mejor", "{brand}と{brand2}の{cat} どっちがいい"),
        ("{material}{cat}和{material2}{cat}对比", "{material} vs {material2} {cat}",
         "{cat} {material} vs {material2} Vergleich", "{cat} {material} ou {material2} comparatif",
         "comparar {cat} de {material} y {material2}", "{material}と{material2}の{cat} 比較"),
    ),
    "ask_price": (
        ("{brand}{colour}{cat}多少钱", "how much is the {brand} {colour} {cat}",
         "was kostet {brand} {cat} {colour}", "prix {cat} {brand} {colour}",
         "cuánto cuesta {cat} {brand} {colour}", "{brand} {colour}の{cat} いくら"),
        ("{material}{cat}价格", "{material} {cat} price", "{cat} {material} Preis",
         "{cat} {material} combien ça coûte", "precio {cat} de {material}",
         "{material} {cat} 値段"),
    ),
    "ask_shipping": (
        ("{brand}{cat}几天能到", "when will the {brand} {cat} arrive", "{cat} {brand} Lieferzeit",
         "{cat} {brand} délai de livraison", "{cat} {brand} tiempo de envío",
         "{brand} {cat} いつ届く"),
        ("{colour}{cat}包邮吗", "free shipping on {colour} {cat}?",
         "{cat} {colour} kostenloser Versand", "{cat} {colour} livraison gratuite",
         "{cat} {colour} envío gratis", "{colour}の{cat} 送料無料"),
    ),
    "return_item": (
        ("{brand}{cat}怎么退货", "how to return {brand} {cat}", "{cat} {brand} zurückgeben",
         "retourner {cat} {brand}", "devolver {cat} {brand}", "{brand} {cat} 返品方法"),
        ("{colour}{cat}尺码不合适能退吗", "can I return a {colour} {cat} that doesn't fit",
         "{cat} {colour} passt nicht Rücksendung", "{cat} {colour} retour remboursement",
         "{cat} {colour} devolución reembolso", "{colour}の{cat} サイズ合わない 返品"),
    ),
}


def check_query_lang(lang: str) -> None:
    if lang not in QUERY_LANGS:
        raise ValueError(f"unknown Shop World query language {lang!r}; use one of "
                         f"{QUERY_LANGS}")


def query_names(lang: str, table: str, key: str) -> str:
    """Surface form of a ``category``/``colour``/``material`` key in a query language."""
    check_query_lang(lang)
    if lang in world.LANGS:
        by_key = {"category": world.CATEGORY_BY_KEY, "colour": world.COLOUR_BY_KEY,
                  "material": world.MATERIAL_BY_KEY}[table]
        return by_key[key].name.get(lang)
    return {"category": CATEGORY_NAMES, "colour": COLOUR_NAMES,
            "material": MATERIAL_NAMES}[table][lang][key]


def _brand(key: str, lang: str) -> str:
    name = world.BRAND_BY_KEY[key].name
    return name.zh if lang == "zh" else name.en


@text.register_kind("query")
def query_kind(p: Product, rng: np.random.Generator, lang: str) -> dict:
    check_query_lang(lang)
    intent = int(rng.integers(len(INTENTS)))
    pool = QUERY_TEMPLATES[INTENTS[intent]]
    tmpl = int(rng.integers(len(pool)))
    brands = [b.key for b in world.BRANDS if b.key != p.brand]
    brand2 = brands[int(rng.integers(len(brands)))]
    mats = [m for m in p.category_info.materials if m != p.material]
    material2 = mats[int(rng.integers(len(mats)))]

    template = pool[tmpl][QUERY_LANGS.index(lang)]
    f = {"cat": query_names(lang, "category", p.category),
         "colour": query_names(lang, "colour", p.colour),
         "material": query_names(lang, "material", p.material),
         "material2": query_names(lang, "material", material2),
         "brand": _brand(p.brand, lang), "brand2": _brand(brand2, lang)}
    used = tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)
    return {
        "query": template.format(**f),
        "intent": INTENTS[intent],
        "intent_label": intent,
        "query_category": p.category,
        "category_label": CATEGORY_KEYS.index(p.category),
        "query_slots": {k: f[k] for k in dict.fromkeys(used)},
    }


def query_example(seed: int, split: str, index: int, lang: str = "zh") -> dict:
    """The product record at ``(seed, split, index)`` plus its ``query`` kind in ``lang``
    (any of ``QUERY_LANGS``): keys ``query``, ``intent``, ``intent_label``,
    ``query_category``, ``category_label``, ``query_slots`` and ``lang``."""
    check_query_lang(lang)
    p = world.product(seed, split, index)
    ex = p.as_dict()
    ex["lang"] = lang
    ex.update(query_kind(p, text.kind_rng(seed, split, index, "query"), lang))
    return ex
