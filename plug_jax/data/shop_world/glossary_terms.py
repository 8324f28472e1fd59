"""Shop World glossary (module `glossary_terms`, so the package attribute `glossary` stays the
function): term -> definition over materials, styles, categories, colours, seasons,
audiences, material qualities, sizes and e-commerce terms, in Chinese and English.

``glossary(lang)`` returns every entry (the zh and en lists are parallel: entry ``i`` is the
same term in both). Kind ``glossary`` returns the entries whose term occurs in the product's
description, each with the character span of its first occurrence.
"""
from __future__ import annotations

import functools

import numpy as np

from plug_jax.data.shop_world import spans, text, world
from plug_jax.data.shop_world.world import Product, check_lang

ENTRY_TYPES = ("material", "style", "category", "colour", "season", "audience", "quality",
               "size", "ecommerce")

STYLE_DEFINITIONS = {
    "minimalist": ("线条干净、装饰很少的设计风格，强调实用和耐看。",
                   "a design style with clean lines and little decoration, practical and "
                   "timeless."),
    "vintage": ("借鉴过去年代审美的设计风格，色调和细节带有怀旧感。",
                "a design style borrowing from past decades, with nostalgic colours and "
                "details."),
    "sporty": ("以运动装备为灵感的设计风格，注重舒适和活动自如。",
               "a design style inspired by sports gear, built for comfort and free movement."),
    "elegant": ("端庄精致的设计风格，适合正式或重要的场合。",
                "a refined, graceful design style suited to formal occasions."),
    "casual": ("轻松随意的设计风格，适合日常生活和休息时间。",
               "a relaxed design style for everyday life and free time."),
    "business": ("稳重干练的设计风格，适合办公室和商务场合。",
                 "a sober, polished design style for the office and business settings."),
    "cute": ("圆润活泼、色彩明快的设计风格，显得俏皮可爱。",
             "a playful design style with rounded shapes and cheerful colours."),
    "trendy": ("融合中国传统元素和当下潮流的设计风格。",
               "a design style mixing traditional Chinese motifs with current street fashion."),
}

# (zh term, en term, zh definition, en definition)
ECOMMERCE_TERMS = (
    ("包邮", "free shipping", "卖家承担运费，买家无需另付邮费。",
     "the seller pays the delivery cost, so the buyer pays no postage."),
    ("七天无理由退货", "7-day no-reason return",
     "签收后七天内，商品完好即可不说明理由申请退货。",
     "an undamaged item may be returned within seven days of delivery without giving a "
     "reason."),
    ("预售", "pre-sale", "商品尚未到货时先付款下单，到货后再发货。",
     "paying for an item before it is in stock; it ships once it arrives."),
    ("满减", "spend-and-save", "订单金额达到门槛后直接减去一定金额的优惠。",
     "a discount taken off an order once it reaches a set amount."),
    ("优惠券", "coupon", "下单时可以抵扣部分金额的凭证。",
     "a voucher that takes part of the price off at checkout."),
    ("秒杀", "flash sale", "在很短时间内以极低价格限量抢购的活动。",
     "a very short sale of a limited stock at a very low price."),
    ("到手价", "final price", "扣除所有优惠后买家实际支付的价格。",
     "what the buyer actually pays after every discount."),
    ("性价比", "value for money", "商品品质与价格之间的比值，越高越划算。",
     "how much quality a price buys; the higher, the better the deal."),
    ("售后", "after-sales service", "商品售出后提供的退换、维修和咨询等服务。",
     "returns, repairs and support offered after a purchase."),
    ("退款", "refund", "把买家已支付的钱退回原支付账户。",
     "paying the buyer's money back to the original account."),
    ("换货", "exchange", "把收到的商品换成另一件同款或其他规格的商品。",
     "swapping a received item for another of the same or a different size."),
    ("物流", "logistics", "商品从仓库运送到买家手中的整个过程。",
     "the whole journey of an item from the warehouse to the buyer."),
    ("快递单号", "tracking number", "用来查询包裹运输状态的编号。",
     "the number used to follow a parcel in transit."),
    ("发货", "dispatch", "卖家把商品交给快递公司寄出。",
     "the seller handing the item to the courier."),
    ("签收", "delivery confirmation", "买家收到包裹并确认接收。",
     "the buyer receiving a parcel and confirming it."),
    ("运费险", "return shipping insurance", "退货时用来补偿买家运费的保险。",
     "insurance that covers the buyer's postage on a return."),
    ("价格保护", "price protection", "购买后一段时间内降价，可以申请退还差价。",
     "getting the difference back if the price drops soon after buying."),
    ("尺码表", "size chart", "列出各个尺码具体尺寸的表格。",
     "a table giving the measurements of every size."),
    ("色差", "colour difference", "实物颜色与商品图片颜色之间的差异。",
     "the gap between an item's real colour and its photos."),
    ("做工", "workmanship", "商品的缝制、拼接和细节处理水平。",
     "how well an item is sewn, joined and finished."),
    ("正品", "genuine product", "由品牌授权生产和销售的真货。",
     "an authentic item made and sold with the brand's authorisation."),
    ("旗舰店", "flagship store", "品牌在电商平台上开设的官方店铺。",
     "a brand's official shop on a marketplace."),
    ("购物车", "shopping cart", "暂存准备购买的商品的地方。",
     "where items are kept before checkout."),
    ("收藏", "favourites", "把喜欢的商品或店铺保存下来方便以后查看。",
     "saving an item or shop to look at later."),
    ("下单", "place an order", "确认商品和地址后提交订单。",
     "submitting an order after choosing the item and address."),
    ("库存", "stock", "店铺里还可以出售的商品数量。",
     "how many units a shop still has for sale."),
    ("缺货", "out of stock", "商品暂时没有库存，无法购买。",
     "an item that cannot be bought because none are left."),
    ("上新", "new arrival", "店铺新推出的商品。", "an item a shop has just launched."),
    ("好评", "positive review", "买家给出的满意评价。", "a satisfied buyer's rating."),
    ("差评", "negative review", "买家给出的不满意评价。", "a dissatisfied buyer's rating."),
    ("回购", "repeat purchase", "用过之后再次购买同一件商品。",
     "buying the same item again after using it."),
    ("客服", "customer service", "帮助买家解答问题、处理订单的店铺工作人员。",
     "shop staff who answer buyers' questions and handle orders."),
    ("保修", "warranty", "在一定期限内免费维修商品质量问题的承诺。",
     "a promise to repair faults free of charge for a set period."),
    ("开箱", "unboxing", "收到包裹后打开检查商品的过程。",
     "opening a parcel and checking the item inside."),
    ("百搭", "easy to match", "能和很多其他衣物或物品搭配。",
     "going well with many other clothes or items."),
)


