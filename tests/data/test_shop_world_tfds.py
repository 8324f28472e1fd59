"""The shop_world TFDS builder: same examples as the Python generator, read by seqio."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def tfds_env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("plug_jax_cache")
    mp.setenv("PLUG_JAX_CACHE", str(cache))
    import plug_jax.tasks  # noqa: F401
    from plug_jax.data import shop_world_tfds
    d = shop_world_tfds.prepare("text_zh")
    yield shop_world_tfds, d
    mp.undo()


def test_tfds_examples_equal_the_generator(tfds_env):
    import tensorflow_datasets as tfds

    from plug_jax.data import shop_world as sw
    mod, d = tfds_env
    assert d.startswith(str(__import__("os").environ["PLUG_JAX_CACHE"]))
    builder = tfds.builder("shop_world/text_zh", data_dir=d)
    assert builder.info.splits["train"].num_examples == mod.TEXT_SPLIT_SIZES["train"]
    assert builder.info.splits["test"].num_examples == mod.TEXT_SPLIT_SIZES["test"]
    ds = builder.as_dataset(split="test[:40]", shuffle_files=False)
    by_id = {ex["product_id"].decode(): ex for ex in tfds.as_numpy(ds)}
    assert len(by_id) == 40
    for pid, ex in list(by_id.items())[:40]:
        index = int(pid.rsplit("-", 1)[1])
        ref = sw.text_example(0, "test", index, "zh")
        assert ex["title"].decode() == ref["title"]
        assert ex["description"].decode() == ref["description"]
        assert ex["lm_document"].decode() == sw.format_lm_document(ref)
        assert int(ex["label"]) == ref["label"] and int(ex["price"]) == ref["price"]
        assert [s.decode() for s in ex["description_sentences"]] == \
            list(ref["description_sentences"])
    # The test split holds only held-out attribute combinations.
    heldout = sw.heldout_combinations()
    assert all((ex["category"].decode(), ex["colour"].decode(), ex["material"].decode())
               in heldout for ex in by_id.values())


def test_seqio_task_reads_the_prepared_tfds_files(tfds_env):
    import seqio

    from plug_jax.data import pipeline
    task = seqio.get_mixture_or_task("shop_lm_zh_v1")
    assert isinstance(task.source, seqio.TfdsDataSource)
    it = pipeline.get_batch_iterator("shop_lm_zh_v1", {"targets": 128}, "validation", 4,
                                     shuffle=False, pack=False)
    b = next(it)
    vocab = pipeline.task_vocabulary("shop_lm_zh_v1")
    text = vocab.decode([int(t) for t in b["decoder_target_tokens"][0] if t > 1])
    from plug_jax.data import shop_world as sw
    docs = {sw.lm_document(0, "validation", i, "zh")[:20] for i in range(1000)}
    assert text[:20] in docs


def test_unknown_config_is_one_line(tfds_env):
    mod, _ = tfds_env
    with pytest.raises(ValueError, match="unknown shop_world config 'images_9'; use one of"):
        mod.prepare("images_9")


def test_every_config_encodes_its_examples(tfds_env):
    """Each config's example function fits its TFDS features (without preparing it)."""
    mod, _ = tfds_env
    for name, spec in mod.CONFIG_SPECS.items():
        features = spec.features()
        for split in ("train", "test"):
            ex = spec.example(0, split, 3)
            assert set(ex) == set(features.keys()), name
            features.encode_example(ex)  # raises on a shape or dtype mismatch


def test_media_and_query_configs_hold_the_generator_labels(tfds_env):
    from plug_jax.data import shop_world as sw
    mod, _ = tfds_env
    img = mod.CONFIG_SPECS["images_64"].example(0, "test", 5)
    ref = sw.image_example(0, "test", 5, size=64, lang="en")
    assert np.array_equal(img["image"], ref["image"]) and img["caption_en"] == ref["caption"]
    assert img["image"].shape == (64, 64, 3)
    vid = mod.CONFIG_SPECS["videos_8"].example(0, "train", 2)
    assert vid["frames"].shape == (8, 64, 64, 3)
    assert list(vid["event_start"]) == sorted(vid["event_start"])
    langs = [mod.CONFIG_SPECS["queries"].example(0, "train", i)["lang"] for i in range(12)]
    assert langs == list(sw.QUERY_LANGS) * 2


def test_queries_config_prepares_and_reads_back(tfds_env):
    import tensorflow_datasets as tfds
    mod, _ = tfds_env
    d = mod.prepare("queries")
    ds = tfds.builder("shop_world/queries", data_dir=d).as_dataset(split="validation")
    rows = list(tfds.as_numpy(ds))
    assert len(rows) == mod.CONFIG_SPECS["queries"].split_sizes["validation"]
    from plug_jax.data import shop_world as sw
    assert {r["lang"].decode() for r in rows} == set(sw.QUERY_LANGS)
    assert {int(r["intent_label"]) for r in rows} == set(range(len(sw.INTENTS)))


def test_xl_configs_extend_their_base_at_the_same_indices(tfds_env):
    """``images_64_xl`` / ``videos_8_xl`` hold more pictures, and at the indices their base
    config has, the same ones; the learning experiments' tasks read them (no files built)."""
    import seqio
    mod, _ = tfds_env
    for xl, base, media in (("images_64_xl", "images_64", "image"),
                            ("videos_8_xl", "videos_8", "frames")):
        big, small = mod.CONFIG_SPECS[xl], mod.CONFIG_SPECS[base]
        assert big.split_sizes["train"] >= 5 * small.split_sizes["train"]
        assert big.split_sizes["test"] >= 500
        for split, i in (("train", 11), ("validation", 4), ("test", 7)):
            a, b = big.example(0, split, i), small.example(0, split, i)
            assert np.array_equal(a[media], b[media]) and a["caption_en"] == b["caption_en"]
    assert mod.CONFIG_SPECS["images_64_xl"].split_sizes["train"] == 20_000
    for name in ("mplug_shop_vqa_xl_en_v1", "mplug_shop_captions_xl_en_v1",
                 "mplug_shop_grounding_xl_en_v1", "clip_shop_captions_xl_en_v1"):
        assert seqio.get_mixture_or_task(name).source._shop_config == "images_64_xl", name
