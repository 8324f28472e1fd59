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
