"""Shop World attribute tables and deterministic product records.

Every attribute value has a stable ``key`` (used in records, labels and held-out sets) and
a Chinese and an English surface form. Tables are plain tuples, so their order is part of
the generator version: appending is safe for new kinds that draw their own random streams,
but reordering or editing an entry changes every generated product (bump
``GENERATOR_VERSION`` in ``text.py`` when you do).

Products are a pure function of ``(seed, split, index)``: the random stream comes from
``numpy.random.default_rng([seed, split_code, index])`` (PCG64 seeded through SeedSequence),
which is identical on every machine and process.

Compositional split: for each ``(category, material)`` pair exactly one colour is held out
(51 of 510 combinations). ``train`` and ``validation`` draw only the remaining (category,
colour, material) combinations, ``test`` draws only the held-out ones, so every attribute and
every attribute pair of a test product is seen in training but its triple never is.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

LANGS = ("zh", "en")
SPLITS = ("train", "validation", "test")
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class Name:
    """A surface form in every supported language."""
    zh: str
    en: str

    def get(self, lang: str) -> str:
        check_lang(lang)
        return getattr(self, lang)


@dataclasses.dataclass(frozen=True)
class Brand:
    key: str
    name: Name


@dataclasses.dataclass(frozen=True)
class Colour:
    key: str
    name: Name
    rgb: tuple[int, int, int]  # for the image kinds


@dataclasses.dataclass(frozen=True)
class Material:
    key: str
    name: Name
    props: tuple[Name, ...]  # adjective phrases ("soft and breathable")
    price_factor: float


@dataclasses.dataclass(frozen=True)
class Style:
    key: str
    name: Name


@dataclasses.dataclass(frozen=True)
class Audience:
    key: str
    name: Name


@dataclasses.dataclass(frozen=True)
class Season:
    key: str
    name: Name         # 夏季 / summer
    long: Name         # 夏季 / in summer  (一年四季 / all year round)
    title: Name        # 夏季 / Summer     (四季 / All-Season)


@dataclasses.dataclass(frozen=True)
class Size:
    """A size: ``short`` names it ("M码", "size M"), ``clause`` states it after a subject
    ("尺码为M码", "comes in size M"; plural verbs for plural categories)."""
    key: str
    short: Name
    clause: Name


@dataclasses.dataclass(frozen=True)
class Category:
    key: str
    name: Name
    plural: bool                     # English agreement ("these sneakers are")
    materials: tuple[str, ...]       # material keys this category is made of
    sizes: tuple[Size, ...]
    price_range: tuple[int, int]     # yuan, before the material factor
    uses: tuple[Name, ...]           # noun phrases ("dates and everyday outings")
    features: tuple[Name, ...]       # whole clauses, used by the optional detail sentence
    audiences: Optional[tuple[str, ...]] = None  # None: every audience


def check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"unknown Shop World language {lang!r}; use one of {LANGS}")


def check_split(split: str) -> None:
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown Shop World split {split!r}; use one of {SPLITS}")


N = Name

BRANDS: tuple[Brand, ...] = tuple(Brand(k, N(zh, en)) for k, zh, en in [
    ("yunqi", "云栖", "Yunqi"), ("mujin", "木槿", "Mujin"), ("qingshan", "青杉", "Qingshan"),
    ("luman", "鹿漫", "Luman"), ("xingye", "星野", "Xingye"), ("haiyan", "海盐", "Haiyan"),
    ("baiyu", "白屿", "Baiyu"), ("nanfeng", "南风", "Nanfeng"), ("jiuli", "九里", "Jiuli"),
    ("moxiang", "墨巷", "Moxiang"), ("qiaomu", "乔木", "Qiaomu"), ("yanhui", "晏回", "Yanhui"),
    ("suyi", "素衣", "Suyi"), ("chengguang", "橙光", "Chengguang"), ("linxi", "林溪", "Linxi"),
    ("yuelang", "月朗", "Yuelang"), ("tangguo", "糖果", "Tangguo"), ("fengling", "风铃", "Fengling"),
    ("guyu", "谷雨", "Guyu"), ("shanhe", "山禾", "Shanhe"), ("xiaoman", "小满", "Xiaoman"),
    ("anyu", "安屿", "Anyu"), ("zhiyun", "织云", "Zhiyun"), ("yule", "予乐", "Yule"),
])

COLOURS: tuple[Colour, ...] = tuple(Colour(k, N(zh, en), rgb) for k, zh, en, rgb in [
    ("black", "黑色", "black", (25, 25, 25)),
    ("white", "白色", "white", (245, 245, 240)),
    ("red", "红色", "red", (200, 30, 40)),
    ("blue", "蓝色", "blue", (40, 80, 200)),
    ("green", "绿色", "green", (40, 150, 60)),
    ("yellow", "黄色", "yellow", (240, 200, 40)),
    ("pink", "粉色", "pink", (240, 150, 180)),
    ("grey", "灰色", "grey", (128, 128, 128)),
    ("brown", "棕色", "brown", (130, 80, 40)),
    ("purple", "紫色", "purple", (130, 60, 160)),
])

MATERIALS: tuple[Material, ...] = tuple(
    Material(k, N(zh, en), tuple(N(a, b) for a, b in props), f) for k, zh, en, props, f in [
        ("cotton", "纯棉", "cotton",
         [("柔软透气", "soft and breathable"), ("亲肤吸汗", "gentle on the skin and absorbent")], 1.0),
        ("linen", "亚麻", "linen",
         [("清爽透气", "cool and airy"), ("自然挺括", "naturally crisp")], 1.1),
        ("silk", "真丝", "silk",
         [("顺滑有光泽", "smooth and lustrous"), ("轻盈垂坠", "light and flowing")], 1.8),
        ("wool", "羊毛", "wool",
         [("保暖柔软", "warm and soft"), ("蓬松舒适", "fluffy and cosy")], 1.5),
        ("leather", "真皮", "leather",
         [("细腻耐磨", "supple and hard-wearing"), ("纹理高级", "fine-grained and elegant")], 1.7),
        ("canvas", "帆布", "canvas",
         [("结实耐用", "sturdy and durable"), ("厚实耐磨", "thick and tough")], 0.9),
        ("polyester", "涤纶", "polyester",
         [("轻便易打理", "light and easy to care for"), ("不易起皱", "wrinkle-resistant")], 0.8),
        ("nylon", "尼龙", "nylon",
         [("轻盈防泼水", "light and splash-proof"), ("强韧抗撕裂", "strong and tear-resistant")], 0.9),
        ("ceramic", "陶瓷", "ceramic",
         [("釉面光洁", "glossy and smooth"), ("易清洗不串味", "easy to clean and odour-free")], 1.0),
        ("glass", "玻璃", "glass",
         [("通透干净", "clear and clean"), ("耐高温", "heat-resistant")], 1.0),
        ("stainless_steel", "不锈钢", "stainless steel",
         [("坚固防锈", "strong and rust-proof"), ("耐用易清洁", "durable and easy to clean")], 1.2),
        ("wood", "实木", "solid wood",
         [("纹理自然", "naturally grained"), ("温润环保", "warm and eco-friendly")], 1.4),
        ("silicone", "硅胶", "silicone",
         [("柔韧防摔", "flexible and shock-absorbing"), ("手感细腻", "silky to the touch")], 0.7),
        ("plastic", "塑料", "plastic",
         [("轻巧耐摔", "light and drop-proof"), ("经济实惠", "affordable and practical")], 0.6),
    ])

STYLES: tuple[Style, ...] = tuple(Style(k, N(zh, en)) for k, zh, en in [
    ("minimalist", "简约", "minimalist"), ("vintage", "复古", "vintage"),
    ("sporty", "运动", "sporty"), ("elegant", "优雅", "elegant"), ("casual", "休闲", "casual"),
    ("business", "商务", "business"), ("cute", "可爱", "cute"), ("trendy", "国潮", "trendy"),
])

AUDIENCES: tuple[Audience, ...] = tuple(Audience(k, N(zh, en)) for k, zh, en in [
    ("women", "女士", "women"), ("men", "男士", "men"), ("kids", "儿童", "kids"),
    ("students", "学生", "students"), ("office_workers", "上班族", "office workers"),
    ("seniors", "中老年人", "seniors"), ("couples", "情侣", "couples"),
])

SEASONS: tuple[Season, ...] = tuple(
    Season(k, N(zh, en), N(zh_long, en_long), N(zh, en_title))
    for k, zh, en, zh_long, en_long, en_title in [
        ("spring", "春季", "spring", "春季", "in spring", "Spring"),
        ("summer", "夏季", "summer", "夏季", "in summer", "Summer"),
        ("autumn", "秋季", "autumn", "秋季", "in autumn", "Autumn"),
        ("winter", "冬季", "winter", "冬季", "in winter", "Winter"),
        ("all_season", "四季", "all seasons", "一年四季", "all year round", "All-Season"),
    ])


def _sizes(rows) -> tuple[Size, ...]:
    return tuple(Size(k, N(zs, es), N(zc, ec)) for k, zs, es, zc, ec in rows)


_CLOTHING = _sizes((s, f"{s}码", f"size {s}", f"尺码为{s}码", f"comes in size {s}")
                   for s in ("S", "M", "L", "XL"))


def _names(rows) -> tuple[Name, ...]:
    return tuple(N(zh, en) for zh, en in rows)


CATEGORIES: tuple[Category, ...] = (
    Category(
        "dress", N("连衣裙", "dress"), False, ("cotton", "linen", "silk", "polyester"), _CLOTHING,
        (129, 499),
        _names([("约会和日常出行", "dates and everyday outings"),
                ("度假和聚会", "holidays and parties")]),
        _names([("收腰设计，显瘦又显高", "The fitted waist flatters the figure"),
                ("裙摆飘逸，走路带风", "The flowing hem moves beautifully"),
                ("领口做工精致", "The neckline is finely finished")]),
        audiences=("women", "kids", "students")),
    Category(
        "tshirt", N("T恤", "T-shirt"), False, ("cotton", "linen", "polyester"), _CLOTHING,
        (49, 199),
        _names([("运动和日常穿搭", "workouts and everyday wear"),
                ("居家和短途出行", "lounging and short trips")]),
        _names([("圆领设计，穿脱方便", "The crew neck slips on easily"),
                ("版型宽松，不挑身材", "The relaxed cut suits every figure"),
                ("走线整齐，不易变形", "Neat seams keep the shape")])),
    Category(
        "sneakers", N("运动鞋", "sneakers"), True, ("leather", "canvas", "nylon", "polyester"),
        _sizes((str(s), f"{s}码", f"EU {s}", f"尺码为{s}码", f"come in EU size {s}")
               for s in range(36, 45)),
        (199, 699),
        _names([("跑步和通勤", "running and commuting"),
                ("健身和散步", "the gym and long walks")]),
        _names([("鞋底柔软有弹性", "The soft sole gives a springy step"),
                ("防滑鞋底，走路更稳", "The non-slip sole keeps every step steady"),
                ("鞋身轻便，久走不累", "The light build keeps feet fresh all day")])),
    Category(
        "backpack", N("双肩包", "backpack"), False, ("canvas", "leather", "nylon", "polyester"),
        _sizes((f"{s}l", f"{s}升", f"{s} L", f"容量为{s}升", f"holds {s} litres")
               for s in (20, 25, 30, 35)),
        (99, 459),
        _names([("上学和短途旅行", "school and short trips"),
                ("通勤和户外徒步", "commuting and hiking")]),
        _names([("多隔层设计，收纳有序", "Several compartments keep things organised"),
                ("肩带加厚，背着不累", "Padded straps make it easy to carry"),
                ("能放下十五英寸笔记本电脑", "A 15-inch laptop fits inside")])),
    Category(
        "mug", N("马克杯", "mug"), False, ("ceramic", "glass", "stainless_steel"),
        _sizes((f"{s}ml", f"{s}毫升", f"{s} ml", f"容量为{s}毫升", f"holds {s} ml")
               for s in (300, 350, 400, 500)),
        (29, 129),
        _names([("办公室喝茶和冲咖啡", "tea and coffee at the office"),
                ("居家早餐", "breakfast at home")]),
        _names([("杯把握感舒适", "The handle sits comfortably in the hand"),
                ("杯口圆润不刮嘴", "The rounded rim is gentle on the lips"),
                ("可以放进洗碗机清洗", "It is dishwasher safe")])),
    Category(
        "lamp", N("台灯", "desk lamp"), False, ("ceramic", "glass", "wood", "stainless_steel"),
        _sizes((f"{s}cm", f"{s}厘米", f"{s} cm", f"高度为{s}厘米", f"stands {s} cm tall")
               for s in (35, 40, 45, 50)),
        (89, 399),
        _names([("阅读和办公", "reading and working"),
                ("卧室床头照明", "bedside lighting")]),
        _names([("三档调光，护眼不闪", "Three brightness levels give flicker-free light"),
                ("灯头可以自由调节角度", "The head tilts to any angle"),
                ("暖光柔和，氛围感十足", "The warm light sets a cosy mood")])),
    Category(
        "phone_case", N("手机壳", "phone case"), False, ("silicone", "leather", "plastic"),
        _sizes((s, f"{s}英寸", f"{s}-inch", f"适配{s}英寸手机", f"fits {s}-inch phones")
               for s in ("6.1", "6.3", "6.7")),
        (19, 129),
        _names([("日常通勤和旅行", "daily commuting and travel"),
                ("户外运动", "outdoor sports")]),
        _names([("四角加厚，防摔抗震", "Reinforced corners absorb drops"),
                ("按键灵敏，开孔精准", "Precise cut-outs keep the buttons responsive"),
                ("支持无线充电", "It supports wireless charging")])),
    Category(
        "hat", N("帽子", "hat"), False, ("cotton", "wool", "linen", "polyester"),
        _sizes((f"{s}cm", f"{s}厘米", f"{s} cm", f"头围为{s}厘米", f"fits a {s} cm head")
               for s in (56, 57, 58, 60)),
        (39, 199),
        _names([("户外出游和遮阳", "outdoor trips and shade"),
                ("日常穿搭", "everyday outfits")]),
        _names([("帽檐宽大，遮阳效果好", "The wide brim gives good shade"),
                ("内衬吸汗，戴着不闷", "The sweat-absorbing lining stays fresh"),
                ("可以折叠收纳", "It folds flat for packing")])),
    Category(
        "watch", N("手表", "watch"), False, ("stainless_steel", "leather", "silicone", "ceramic"),
        _sizes((f"{s}mm", f"{s}毫米", f"{s} mm", f"表盘直径为{s}毫米", f"has a {s} mm dial")
               for s in (36, 38, 40, 42)),
        (199, 1299),
        _names([("商务会议和日常佩戴", "business meetings and daily wear"),
                ("运动健身", "sport and fitness")]),
        _names([("三十米生活防水", "It is water resistant to 30 metres"),
                ("夜光指针，夜里也看得清", "Luminous hands are easy to read at night"),
                ("表带可以快速更换", "The strap changes in seconds")])),
    Category(
        "sofa", N("沙发", "sofa"), False, ("leather", "linen", "cotton", "wood"),
        _sizes([("1", "单人位", "single seater", "可坐一人", "seats one"),
                ("2", "双人位", "two-seater", "可坐两人", "seats two"),
                ("3", "三人位", "three-seater", "可坐三人", "seats three"),
                ("4", "四人位", "four-seater", "可坐四人", "seats four")]),
        (999, 5999),
        _names([("客厅休息和家庭聚会", "relaxing in the living room and family gatherings"),
                ("午休和看电影", "naps and movie nights")]),
        _names([("坐垫回弹好，久坐不塌", "The cushions spring back and never sag"),
                ("靠背高度符合人体工学", "The ergonomic backrest supports the back"),
                ("沙发套可以拆洗", "The covers come off for washing")])),
    Category(
        "kettle", N("电水壶", "kettle"), False, ("stainless_steel", "glass", "plastic"),
        _sizes((f"{s}l", f"{s}升", f"{s} L", f"容量为{s}升", f"holds {s} litres")
               for s in ("1.2", "1.5", "1.7", "1.8")),
        (79, 299),
        _names([("烧水泡茶", "boiling water for tea"),
                ("冲奶粉和泡面", "baby formula and instant noodles")]),
        _names([("五分钟快速烧开", "It boils in five minutes"),
                ("烧干自动断电，用着放心", "Boil-dry protection switches it off safely"),
                ("底座可以三百六十度旋转", "The 360-degree base makes it easy to lift")])),
    Category(
        "umbrella", N("雨伞", "umbrella"), False, ("polyester", "nylon", "plastic"),
        _sizes((f"{s}cm", f"{s}厘米", f"{s} cm", f"伞面直径为{s}厘米", f"has a {s} cm canopy")
               for s in (95, 105, 115)),
        (39, 199),
        _names([("通勤和出游", "commuting and outings"),
                ("晴天遮阳和雨天挡雨", "sunny and rainy days")]),
        _names([("一键自动开合", "It opens and closes with one button"),
                ("加固伞骨，抗风不翻", "Reinforced ribs stand up to the wind"),
                ("防晒涂层，阻挡紫外线", "A UV coating blocks the sun")])),
    Category(
        "scarf", N("围巾", "scarf"), False, ("wool", "silk", "cotton", "linen"),
        _sizes((f"{s}cm", f"{s}厘米", f"{s} cm", f"长度为{s}厘米", f"is {s} cm long")
               for s in (160, 180, 200)),
        (59, 399),
        _names([("通勤和约会", "commuting and dates"),
                ("旅行拍照", "travel photos")]),
        _names([("流苏收边，精致大方", "Tasselled ends add a refined touch"),
                ("长度适中，可以多种系法", "The length suits many ways of tying it"),
                ("贴着脖子也不扎", "It never itches against the neck")])),
    Category(
        "jacket", N("夹克", "jacket"), False, ("cotton", "leather", "polyester", "nylon"), _CLOTHING,
        (199, 899),
        _names([("通勤和户外活动", "commuting and outdoor activities"),
                ("周末出游", "weekend outings")]),
        _names([("立领设计，挡风保暖", "The stand collar blocks the wind"),
                ("多口袋设计，实用方便", "Plenty of pockets keep essentials close"),
                ("袖口收紧，利落有型", "Fitted cuffs give a sharp look")])),
)

CATEGORY_BY_KEY = {c.key: c for c in CATEGORIES}
COLOUR_BY_KEY = {c.key: c for c in COLOURS}
MATERIAL_BY_KEY = {m.key: m for m in MATERIALS}
STYLE_BY_KEY = {s.key: s for s in STYLES}
AUDIENCE_BY_KEY = {a.key: a for a in AUDIENCES}
SEASON_BY_KEY = {s.key: s for s in SEASONS}
BRAND_BY_KEY = {b.key: b for b in BRANDS}

Combo = tuple[str, str, str]  # (category, colour, material) keys


def _combinations() -> tuple[tuple[Combo, ...], frozenset[Combo]]:
    """All combinations and the held-out set.

    For category ``i`` and its ``j``-th material one colour is held out: the first of
    ``(7 i + 3 j) mod 10``, ``+1``, ``+2`` ... that keeps two guarantees, so that every pair
    inside a held-out triple is still seen in training and only the triple is new:
      * a category's materials hold out different colours, so each (category, colour) pair
        keeps a training combination;
      * a (colour, material) pair is never held out in every category using the material.
    (Each (category, material) pair keeps nine of its ten colours.)
    """
    uses = {m.key: sum(m.key in c.materials for c in CATEGORIES) for m in MATERIALS}
    held_pairs: dict[tuple[str, str], int] = {}
    combos, held = [], set()
    n = len(COLOURS)
    for i, cat in enumerate(CATEGORIES):
        taken: set[int] = set()
        for j, mat in enumerate(cat.materials):
            for step in range(n):
                out = (7 * i + 3 * j + step) % n
                pair = (COLOURS[out].key, mat)
                if out not in taken and held_pairs.get(pair, 0) + 1 < uses[mat]:
                    break
            else:  # pragma: no cover  (the tables above always leave a choice)
                raise AssertionError(f"no colour can be held out for {cat.key}/{mat}")
            taken.add(out)
            held_pairs[pair] = held_pairs.get(pair, 0) + 1
            for k, col in enumerate(COLOURS):
                combo = (cat.key, col.key, mat)
                combos.append(combo)
                if k == out:
                    held.add(combo)
    return tuple(combos), frozenset(held)


ALL_COMBINATIONS, HELDOUT_COMBINATIONS = _combinations()
TRAIN_COMBINATIONS: tuple[Combo, ...] = tuple(
    c for c in ALL_COMBINATIONS if c not in HELDOUT_COMBINATIONS)
_TEST_COMBINATIONS: tuple[Combo, ...] = tuple(
    c for c in ALL_COMBINATIONS if c in HELDOUT_COMBINATIONS)


def heldout_combinations() -> frozenset[Combo]:
    """The (category, colour, material) key triples that only the ``test`` split uses."""
    return HELDOUT_COMBINATIONS


def split_combinations(split: str) -> tuple[Combo, ...]:
    """The combinations a split draws from (train and validation share theirs)."""
    check_split(split)
    return _TEST_COMBINATIONS if split == "test" else TRAIN_COMBINATIONS


@dataclasses.dataclass(frozen=True)
class Product:
    """One product record; attribute fields hold table keys."""
    seed: int
    split: str
    index: int
    category: str
    colour: str
    material: str
    style: str
    audience: str
    season: str
    brand: str
    size: str
    price: int  # yuan

    @property
    def product_id(self) -> str:
        return f"sw{self.seed}-{self.split}-{self.index}"

    @property
    def combination(self) -> Combo:
        return (self.category, self.colour, self.material)

    # Table entries ------------------------------------------------------------------
    @property
    def category_info(self) -> Category:
        return CATEGORY_BY_KEY[self.category]

    @property
    def colour_info(self) -> Colour:
        return COLOUR_BY_KEY[self.colour]

    @property
    def material_info(self) -> Material:
        return MATERIAL_BY_KEY[self.material]

    @property
    def size_info(self) -> Size:
        return next(s for s in self.category_info.sizes if s.key == self.size)

    def names(self, lang: str) -> dict[str, str]:
        """Surface forms of every attribute in ``lang``."""
        check_lang(lang)
        return {
            "category": self.category_info.name.get(lang),
            "colour": self.colour_info.name.get(lang),
            "material": self.material_info.name.get(lang),
            "style": STYLE_BY_KEY[self.style].name.get(lang),
            "audience": AUDIENCE_BY_KEY[self.audience].name.get(lang),
            "season": SEASON_BY_KEY[self.season].name.get(lang),
            "brand": BRAND_BY_KEY[self.brand].name.get(lang),
            "size": self.size_info.short.get(lang),
        }

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["product_id"] = self.product_id
        return d


def check_index(seed: int, index: int) -> None:
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"Shop World needs seed >= 0 and index >= 0, got seed={seed}, "
                         f"index={index}")


def product(seed: int, split: str, index: int) -> Product:
    """The product record at ``(seed, split, index)``; a pure function of its arguments."""
    check_split(split)
    check_index(seed, index)
    seed, index = int(seed), int(index)
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    combos = split_combinations(split)
    cat_key, colour, material = combos[int(rng.integers(len(combos)))]
    cat = CATEGORY_BY_KEY[cat_key]
    audiences = cat.audiences or tuple(a.key for a in AUDIENCES)
    style = STYLES[int(rng.integers(len(STYLES)))].key
    audience = audiences[int(rng.integers(len(audiences)))]
    season = SEASONS[int(rng.integers(len(SEASONS)))].key
    brand = BRANDS[int(rng.integers(len(BRANDS)))].key
    size = cat.sizes[int(rng.integers(len(cat.sizes)))].key
    lo, hi = cat.price_range
    raw = rng.uniform(lo, hi) * MATERIAL_BY_KEY[material].price_factor
    price = max(9, int(round(raw / 10.0)) * 10 - 1)  # shop prices end in 9
    return Product(seed, split, index, cat_key, colour, material, style, audience, season,
                   brand, size, price)
