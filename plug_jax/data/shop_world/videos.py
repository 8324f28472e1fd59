"""Shop World videos: one product glyph that moves, turns or changes colour at known frames.

Pure numpy (never imports TensorFlow or PIL). ``video_example(seed, split, index)`` shows
``product(seed, split, index)`` (its category glyph, colour and material texture, see
``images.py``) in a square box on a static background; two or three *distinct* events from
``EVENT_TYPES`` happen one after the other:

  * ``move_left`` / ``move_right``: the box slides a quarter of the frame over 1..N frames;
  * ``turn``: the glyph (and its texture) rotates 90 degrees clockwise, in one frame;
  * ``change_colour``: the glyph is redrawn in another colour, in one frame.

An event ``{"start_frame": s, "end_frame": e}`` means that every frame ``s..e`` differs from
the frame before it; every frame outside the events is pixel-identical to the one before it
(the background is static, without per-frame noise), and consecutive events are separated by
at least one static frame. All draws come from ``kind_rng(seed, split, index, "video")``
before any text is rendered, so frames do not depend on ``lang``.
"""
from __future__ import annotations

from typing import Union

import numpy as np

from plug_jax.data.shop_world import world
from plug_jax.data.shop_world.images import (
    GRID, background_colour, check_size, glyph_patch, material_texture, render_background)
from plug_jax.data.shop_world.text import kind_rng
from plug_jax.data.shop_world.world import check_lang

EVENT_TYPES = ("move_left", "move_right", "turn", "change_colour")
NUM_FRAMES = (8, 16)
BOX_UNITS = 11            # square product box, in 1/32 of the frame
MOVE_UNITS = 8            # displacement of one move event, in 1/32 of the frame
MIN_COLOUR_CHANGE = 120.0  # RGB distance between the old and the new colour

# Verb phrases (no subject) per event type; {old}/{new} are colour names.
_VERB = {
    "zh": {"move_left": "向左移动", "move_right": "向右移动", "turn": "旋转了九十度",
           "change_colour": "从{old}变成了{new}"},
    "en": {"move_left": "moved to the left", "move_right": "moved to the right",
           "turn": "rotated ninety degrees", "change_colour": "changed from {old} to {new}"},
}


def _draw_timeline(num_frames: int, durations: list[int], rng: np.random.Generator):
    """Start/end frames: frame 0 static, >= 1 static frame between events, slack spread."""
    need = 1 + sum(durations) + (len(durations) - 1)
    slack = num_frames - need
    assert slack >= 0, (num_frames, durations)
    # Spread the slack over the lead-in, the gaps and the tail.
    extra = np.bincount(rng.integers(0, len(durations) + 1, slack), minlength=len(durations) + 1)
    spans, t = [], 1 + int(extra[0])
    for k, d in enumerate(durations):
        spans.append((t, t + d - 1))
        t += d + 1 + int(extra[k + 1])
    return spans


def _event_phrase(ev: dict, lang: str) -> str:
    names = {c.key: c.name.get(lang) for c in world.COLOURS}
    return _VERB[lang][ev["type"]].format(old=names.get(ev.get("from_colour"), ""),
                                          new=names.get(ev.get("to_colour"), ""))


def _subject(p: world.Product, lang: str, with_colour: bool) -> str:
    n = p.names(lang)
    if lang == "zh":
        return (n["colour"] if with_colour else "") + n["category"]
    return "the " + ((n["colour"] + " ") if with_colour else "") + n["category"]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def video_caption(p: world.Product, events: list[dict], lang: str) -> str:
    phrases = [_event_phrase(e, lang) for e in events]
    subj = _subject(p, lang, True)
    if lang == "zh":
        conn = ["先", "然后", "最后"] if len(events) == 3 else ["先", "然后"]
        return "视频中，" + subj + "，".join(c + ph for c, ph in zip(conn, phrases)) + "。"
    if len(events) == 3:
        body = f"first {phrases[0]}, then {phrases[1]}, and finally {phrases[2]}"
    else:
        body = f"first {phrases[0]} and then {phrases[1]}"
    return f"In the video, {subj} {body}."


def sub_caption(p: world.Product, ev: dict, lang: str) -> str:
    """One event as a sentence fragment ('马克杯向左移动' / 'the mug moved to the left')."""
    return _subject(p, lang, False) + ("" if lang == "zh" else " ") + _event_phrase(ev, lang)


def _temporal_qa(subs: list[str], lang: str) -> list[tuple[str, str, str]]:
    end = "。" if lang == "zh" else "."
    ans = [_cap(s) + end if lang == "en" else s + end for s in subs]
    if lang == "zh":
        qa = [("视频里最先发生了什么？", ans[0], "first"),
              ("视频里最后发生了什么？", ans[-1], "last")]
        qa += [(f"{subs[i]}之后发生了什么？", ans[i + 1], "after")
               for i in range(len(subs) - 1)]
        qa += [(f"{subs[i]}之前发生了什么？", ans[i - 1], "before")
               for i in range(1, len(subs))]
    else:
        qa = [("What happened first in the video?", ans[0], "first"),
              ("What happened last in the video?", ans[-1], "last")]
        qa += [(f"What happened after {subs[i]}?", ans[i + 1], "after")
               for i in range(len(subs) - 1)]
        qa += [(f"What happened before {subs[i]}?", ans[i - 1], "before")
               for i in range(1, len(subs))]
    return qa


