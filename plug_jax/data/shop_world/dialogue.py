"""Shop World dialogues: a user and a shop assistant talk about one product.

Kind ``dialogue``: 3-6 turns with a user profile (audience, preferred style, budget), an
assistant persona (three sentences) and 2-4 retrieved catalog passages: the product's own
description (at ``dialogue_gold_passage``) plus descriptions of other products of the same
split (deterministic distractor indices). The assistant's replies name the product's
attributes and quote the gold passage sentence that states them, so a fusion-in-decoder
model must find the right passage. All draws come before rendering, so the Chinese and
English dialogues of one ``(seed, split, index)`` are translations with the same turns.
"""
from __future__ import annotations

import numpy as np

from plug_jax.data.shop_world import spans, text, world
from plug_jax.data.shop_world.world import Product, check_lang

MIN_TURNS, MAX_TURNS = 3, 6
MIN_PASSAGES, MAX_PASSAGES = 2, 4
PERSONA_SIZE = 3
MAX_DISTRACTOR_OFFSET = 1_000_000
SPEAKERS = {"zh": {"user": "用户", "assistant": "客服"},
            "en": {"user": "User", "assistant": "Assistant"}}

PERSONA_POOL = (
    ("我是店铺的导购助手。", "I am the shop's shopping assistant."),
    ("我熟悉店里每一件商品的材质和尺码。", "I know the material and size of every item in the shop."),
    ("我说话简洁又有礼貌。", "I keep my answers short and polite."),
    ("我只根据商品介绍回答问题。", "I answer only from the product listings."),
    ("我喜欢帮顾客找到性价比高的商品。", "I like helping customers find good value."),
    ("我会提醒顾客查看尺码表。", "I remind customers to check the size chart."),
    ("我在这家店工作了三年。", "I have worked in this shop for three years."),
    ("我很了解每个季节的流行趋势。", "I follow each season's trends closely."),
)
PROFILE_TEMPLATE = ("用户画像：{audience}，偏好{pref_style}风格，预算{budget}元以内。",
                    "User profile: {audience}; prefers a {pref_style} style; budget under "
                    "¥{budget}.")
GREETING_POOL = (
    ("您好，欢迎光临，请问有什么可以帮您？", "Hello and welcome! How can I help you today?"),
    ("您好，我是导购小助手，想找点什么呢？", "Hi, I'm the shopping assistant. What are you looking for?"),
)
REQUEST_POOL = (
    ("我想买一款适合{audience}的{cat}，最好是{pref_style}风格，预算{budget}元以内。",
     "I'd like a {cat} for {audience}, ideally {pref_style}, for under ¥{budget}."),
    ("有没有适合{audience}的{cat}推荐？喜欢{pref_style}一点的，不超过{budget}元。",
     "Can you recommend a {cat} for {audience}? Something {pref_style}, no more than "
     "¥{budget}."),
)
RECOMMEND_POOL = (
    ("为您推荐{brand}的这款{colour}{material}{cat}，售价{price}元。",
     "I recommend this {colour} {material} {cat} from {Brand}, priced at ¥{price}."),
    ("可以看看这款{brand}{cat}，{colour}配色，{material}材质，现价{price}元。",
     "Take a look at {this} {Brand} {cat}: {colour}, made of {material}, now ¥{price}."),
)
QUOTE_TEMPLATE = ("商品介绍里写道：“{sentence}”", "The listing says: \u201c{sentence}\u201d")

# follow-up attribute -> (description slot quoted, question pool, answer-lead pool)
FOLLOWUPS = {
    "material": ("material",
                 (("它是什么材质的？", "What is it made of?"),
                  ("用的什么材料？", "Which material is it?")),
                 (("是{material}材质的。", "{It} {is_} made of {material}."),
                  ("主体是{material}。", "The main material is {material}."))),
    "colour": ("intro",
               (("有什么颜色？", "What colour is it?"),
                ("颜色是哪种？", "Which colour does it come in?")),
               (("这款是{colour}的。", "{This} one {is_} {colour}."),
                ("颜色是{colour}。", "The colour is {colour}."))),
    "size": ("audience",
             (("尺码是多少？", "What size is it?"),
              ("大小怎么样？", "How big is it?")),
             (("这款是{size_short}，{size}。", "{It} {is_} {size_short}: {it} {size}."),
              ("规格是{size_short}。", "The size is {size_short}."))),
    "season": ("use",
               (("适合什么季节用？", "Which season is it for?"),
                ("现在这个季节能用吗？", "Is it right for this season?")),
               (("最适合{season}使用。", "{It} {is_} best {season_long}."),
                ("这是{season}款。", "{It} {is_} made for {season}."))),
    "price": ("closing",
              (("能再便宜点吗？", "Could it be any cheaper?"),
               ("现在多少钱？", "How much is it now?")),
              (("现在的价格是{price}元。", "The price now is ¥{price}."),
               ("到手{price}元。", "You pay ¥{price} in the end."))),
}
FOLLOWUP_ATTRIBUTES = tuple(FOLLOWUPS)
# Attributes the recommendation turn states.
RECOMMEND_ATTRIBUTES = ("brand", "colour", "material", "category", "price")