def _join(names, lang):
    return ("、" if lang == "zh" else ", ").join(names)


@functools.lru_cache(maxsize=None)
def _entries() -> tuple[dict, ...]:
    """Language-independent entry list: dicts with ``type``, ``key``, ``zh``/``en`` terms and
    definitions."""
    rows = []

    def add(type_, key, zh, en, dzh, den):
        rows.append({"type": type_, "key": key, "term": {"zh": zh, "en": en},
                     "definition": {"zh": dzh, "en": den}})

    cats_of = {m.key: [c for c in world.CATEGORIES if m.key in c.materials]
               for m in world.MATERIALS}
    for m in world.MATERIALS:
        cats = cats_of[m.key]
        add("material", m.key, m.name.zh, m.name.en,
            f"一种商品材料，{m.props[0].zh}、{m.props[1].zh}，常用于{_join([c.name.zh for c in cats], 'zh')}。",
            f"a product material that is {m.props[0].en} and {m.props[1].en}; used for "
            f"{_join([c.name.en for c in cats], 'en')}.")
    for s in world.STYLES:
        dzh, den = STYLE_DEFINITIONS[s.key]
        add("style", s.key, s.name.zh, s.name.en, dzh, den)
    for c in world.CATEGORIES:
        mats = [world.MATERIAL_BY_KEY[k].name for k in c.materials]
        add("category", c.key, c.name.zh, c.name.en,
            f"商品类目，常用于{c.uses[0].zh}，材质有{_join([n.zh for n in mats], 'zh')}，"
            f"价格一般在{c.price_range[0]}到{c.price_range[1]}元之间。",
            f"a product category used for {c.uses[0].en}, made of "
            f"{_join([n.en for n in mats], 'en')}, usually priced from ¥{c.price_range[0]} "
            f"to ¥{c.price_range[1]}.")
    for c in world.COLOURS:
        add("colour", c.key, c.name.zh, c.name.en,
            f"一种商品颜色，RGB值约为{c.rgb}。", f"a product colour, roughly RGB {c.rgb}.")
    for s in world.SEASONS:
        add("season", s.key, s.name.zh, s.name.en,
            f"季节标签，表示商品适合在{s.long.zh}使用。",
            f"a season label: the product is meant for use {s.long.en}.")
    for a in world.AUDIENCES:
        add("audience", a.key, a.name.zh, a.name.en,
            f"人群标签，表示商品主要面向{a.name.zh}。",
            f"an audience label: the product is mainly meant for {a.name.en}.")
    for m in world.MATERIALS:
        for i, prop in enumerate(m.props):
            add("quality", f"{m.key}/{i}", prop.zh, prop.en,
                f"描述材质特点的说法，常用来形容{m.name.zh}。",
                f"a phrase describing a material's qualities, typical of {m.name.en}.")
    sizes: dict[str, list] = {}
    for c in world.CATEGORIES:
        for s in c.sizes:
            sizes.setdefault(s.short.zh, [s, []])[1].append(c)
    for s, cats in sizes.values():
        add("size", s.key, s.short.zh, s.short.en,
            f"{_join([c.name.zh for c in cats], 'zh')}的规格，即{s.clause.zh}。",
            f"a size option for {_join([c.name.en for c in cats], 'en')} "
            f"(as in \u201c{s.clause.en}\u201d).")
    for zh, en, dzh, den in ECOMMERCE_TERMS:
        add("ecommerce", en.replace(" ", "_"), zh, en, dzh, den)
    return tuple(rows)


def glossary(lang: str = "zh") -> list[dict]:
    """Every glossary entry in ``lang``: dicts with ``term``, ``definition``, ``type`` (one of
    ``ENTRY_TYPES``) and ``key``; parallel across languages."""
    check_lang(lang)
    return [{"term": r["term"][lang], "definition": r["definition"][lang], "type": r["type"],
             "key": r["key"]} for r in _entries()]


def glossary_mentions(haystack: str, lang: str) -> tuple[dict, ...]:
    """Glossary entries whose term occurs in ``haystack``, with the span of the first
    occurrence (``start``, ``end``), sorted by position."""
    out = []
    for e in glossary(lang):
        span = spans.find_span(haystack, e["term"], lang, ignore_case=lang != "zh")
        if span is not None:
            out.append(dict(e, start=span[0], end=span[1]))
    out.sort(key=lambda e: (e["start"], -e["end"], e["term"]))
    return tuple(out)


@text.register_kind("glossary")
def glossary_kind(p: Product, rng: np.random.Generator, lang: str) -> dict:
    del rng  # fully determined by the description
    description = spans.description_of(p, lang)["description"]
    return {"glossary_text": description,
            "glossary_entries": glossary_mentions(description, lang)}
