"""Shop World images and videos: determinism, geometry, pixel/label consistency, controls."""
import hashlib
import itertools
import re
import subprocess
import sys

import numpy as np
import pytest

from plug_jax.data.shop_world import images as im
from plug_jax.data.shop_world import videos as vd
from plug_jax.data.shop_world import world

SPLITS = ("train", "validation", "test")


def _examples(n=12, **kw):
    for split in SPLITS:
        for i in range(n):
            yield split, i, im.image_example(0, split, i, **kw)


def _rgb(colour):
    return np.asarray(world.COLOUR_BY_KEY[colour].rgb, float)


def _obj_index(names, text, lang):
    """Index of the unique object whose category name occurs (as a word) in ``text``."""
    hits = [k for k, name in enumerate(names)
            if (name in text if lang == "zh" else re.search(rf"\b{re.escape(name)}\b", text))]
    assert len(hits) == 1, (text, names)
    return hits[0]


# ---------------------------------------------------------------------------- images
def test_image_is_deterministic_and_independent_of_lang():
    for split, i, ex in _examples(6, lang="en"):
        again = im.image_example(0, split, i, lang="en")
        zh = im.image_example(0, split, i, lang="zh")
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (64, 64, 3)
        np.testing.assert_array_equal(ex["image"], again["image"])
        np.testing.assert_array_equal(ex["image"], zh["image"])
        assert ex["vqa"] == again["vqa"] and ex["caption"] == again["caption"]
    a, b = im.image_example(0, "train", 1)["image"], im.image_example(0, "train", 2)["image"]
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, im.image_example(1, "train", 1)["image"])