def _attr_value(p: Product, attr: str, lang: str) -> str:
    if attr == "price":
        return str(p.price)
    return p.names(lang)[attr]


def distractor_indices(p: Product, rng: np.random.Generator, n: int) -> list[int]:
    """``n`` distinct indices of other products of ``p``'s split."""
    offsets = rng.choice(MAX_DISTRACTOR_OFFSET, size=n, replace=False) + 1
    return [p.index + int(o) for o in offsets]


def format_dialogue(turns, lang: str) -> str:
    """``speaker：text`` lines (``User: ...`` in English): the dialogue LM document."""
    check_lang(lang)
    sep = "：" if lang == "zh" else ": "
    return "\n".join(f"{SPEAKERS[lang][t['speaker']]}{sep}{t['text']}" for t in turns)


@text.register_kind("dialogue")
def dialogue_kind(p: Product, rng: np.random.Generator, lang: str) -> dict:
    # ---- draws (independent of lang)
    n_turns = int(rng.integers(MIN_TURNS, MAX_TURNS + 1))
    persona = sorted(int(i) for i in rng.permutation(len(PERSONA_POOL))[:PERSONA_SIZE])
    if rng.random() < 0.7:
        pref_style = p.style
    else:
        pref_style = world.STYLES[int(rng.integers(len(world.STYLES)))].key
    budget = (p.price // 100 + 1 + int(rng.integers(0, 3))) * 100
    n_passages = int(rng.integers(MIN_PASSAGES, MAX_PASSAGES + 1))
    others = distractor_indices(p, rng, n_passages - 1)
    gold = int(rng.integers(n_passages))
    greeting = int(rng.integers(len(GREETING_POOL)))
    request = int(rng.integers(len(REQUEST_POOL)))
    recommend = int(rng.integers(len(RECOMMEND_POOL)))
    n_followups = (n_turns // 2) - 1
    followups = [FOLLOWUP_ATTRIBUTES[int(a)]
                 for a in rng.permutation(len(FOLLOWUP_ATTRIBUTES))[:n_followups]]
    questions = [int(rng.integers(len(FOLLOWUPS[a][1]))) for a in followups]
    leads = [int(rng.integers(len(FOLLOWUPS[a][2]))) for a in followups]

    # ---- render
    f = text.fields(p, lang)
    f.update(pref_style=world.STYLE_BY_KEY[pref_style].name.get(lang), budget=str(budget))
    own = spans.description_of(p, lang)
    own_sentences = dict(zip(own["description_slots"], own["description_sentences"]))
    passages = []
    for j in others:
        q = world.product(p.seed, p.split, j)
        passages.append({"product_id": q.product_id, "title": spans.title_of(q, lang),
                         "text": spans.description_of(q, lang)["description"]})
    passages.insert(gold, {"product_id": p.product_id, "title": spans.title_of(p, lang),
                           "text": own["description"]})

    def quote(slot: str) -> str:
        return text._render((QUOTE_TEMPLATE,), 0, lang, {"sentence": own_sentences[slot]})

    join = text.SENTENCE_JOIN[lang]
    turns = []
    if n_turns % 2:
        turns.append({"speaker": "assistant", "text": text._render(GREETING_POOL, greeting,
                                                                   lang, f),
                      "attributes": (), "passage": None})
    turns.append({"speaker": "user", "text": text._render(REQUEST_POOL, request, lang, f),
                  "attributes": ("audience", "category"), "passage": None})
    turns.append({"speaker": "assistant",
                  "text": join.join([text._render(RECOMMEND_POOL, recommend, lang, f),
                                     quote("use")]),
                  "attributes": RECOMMEND_ATTRIBUTES + ("season",), "passage": gold})
    for attr, qi, li in zip(followups, questions, leads):
        slot, qpool, lpool = FOLLOWUPS[attr]
        turns.append({"speaker": "user", "text": text._render(qpool, qi, lang, f),
                      "attributes": (attr,), "passage": None})
        turns.append({"speaker": "assistant",
                      "text": join.join([text._render(lpool, li, lang, f), quote(slot)]),
                      "attributes": (attr,), "passage": gold})
    assert len(turns) == n_turns
    return {
        "dialogue_turns": tuple(turns),
        "dialogue_profile": {"audience": p.audience, "style": pref_style, "budget": budget,
                             "text": text._render((PROFILE_TEMPLATE,), 0, lang, f)},
        "dialogue_persona": tuple(PERSONA_POOL[i][0 if lang == "zh" else 1] for i in persona),
        "dialogue_passages": tuple(passages),
        "dialogue_gold_passage": gold,
        "dialogue_text": format_dialogue(turns, lang),
    }
