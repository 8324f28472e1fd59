"""M6's Shop World tasks read what they say: pictures of one product with its own title and
description, the split of the description for multimodality-to-text, BART infilling."""
import numpy as np

from plug_jax.data import shop_world
from plug_jax.data.shop_world import spans


def _first(name, n=3, split="validation"):
    import seqio

    import plug_jax.tasks  # noqa: F401  (registers every task)
    ds = seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=False, seed=0)
    return [dict(ex) for ex in ds.take(n).as_numpy_iterator()]


def _index(ex) -> int:
    """The world index of an example (TFDS stores the records shuffled)."""
    seed, split, index = ex["product_id"].decode().split("-")
    assert (seed, split) == ("sw0", "validation")
    return int(index)


def test_title_and_description_tasks_pair_each_picture_with_its_own_product():
    from tasks import m6
    vocab = m6.vocabulary("en")
    for kind in ("title", "description"):
        exs = _first(m6.TASKS[(kind, "en")])
        for ex in exs:
            i = _index(ex)
            p = shop_world.world.product(0, "validation", i)
            want = (spans.title_of(p, "en") if kind == "title"
                    else spans.description_of(p, "en")["description"])
            assert vocab.decode(ex["targets"].tolist()) == want
            assert ex["targets"][-1] == 1  # EOS
            picture = shop_world.image_example(0, "validation", i, size=64, lang="en",
                                               num_objects=1)["image"]
            pixels = (picture / 255.0 - np.array([0.48145466, 0.4578275, 0.40821073])) \
                / np.array([0.26862954, 0.26130258, 0.27577711])
            np.testing.assert_allclose(ex["image"], pixels, atol=1e-5)


def test_mm2text_splits_the_description_and_denoise_masks_spans():
    from tasks import m6
    vocab = m6.vocabulary("en")
    exs = _first(m6.TASKS[("mm2text", "en")])
    for ex in exs:
        p = shop_world.world.product(0, "validation", _index(ex))
        whole = vocab.encode(spans.description_of(p, "en")["description"])
        n = len(whole)
        got = ex["inputs"].tolist()[:-1] + ex["targets"].tolist()[:-1]  # both end in EOS
        assert got == whole
        assert np.ceil(0.2 * n) <= len(ex["inputs"]) - 1 <= np.floor(0.8 * n)
        assert "image" in ex
    exs = _first(m6.TASKS[("denoise", "en")])
    mask_id = vocab.vocab_size - 1
    for ex in exs:
        assert "image" not in ex
        inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
        assert mask_id in inputs and mask_id not in targets
        assert len(inputs) < len(targets)  # spans collapsed to one mask each
        kept = [t for t in inputs if t != mask_id]
        it = iter(targets)  # the unmasked tokens keep their order
        assert all(any(t == u for u in it) for t in kept)


def test_title128_task_draws_the_same_products_at_twice_the_size():
    from tasks import m6
    small = {_index(ex): ex for ex in _first(m6.TASKS[("title", "en")], n=4)}
    matched = 0
    for ex in _first(m6.TITLE128_TASKS["en"], n=4):
        i = _index(ex)
        assert ex["image"].shape == (128, 128, 3)
        picture = shop_world.image_example(0, "validation", i, size=128, lang="en",
                                           num_objects=1)["image"]
        pixels = (picture / 255.0 - np.array([0.48145466, 0.4578275, 0.40821073])) \
            / np.array([0.26862954, 0.26130258, 0.27577711])
        np.testing.assert_allclose(ex["image"], pixels, atol=1e-5)
        if i in small:  # the same title, and the same layout drawn at twice the size
            np.testing.assert_array_equal(ex["targets"], small[i]["targets"])
            pooled = ex["image"].reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
            other = next(e for j, e in small.items() if j != i)["image"]
            assert (np.abs(pooled - small[i]["image"]).mean()
                    < 0.5 * np.abs(pooled - other).mean())
            matched += 1
    assert matched  # both configs store the records in the same (shuffled) order
