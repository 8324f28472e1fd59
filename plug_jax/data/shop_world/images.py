"""Shop World images: products drawn as category glyphs, with captions, VQA and grounding.

Pure numpy (never imports TensorFlow or PIL). ``image_example(seed, split, index)`` draws one
to three products of ``split`` side by side, each as a category-specific glyph filled with its
colour (``Colour.rgb``) and modulated by a material texture, on a background whose colour is
kept far from every object colour.

Determinism and layout
  * Every draw comes from ``kind_rng(seed, split, index, "image")`` and is made before any text
    is rendered, so the pixels do not depend on ``lang`` and the zh/en labels are parallel.
  * The layout is drawn on a 32x32 grid before anything size-dependent, so the normalised boxes
    are the same at every ``size`` and pixel boxes scale exactly for multiples of 32
    (32, 64, 96, ..., 224).
  * The image is cut into three equal vertical thirds (left / middle / right); each object sits
    wholly inside its own third, so boxes never overlap and the position words are exact.

Boxes are ``[x0, y0, x1, y1]`` with ``x1``/``y1`` exclusive (pixels) and the same divided by
``size`` in ``boxes_norm``. The first object is always ``product(seed, split, index)``; the
others are other products of the same split (so a test image shows only test combinations),
with categories different from each other so that "the red mug" names one object.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from plug_jax.data.shop_world import world
from plug_jax.data.shop_world.text import kind_rng
from plug_jax.data.shop_world.world import Product, check_lang

GRID = 32                     # layout grid (boxes are multiples of size / GRID)
MIN_SIZE, MAX_SIZE = 32, 224
MAX_OBJECTS = 3
TEXTURE_AMPLITUDE = 20.0      # +- luminance added by a material texture
BACKGROUND_MIN_DISTANCE = 100.0   # target RGB distance of the background base to object colours
POSITIONS = ("left", "middle", "right")
POSITION_NAMES = {
    "zh": {"left": "左边", "middle": "中间", "right": "右边"},
    "en": {"left": "left", "middle": "middle", "right": "right"},
}
_EN_POSITION_PHRASE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}

# Background base colours; each image picks one far from all its object colours.
BACKGROUND_COLOURS: tuple[tuple[int, int, int], ...] = (
    (80, 200, 210), (170, 235, 200), (110, 200, 120), (235, 130, 20), (150, 210, 250),
    (200, 240, 110), (0, 110, 110), (250, 220, 160), (90, 40, 10), (180, 120, 230),
    (30, 40, 110), (210, 170, 120),
)


def check_size(size: int) -> int:
    size = int(size)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"Shop World image size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    return size


# ---------------------------------------------------------------------------- glyphs
# Each glyph is a boolean mask over box-relative coordinates u (x, left->right) and v
# (y, top->bottom) in (0, 1). Every glyph covers the centre of its box.
def _rect(u, v, u0, u1, v0, v1):
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _ellipse(u, v, cu, cv, ru, rv):
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _ring(u, v, cu, cv, r0, r1):
    d = np.sqrt((u - cu) ** 2 + (v - cv) ** 2)
    return (d >= r0) & (d <= r1)


def _dress(u, v):        # trapezoid: narrow bodice, wide skirt
    return (np.abs(u - 0.5) <= 0.12 + 0.36 * v) & (v >= 0.04) & (v <= 0.96)


def _tshirt(u, v):       # T: body plus short wide sleeves, round neck cut out
    body = _rect(u, v, 0.25, 0.75, 0.08, 0.96)
    sleeves = _rect(u, v, 0.02, 0.98, 0.08, 0.38)
    return (body | sleeves) & ~_ellipse(u, v, 0.5, 0.08, 0.12, 0.1)


def _sneakers(u, v):     # shoe profile: sole, heel upper, rounded toe
    sole = _rect(u, v, 0.03, 0.97, 0.78, 0.94)
    upper = _rect(u, v, 0.05, 0.6, 0.35, 0.78)
    toe = _ellipse(u, v, 0.6, 0.78, 0.37, 0.3) & (v <= 0.78)
    return sole | upper | toe


def _backpack(u, v):     # rounded body with a top loop and a front pocket notch
    body = _rect(u, v, 0.15, 0.85, 0.35, 0.96) | _ellipse(u, v, 0.5, 0.35, 0.35, 0.17)
    loop = _ring(u, v, 0.5, 0.18, 0.07, 0.13) & (v <= 0.2)
    notch = _rect(u, v, 0.3, 0.7, 0.8, 0.84)
    return (body | loop) & ~notch


def _mug(u, v):          # body plus a handle ring on the right
    body = _rect(u, v, 0.08, 0.68, 0.15, 0.92)
    handle = _ring(u, v, 0.68, 0.52, 0.11, 0.21) & (u >= 0.68)
    return body | handle


def _lamp(u, v):         # triangular shade on a stem, flat base
    shade = (v >= 0.04) & (v <= 0.62) & (np.abs(u - 0.5) <= 0.05 + 0.42 * (v - 0.04) / 0.58)
    stem = _rect(u, v, 0.43, 0.57, 0.62, 0.88)
    base = _rect(u, v, 0.18, 0.82, 0.88, 0.98)
    return shade | stem | base


def _phone_case(u, v):   # tall rounded rectangle with a camera hole
    outer = _rect(u, v, 0.22, 0.78, 0.03, 0.97)
    corners = ~_rect(u, v, 0.27, 0.73, 0.0, 1.0) & ~_rect(u, v, 0.0, 1.0, 0.08, 0.92)
    body = outer & ~corners
    return body & ~_ellipse(u, v, 0.37, 0.15, 0.08, 0.06)


def _hat(u, v):          # crown dome on a wide brim
    crown = _ellipse(u, v, 0.5, 0.64, 0.3, 0.48) & (v <= 0.64)
    brim = _rect(u, v, 0.02, 0.98, 0.62, 0.78)
    return crown | brim


def _watch(u, v):        # round face on a vertical strap
    return _ellipse(u, v, 0.5, 0.5, 0.32, 0.26) | _rect(u, v, 0.36, 0.64, 0.0, 1.0)


def _sofa(u, v):         # back, seat, two arms, legs
    back = _rect(u, v, 0.15, 0.85, 0.22, 0.58)
    seat = _rect(u, v, 0.05, 0.95, 0.58, 0.84)
    arms = _rect(u, v, 0.02, 0.18, 0.42, 0.84) | _rect(u, v, 0.82, 0.98, 0.42, 0.84)
    legs = _rect(u, v, 0.08, 0.15, 0.84, 0.96) | _rect(u, v, 0.85, 0.92, 0.84, 0.96)
    return back | seat | arms | legs


def _kettle(u, v):       # round body, spout up to the right, handle arc on top
    body = _ellipse(u, v, 0.45, 0.62, 0.33, 0.33)
    spout = (np.abs(u + v - 1.32) <= 0.07) & (u >= 0.68) & (u <= 0.97)
    handle = _ring(u, v, 0.45, 0.3, 0.13, 0.2) & (v <= 0.3)
    return body | spout | handle


def _umbrella(u, v):     # half-disc canopy, thin shaft, hooked handle
    canopy = _ellipse(u, v, 0.5, 0.6, 0.48, 0.56) & (v <= 0.6)
    shaft = _rect(u, v, 0.46, 0.54, 0.6, 0.88)
    hook = _ring(u, v, 0.38, 0.88, 0.04, 0.1) & (v >= 0.88)
    return canopy | shaft | hook


def _scarf(u, v):        # diagonal band with a fringe of tassels
    band = np.abs(u - v) <= 0.18
    fringe = _rect(u, v, 0.72, 1.0, 0.86, 1.0) & (np.floor(u * 24) % 2 == 0)
    return band | fringe


def _jacket(u, v):       # body with long sleeves and a V collar cut out
    body = _rect(u, v, 0.18, 0.82, 0.1, 0.96)
    sleeves = _rect(u, v, 0.02, 0.2, 0.14, 0.8) | _rect(u, v, 0.8, 0.98, 0.14, 0.8)
    collar = (v <= 0.4) & (np.abs(u - 0.5) <= 0.22 * (0.4 - v) / 0.3)
    return (body | sleeves) & ~collar


GLYPHS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "dress": _dress, "tshirt": _tshirt, "sneakers": _sneakers, "backpack": _backpack,
    "mug": _mug, "lamp": _lamp, "phone_case": _phone_case, "hat": _hat, "watch": _watch,
    "sofa": _sofa, "kettle": _kettle, "umbrella": _umbrella, "scarf": _scarf,
    "jacket": _jacket,
}


def glyph_mask(category: str, height: int, width: int) -> np.ndarray:
    """Boolean [height, width] mask of ``category``'s glyph filling a box of that size."""
    fn = GLYPHS[category]
    v = (np.arange(height, dtype=np.float64)[:, None] + 0.5) / height
    u = (np.arange(width, dtype=np.float64)[None, :] + 0.5) / width
    return np.broadcast_to(fn(u, v), (height, width)).copy()