def test_image_bytes_identical_in_fresh_process_without_tensorflow():
    code = ("import sys, hashlib; from plug_jax.data.shop_world import images, videos;"
            "print(hashlib.sha256(images.image_example(3, 'test', 11).get('image')"
            ".tobytes()).hexdigest());"
            "print(hashlib.sha256(videos.video_example(3, 'test', 11)['frames']"
            ".tobytes()).hexdigest());"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == hashlib.sha256(im.image_example(3, "test", 11)["image"].tobytes()).hexdigest()
    assert out[1] == hashlib.sha256(
        vd.video_example(3, "test", 11)["frames"].tobytes()).hexdigest()
    assert out[2] == "False"


def test_boxes_inside_image_non_overlapping_and_positions_exact():
    seen_n = set()
    for split, i, ex in _examples():
        boxes, n = ex["boxes"], len(ex["categories"])
        seen_n.add(n)
        assert boxes.shape == (n, 4) and 1 <= n <= 3
        assert len(set(ex["categories"])) == n           # referring phrases are unique
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        np.testing.assert_allclose(ex["boxes_norm"], boxes / 64.0, atol=1e-6)
        for a, b in itertools.combinations(boxes, 2):
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        for box, pos in zip(boxes, ex["positions"]):
            third = im.POSITIONS.index(pos)
            assert third * 64 / 3 - 1 <= box[0] and box[2] <= (third + 1) * 64 / 3 + 1
    assert seen_n == {1, 2, 3}


def test_box_centres_show_product_colour_and_background_is_far():
    for split, i, ex in _examples():
        img = ex["image"].astype(float)
        outside = np.ones(img.shape[:2], bool)
        for box, colour in zip(ex["boxes"], ex["colours"]):
            x0, y0, x1, y1 = box
            outside[y0:y1, x0:x1] = False
            centre = img[(y0 + y1) // 2, (x0 + x1) // 2]
            assert np.abs(centre - _rgb(colour)).max() <= im.TEXTURE_AMPLITUDE + 1, (split, i)
        bg = img[outside]
        for colour in ex["colours"]:
            assert np.sqrt(((bg - _rgb(colour)) ** 2).sum(-1)).min() > 60, (split, i, colour)


def test_material_texture_modulates_pixels():
    ex = im.image_example(0, "train", 0, num_objects=1, size=128)
    x0, y0, x1, y1 = ex["boxes"][0]
    mask = im.glyph_mask(ex["categories"][0], y1 - y0, x1 - x0)
    pix = ex["image"][y0:y1, x0:x1][mask].astype(float)
    assert pix.std(0).max() > 2.0                 # textured, not flat
    textures = {m.key: im.material_texture(m.key, 24, 24, np.random.default_rng(0))
                for m in world.MATERIALS}
    for a, b in itertools.combinations(textures, 2):
        assert not np.allclose(textures[a], textures[b]), (a, b)


def test_category_glyph_masks_pairwise_different():
    masks = {c.key: im.glyph_mask(c.key, 32, 32) for c in world.CATEGORIES}
    assert set(masks) == set(im.GLYPHS)
    for m in masks.values():
        assert 0.2 < m.mean() < 0.8 and m[15:17, 15:17].all()   # covers the box centre
    for a, b in itertools.combinations(masks, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.85, (a, b, iou)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_vqa_answers_match_labels(lang):
    pos_names = im.POSITION_NAMES[lang]
    for split, i, ex in _examples(8, lang=lang):
        n = len(ex["categories"])
        cats = [world.CATEGORY_BY_KEY[c].name.get(lang) for c in ex["categories"]]
        cols = [world.COLOUR_BY_KEY[c].name.get(lang) for c in ex["colours"]]
        mats = [world.MATERIAL_BY_KEY[m].name.get(lang) for m in ex["materials"]]
        types = [t for _, _, t in ex["vqa"]]
        assert set(types) == {"colour", "category", "count", "position", "material"}
        for q, a, t in ex["vqa"]:
            if t == "count":
                assert a == str(n) == str(len(ex["boxes"]))
            elif t == "category":       # asked by position
                k = [j for j, p in enumerate(ex["positions"])
                     if (pos_names[p] if lang == "zh" else f"the {p}") in q]
                assert len(k) == 1 and a == cats[k[0]], (q, a)
            else:
                k = _obj_index(cats, q, lang)
                want = {"colour": cols[k], "material": mats[k],
                        "position": pos_names[ex["positions"][k]]}[t]
                assert a == want, (q, a)


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_referring_boxes_and_caption_order(lang):
    for split, i, ex in _examples(8, lang=lang):
        cats = [world.CATEGORY_BY_KEY[c].name.get(lang) for c in ex["categories"]]
        assert len(ex["referring"]) == 3 * len(cats)
        for phrase, box in ex["referring"]:
            if any(w in phrase for w in ("商品", "product")):
                k = [j for j, p in enumerate(ex["positions"])
                     if (im.POSITION_NAMES["zh"][p] if lang == "zh" else p) in phrase]
                assert len(k) == 1
                k = k[0]
            else:
                k = _obj_index(cats, phrase, lang)
                col = world.COLOUR_BY_KEY[ex["colours"][k]].name.get(lang)
                assert col in phrase
            assert list(box) == ex["boxes"][k].tolist()
        # The caption names the objects left to right.
        order = sorted(range(len(cats)), key=lambda j: ex["boxes"][j][0])
        at = [ex["caption"].index(cats[j]) for j in order]
        assert at == sorted(at), ex["caption"]


def test_sizes_scale_boxes_proportionally():
    for i in range(6):
        exs = {s: im.image_example(2, "train", i, size=s) for s in (32, 64, 224)}
        for s, ex in exs.items():
            assert ex["image"].shape == (s, s, 3)
            np.testing.assert_array_equal(ex["boxes"] * 64, exs[64]["boxes"] * s)
            np.testing.assert_allclose(ex["boxes_norm"], exs[64]["boxes_norm"], atol=1e-6)
            assert ex["categories"] == exs[64]["categories"] and ex["vqa"] == exs[64]["vqa"]
    with pytest.raises(ValueError):
        im.image_example(0, "train", 0, size=16)


def test_images_follow_split_combinations():
    held = world.heldout_combinations()
    for split, i, ex in _examples(15):
        assert ex["product_id"] == world.product(0, split, i).product_id == ex["product_ids"][0]
        for combo in zip(ex["categories"], ex["colours"], ex["materials"]):
            assert (combo in held) == (split == "test"), (split, combo)
            assert combo in world.split_combinations(split)


def test_blank_image_control():
    ex = im.image_example(0, "train", 0)
    blank = im.blank_image(ex["image"])
    assert blank.shape == ex["image"].shape and blank.dtype == np.uint8
    assert blank.std() == 0
    assert im.blank_image(np.zeros((8, 4, 4, 3), np.uint8)).shape == (8, 4, 4, 3)


# ---------------------------------------------------------------------------- videos
def _videos(n=10, **kw):
    for split in SPLITS:
        for i in range(n):
            for T in vd.NUM_FRAMES:
                yield split, i, vd.video_example(0, split, i, num_frames=T, **kw)


def test_video_deterministic_and_shapes():
    for split, i, ex in _videos(4):
        T = ex["num_frames"]
        assert ex["frames"].shape == (T, 64, 64, 3) and ex["frames"].dtype == np.uint8
        again = vd.video_example(0, split, i, num_frames=T, lang="en")
        np.testing.assert_array_equal(ex["frames"], again["frames"])
        assert ex["events"] == vd.video_example(0, split, i, num_frames=T)["events"]
    with pytest.raises(ValueError):
        vd.video_example(0, "train", 0, num_frames=10)


def test_video_events_ordered_and_frames_change_only_at_events():
    kinds = set()
    for split, i, ex in _videos():
        T, events = ex["num_frames"], ex["events"]
        assert 2 <= len(events) <= 3
        assert len({e["type"] for e in events}) == len(events)
        kinds |= {e["type"] for e in events}
        changing = set()
        prev_end = 0
        for e in events:
            assert e["type"] in vd.EVENT_TYPES
            assert prev_end < e["start_frame"] <= e["end_frame"] < T
            prev_end = e["end_frame"]
            changing |= set(range(e["start_frame"], e["end_frame"] + 1))
        diff = np.abs(np.diff(ex["frames"].astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
        for f in range(1, T):
            if f in changing:
                assert diff[f - 1] > 0.3, (split, i, f, diff)
            else:
                assert diff[f - 1] == 0, (split, i, f, diff)
        # Boxes follow the moves.
        for e in events:
            x_before = ex["boxes"][e["start_frame"] - 1][0]
            x_after = ex["boxes"][e["end_frame"]][0]
            if e["type"] == "move_left":
                assert x_after < x_before
            elif e["type"] == "move_right":
                assert x_after > x_before
            else:
                assert x_after == x_before
        assert (ex["boxes"][:, 0] >= 0).all() and (ex["boxes"][:, 2] <= 64).all()
    assert kinds == set(vd.EVENT_TYPES)


def test_video_colour_change_shows_new_colour():
    found = 0
    for split, i, ex in _videos(8):
        for e in ex["events"]:
            if e["type"] != "change_colour":
                continue
            found += 1
            for f, colour in ((e["start_frame"] - 1, e["from_colour"]),
                              (e["end_frame"], e["to_colour"])):
                x0, y0, x1, y1 = ex["boxes"][f]
                centre = ex["frames"][f, (y0 + y1) // 2, (x0 + x1) // 2].astype(float)
                assert np.abs(centre - _rgb(colour)).max() <= im.TEXTURE_AMPLITUDE + 1
    assert found > 0


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_video_captions_moments_and_temporal_qa(lang):
    for split, i, ex in _videos(6, lang=lang):
        events, subs = ex["events"], [m["caption"] for m in ex["moments"]]
        assert [(m["start_frame"], m["end_frame"]) for m in ex["moments"]] == [
            (e["start_frame"], e["end_frame"]) for e in events]
        # The caption states every event's verb phrase, in order.
        verbs = [vd._event_phrase(e, lang) for e in events]
        at = [ex["caption"].index(v) for v in verbs]
        assert at == sorted(at) and len(set(at)) == len(at), ex["caption"]
        norm = lambda s: s.rstrip("。.").lower()  # noqa: E731
        for q, a, t in ex["temporal_qa"]:
            if t == "first":
                assert norm(a) == norm(subs[0])
            elif t == "last":
                assert norm(a) == norm(subs[-1])
            else:
                k = [j for j, s in enumerate(subs) if s in q]
                assert len(k) == 1, q
                want = k[0] + 1 if t == "after" else k[0] - 1
                assert norm(a) == norm(subs[want]), (q, a)
        assert {t for *_, t in ex["temporal_qa"]} == {"first", "last", "after", "before"}


def test_video_products_follow_split():
    held = world.heldout_combinations()
    for split, i, ex in _videos(8):
        p = world.product(0, split, i)
        assert ex["product_id"] == p.product_id
        assert (ex["category"], ex["colour"], ex["material"]) == p.combination
        assert (p.combination in held) == (split == "test")


def test_shuffle_frames_control():
    ex = vd.video_example(0, "train", 0, num_frames=8)
    for s in range(10):
        sh = vd.shuffle_frames(ex["frames"], np.random.default_rng(s))
        assert sh.shape == ex["frames"].shape
        assert not np.array_equal(sh, ex["frames"])
        assert sorted(f.tobytes() for f in sh) == sorted(f.tobytes() for f in ex["frames"])
    np.testing.assert_array_equal(vd.shuffle_frames(ex["frames"], 3),
                                  vd.shuffle_frames(ex["frames"], 3))