def video_example(seed: int, split: str, index: int, *, num_frames: int = 8, size: int = 64,
                  lang: str = "zh") -> dict:
    """One Shop World video with its labels.

    Returns a dict with ``frames`` (uint8 [T, size, size, 3]), ``boxes`` (int [T, 4] pixel box
    of the product per frame), ``events`` (ordered list of dicts with ``type``,
    ``start_frame``, ``end_frame``, ``caption`` and for ``change_colour`` ``from_colour`` /
    ``to_colour``), ``caption`` (states the events in order), ``moments`` (list of dicts
    ``{"caption", "start_frame", "end_frame"}``), ``temporal_qa`` (list of
    ``(question, answer, type)``, types first / last / after / before), ``product_id``,
    ``category``, ``colour`` (initial), ``material``, ``lang``, ``size``, ``num_frames``.
    ``(frames, caption)`` is the video-text retrieval pair.
    """
    check_lang(lang)
    size = check_size(size)
    if int(num_frames) not in NUM_FRAMES:
        raise ValueError(f"num_frames must be one of {NUM_FRAMES}, got {num_frames}")
    T = int(num_frames)
    rng = kind_rng(seed, split, index, "video")
    p = world.product(seed, split, index)

    # --- all draws (size- and lang-independent first) ---
    n_events = int(rng.integers(2, 4))
    types = [EVENT_TYPES[int(k)] for k in rng.permutation(len(EVENT_TYPES))[:n_events]]
    max_move = 2 if T == 8 else 4
    durations = [int(rng.integers(1, max_move + 1)) if t.startswith("move") else 1
                 for t in types]
    spans = _draw_timeline(T, durations, rng)
    colours = [p.colour]
    events = []
    for t, (s, e) in zip(types, spans):
        ev = {"type": t, "start_frame": s, "end_frame": e}
        if t == "change_colour":
            old = np.asarray(world.COLOUR_BY_KEY[p.colour].rgb, float)
            far = [c.key for c in world.COLOURS
                   if np.linalg.norm(np.asarray(c.rgb, float) - old) >= MIN_COLOUR_CHANGE]
            new = far[int(rng.integers(len(far)))]
            ev.update(from_colour=p.colour, to_colour=new)
            colours.append(new)
        events.append(ev)
    # Horizontal offsets (grid units) after each move; pick a start that keeps them in frame.
    offs, o = [0], 0
    for t in types:
        if t.startswith("move"):
            o += MOVE_UNITS if t == "move_right" else -MOVE_UNITS
            offs.append(o)
    lo, hi = -min(offs), GRID - BOX_UNITS - max(offs)
    gx0 = int(rng.integers(lo, hi + 1))
    gy0 = int(rng.integers(1, GRID - BOX_UNITS))
    bg_base = background_colour(colours, rng)
    pix_rng = np.random.default_rng(rng.integers(2 ** 63 - 1))

    # --- per-frame state ---
    px = lambda g: g * size / GRID  # noqa: E731
    side = int(round(px(BOX_UNITS)))
    x = float(px(gx0))
    y0 = int(round(px(gy0)))
    rot, colour = 0, p.colour
    states = []
    for f in range(T):
        for ev in events:
            if ev["start_frame"] <= f <= ev["end_frame"]:
                if ev["type"].startswith("move"):
                    d = ev["end_frame"] - ev["start_frame"] + 1
                    x += (1 if ev["type"] == "move_right" else -1) * px(MOVE_UNITS) / d
                elif ev["type"] == "turn":
                    rot += 1
                else:
                    colour = ev["to_colour"]
        states.append((int(round(x)), rot, colour))

    background = render_background(bg_base, size, pix_rng)
    texture = material_texture(p.material, side, side, pix_rng, scale=size / 64.0)
    patches: dict = {}
    frames = np.empty((T, size, size, 3), np.uint8)
    boxes = np.empty((T, 4), np.int32)
    for f, (x0, r, c) in enumerate(states):
        if (r, c) not in patches:
            rgb, mask = glyph_patch(p.category, c, texture)
            # np.rot90 with k=-1 turns clockwise; texture and mask turn together.
            patches[(r, c)] = (np.rot90(rgb, -r), np.rot90(mask, -r))
        rgb, mask = patches[(r, c)]
        img = background.copy()
        region = img[y0:y0 + side, x0:x0 + side]
        region[mask] = rgb[mask]
        frames[f] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        boxes[f] = (x0, y0, x0 + side, y0 + side)

    # --- text ---
    subs = [sub_caption(p, ev, lang) for ev in events]
    for ev, sc in zip(events, subs):
        ev["caption"] = sc
    return {
        "frames": frames,
        "boxes": boxes,
        "events": events,
        "caption": video_caption(p, events, lang),
        "moments": [{"caption": sc, "start_frame": ev["start_frame"],
                     "end_frame": ev["end_frame"]} for ev, sc in zip(events, subs)],
        "temporal_qa": _temporal_qa(subs, lang),
        "product_id": p.product_id,
        "category": p.category,
        "colour": p.colour,
        "material": p.material,
        "background": bg_base,
        "lang": lang,
        "size": size,
        "num_frames": T,
    }


def shuffle_frames(frames: np.ndarray, rng: Union[np.random.Generator, int]) -> np.ndarray:
    """Control input: the frames in a random order that differs from the original clip
    (whenever the clip has two different frames)."""
    frames = np.asarray(frames)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    T = frames.shape[0]
    if T < 2:
        return frames.copy()
    # Redraw (a bounded number of times) while the order, or the resulting clip, is unchanged
    # (swapping two identical static frames would not be a control at all).
    for _ in range(100):
        perm = rng.permutation(T)
        if not np.array_equal(perm, np.arange(T)) and not np.array_equal(frames[perm], frames):
            break
    return frames[perm]