# ---------------------------------------------------------------------------- textures
# Each material is a luminance pattern t(x, y) in [-1, 1] (box-relative pixels); ``scale`` is
# size / 64 so periods grow with the image; ``phase`` is a per-object random offset.
def _noise(shape, rng, cell=1):
    h, w = shape
    small = rng.uniform(-1.0, 1.0, ((h + cell - 1) // cell, (w + cell - 1) // cell))
    return np.repeat(np.repeat(small, cell, 0), cell, 1)[:h, :w]


def material_texture(material: str, height: int, width: int, rng: np.random.Generator,
                     scale: float = 1.0) -> np.ndarray:
    """Float [height, width] texture in [-1, 1] for ``material`` (draws from ``rng``)."""
    y = np.arange(height, dtype=np.float64)[:, None]
    x = np.arange(width, dtype=np.float64)[None, :]
    phase = float(rng.uniform(0, 2 * np.pi))
    s = max(scale, 0.5)
    period = lambda p: max(2.0, p * s)  # noqa: E731
    sq = lambda t: np.where(np.sin(t) >= 0, 1.0, -1.0)  # noqa: E731
    if material == "cotton":              # soft fine noise
        t = 0.6 * _noise((height, width), rng, max(1, int(round(s))))
    elif material == "linen":             # crosshatch weave
        p = period(3)
        t = np.maximum(sq(2 * np.pi * y / p + phase), sq(2 * np.pi * x / p + phase))
    elif material == "silk":              # smooth diagonal sheen
        t = np.sin(2 * np.pi * (x + y) / period(10) + phase)
    elif material == "wool":              # coarse blotchy noise
        t = _noise((height, width), rng, max(2, int(round(2 * s))))
    elif material == "leather":           # grain speckle on a slight vertical shade
        t = 0.5 * np.sign(_noise((height, width), rng)) + 0.5 * (y / max(height - 1, 1) - 0.5)
    elif material == "canvas":            # fine checker
        c = max(1, int(round(s)))
        t = np.where(((y // c) + (x // c)) % 2 == 0, 1.0, -1.0)
    elif material == "polyester":         # horizontal stripes
        t = sq(2 * np.pi * y / period(4) + phase)
    elif material == "nylon":             # diagonal stripes
        t = sq(2 * np.pi * (x - y) / period(5) + phase)
    elif material == "ceramic":           # glossy highlight at the upper left
        d = np.sqrt(((x + 0.5) / width - 0.3) ** 2 + ((y + 0.5) / height - 0.3) ** 2)
        t = np.clip(1.0 - 3.0 * d, -1.0, 1.0)
    elif material == "glass":             # vertical light bands
        t = np.sin(2 * np.pi * x / period(6) + phase)
    elif material == "stainless_steel":   # brushed: fine horizontal streaks + vertical shade
        t = 0.6 * np.repeat(rng.uniform(-1, 1, (height, 1)), width, 1) + 0.4 * (
            1.0 - 2.0 * y / max(height - 1, 1))
    elif material == "wood":              # wavy grain
        t = np.sin(2 * np.pi * y / period(5) + 1.5 * np.sin(2 * np.pi * x / period(16)) + phase)
    elif material == "silicone":          # dots
        p = period(4)
        t = np.where((np.sin(2 * np.pi * x / p + phase) > 0.5)
                     & (np.sin(2 * np.pi * y / p + phase) > 0.5), 1.0, -0.3)
    elif material == "plastic":           # large checker
        c = max(2, int(round(4 * s)))
        t = np.where(((y // c) + (x // c)) % 2 == 0, 0.7, -0.7)
    else:
        raise KeyError(f"no texture for Shop World material {material!r}")
    return np.clip(np.broadcast_to(t, (height, width)), -1.0, 1.0)


def glyph_patch(category: str, colour: str, texture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rgb float [h, w, 3], mask [h, w]) of a textured glyph; ``texture`` sets the box size."""
    h, w = texture.shape
    mask = glyph_mask(category, h, w)
    rgb = np.asarray(world.COLOUR_BY_KEY[colour].rgb, np.float64)
    pix = rgb[None, None, :] + TEXTURE_AMPLITUDE * texture[:, :, None]
    return np.clip(pix, 0, 255), mask


# ---------------------------------------------------------------------------- background
def background_colour(colours, rng: np.random.Generator) -> tuple[int, int, int]:
    """A base background colour far (>= BACKGROUND_MIN_DISTANCE if possible) from ``colours``."""
    obj = np.asarray([world.COLOUR_BY_KEY[c].rgb for c in colours], np.float64)
    cand = np.asarray(BACKGROUND_COLOURS, np.float64)
    dist = np.sqrt(((cand[:, None, :] - obj[None, :, :]) ** 2).sum(-1)).min(1)
    ok = np.flatnonzero(dist >= BACKGROUND_MIN_DISTANCE)
    pick = int(ok[rng.integers(len(ok))]) if len(ok) else int(np.argmax(dist))
    return tuple(int(c) for c in BACKGROUND_COLOURS[pick])


def render_background(base, size: int, rng: np.random.Generator) -> np.ndarray:
    """Float [size, size, 3]: ``base`` with a random-direction +-12 gradient and +-5 noise."""
    angle = float(rng.uniform(0, 2 * np.pi))
    grid = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5
    ramp = np.cos(angle) * grid[None, :] + np.sin(angle) * grid[:, None]   # in [-0.71, 0.71]
    noise = rng.integers(-5, 6, (size, size, 1)).astype(np.float64)
    img = np.asarray(base, np.float64)[None, None, :] + 17.0 * ramp[:, :, None] + noise
    return img


def blank_image(image: np.ndarray) -> np.ndarray:
    """Control input: same shape and dtype, constant mid grey (carries no image information).

    Works for an image [H, W, 3] or a video [T, H, W, 3].
    """
    image = np.asarray(image)
    return np.full(image.shape, 128, dtype=image.dtype)


# ---------------------------------------------------------------------------- layout
def _other_products(seed: int, split: str, index: int, first: Product, count: int,
                    rng: np.random.Generator) -> list[Product]:
    """``count`` other products of ``split`` whose categories differ from all chosen ones."""
    chosen = [first]
    tries = 0
    while len(chosen) < count + 1:
        j = int(rng.integers(2 ** 31 - 1))
        tries += 1
        if j == index:
            continue
        p = world.product(seed, split, j)
        if p.category not in {c.category for c in chosen} or tries > 200:
            chosen.append(p)
    return chosen[1:]


def _draw_layout(n: int, rng: np.random.Generator) -> tuple[list[int], list[tuple[int, ...]]]:
    """Slots (0/1/2 thirds) for the n objects and grid boxes inside them."""
    slots = [int(s) for s in rng.permutation(3)[:n]]
    boxes = []
    for s in slots:
        lo = -(-s * GRID // 3)                 # ceil(s * 32 / 3)
        hi = (s + 1) * GRID // 3               # floor((s + 1) * 32 / 3)
        w = int(rng.integers(7, min(10, hi - lo) + 1))
        x0 = int(rng.integers(lo, hi - w + 1))
        h = int(rng.integers(max(8, w - 1), min(24, 2 * w) + 1))
        y0 = int(rng.integers(1, GRID - 1 - h + 1))
        boxes.append((x0, y0, x0 + w, y0 + h))
    return slots, boxes


def _px(g: int, size: int) -> int:
    return int(round(g * size / GRID))


# ---------------------------------------------------------------------------- text
def _article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _en_np(p: Product, with_material: bool = True) -> str:
    """'a red cotton dress' / 'a pair of red leather sneakers'."""
    core = " ".join([p.colour_info.name.en] + ([p.material_info.name.en] if with_material else [])
                    + [p.category_info.name.en])
    return ("a pair of " + core) if p.category_info.plural else _article(core)


def _zh_np(p: Product, with_material: bool = True) -> str:
    n = p.names("zh")
    return n["colour"] + (n["material"] if with_material else "") + n["category"]


def _join(items: list[str], lang: str) -> str:
    if len(items) == 1:
        return items[0]
    if lang == "zh":
        return "、".join(items[:-1]) + "和" + items[-1]
    return ", ".join(items[:-1]) + (", and " if len(items) > 2 else " and ") + items[-1]


def image_caption(products: list[Product], positions: list[str], lang: str) -> str:
    order = sorted(range(len(products)), key=lambda i: POSITIONS.index(positions[i]))
    ps = [products[i] for i in order]
    if lang == "zh":
        if len(ps) == 1:
            return f"画面{POSITION_NAMES['zh'][positions[0]]}有一件{_zh_np(ps[0])}。"
        text = "画面中从左到右依次是" + _join([_zh_np(p) for p in ps], "zh") + "。"
        rel = [f"{_zh_np(a, False)}在{_zh_np(b, False)}的左边" for a, b in zip(ps, ps[1:])]
        return text + "，".join(rel) + "。"
    if len(ps) == 1:
        np_ = _en_np(ps[0])
        return f"{np_[0].upper()}{np_[1:]} is {_EN_POSITION_PHRASE[positions[0]]} of the picture."
    text = "From left to right, the picture shows " + _join([_en_np(p) for p in ps], "en") + "."
    rel = []
    for a, b in zip(ps, ps[1:]):
        verb = "are" if a.category_info.plural else "is"
        rel.append(f"The {a.colour_info.name.en} {a.category_info.name.en} {verb} to the left "
                   f"of the {b.colour_info.name.en} {b.category_info.name.en}.")
    return " ".join([text] + rel)


def _vqa(products: list[Product], positions: list[str], lang: str) -> list[tuple[str, str, str]]:
    qa: list[tuple[str, str, str]] = []
    for p, pos in zip(products, positions):
        zh, en = p.names("zh"), p.names("en")
        plural = p.category_info.plural
        if lang == "zh":
            qa += [
                (f"{zh['category']}是什么颜色的？", zh["colour"], "colour"),
                (f"{POSITION_NAMES['zh'][pos]}的商品是什么？", zh["category"], "category"),
                (f"{zh['category']}是什么材质的？", zh["material"], "material"),
                (f"{zh['colour']}{zh['category']}在画面的什么位置？", POSITION_NAMES["zh"][pos],
                 "position"),
            ]
        else:
            be = "are" if plural else "is"
            qa += [
                (f"What colour {be} the {en['category']}?", en["colour"], "colour"),
                (f"What is the product {_EN_POSITION_PHRASE[pos]}?", en["category"], "category"),
                (f"What material {be} the {en['category']} made of?", en["material"], "material"),
                (f"Where {be} the {en['colour']} {en['category']} in the picture?",
                 POSITION_NAMES["en"][pos], "position"),
            ]
    q = "图中有几件商品？" if lang == "zh" else "How many products are in the picture?"
    qa.append((q, str(len(products)), "count"))
    return qa


def _referring(products: list[Product], positions: list[str], boxes: list[list[int]],
               lang: str) -> list[tuple[str, list[int]]]:
    out = []
    for p, pos, box in zip(products, positions, boxes):
        if lang == "zh":
            out += [(f"{_zh_np(p, False)}", box), (f"{_zh_np(p)}", box),
                    (f"{POSITION_NAMES['zh'][pos]}的商品", box)]
        else:
            en = p.names("en")
            out += [(f"the {en['colour']} {en['category']}", box),
                    (f"the {en['colour']} {en['material']} {en['category']}", box),
                    (f"the product {_EN_POSITION_PHRASE[pos]}", box)]
    return out


# ---------------------------------------------------------------------------- examples
def image_example(seed: int, split: str, index: int, *, size: int = 64,
                  lang: str = "zh", num_objects: Optional[int] = None) -> dict:
    """One Shop World image with its labels.

    Returns a dict with ``image`` (uint8 [size, size, 3]), ``boxes`` (int [n, 4] pixel
    ``[x0, y0, x1, y1]``, exclusive ends), ``boxes_norm`` (float [n, 4] in 0..1),
    ``categories`` / ``colours`` / ``materials`` (key lists), ``positions`` ("left" /
    "middle" / "right" thirds), ``product_ids`` (every object), ``product_id`` (the first
    object, ``product(seed, split, index)``), ``caption``, ``vqa`` (list of
    ``(question, answer, type)``, types colour / category / material / position / count),
    ``referring`` (list of ``(phrase, box)``), ``lang`` and ``size``. ``(image, caption)`` is the
    retrieval pair. ``num_objects`` (1..3) overrides the drawn count.
    """
    check_lang(lang)
    size = check_size(size)
    rng = kind_rng(seed, split, index, "image")
    first = world.product(seed, split, index)
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    if num_objects is not None:
        if not 1 <= int(num_objects) <= MAX_OBJECTS:
            raise ValueError(f"num_objects must be in [1, {MAX_OBJECTS}], got {num_objects}")
        n = int(num_objects)
    products = [first] + _other_products(seed, split, index, first, n - 1, rng)
    slots, gboxes = _draw_layout(n, rng)
    bg_base = background_colour([p.colour for p in products], rng)
    # Size-dependent draws come last, from a child stream, so the layout never depends on size.
    pix_rng = np.random.default_rng(rng.integers(2 ** 63 - 1))

    img = render_background(bg_base, size, pix_rng)
    boxes = []
    for p, g in zip(products, gboxes):
        x0, y0, x1, y1 = (_px(c, size) for c in g)
        tex = material_texture(p.material, y1 - y0, x1 - x0, pix_rng, scale=size / 64.0)
        rgb, mask = glyph_patch(p.category, p.colour, tex)
        region = img[y0:y1, x0:x1]
        region[mask] = rgb[mask]
        boxes.append([x0, y0, x1, y1])
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    positions = [POSITIONS[s] for s in slots]
    return {
        "image": image,
        "boxes": np.asarray(boxes, np.int32),
        "boxes_norm": np.asarray(boxes, np.float32) / np.float32(size),
        "categories": [p.category for p in products],
        "colours": [p.colour for p in products],
        "materials": [p.material for p in products],
        "positions": positions,
        "product_ids": [p.product_id for p in products],
        "product_id": first.product_id,
        "background": bg_base,
        "caption": image_caption(products, positions, lang),
        "vqa": _vqa(products, positions, lang),
        "referring": _referring(products, positions, boxes, lang),
        "lang": lang,
        "size": size,
    }
