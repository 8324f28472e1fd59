"""mPLUG fine-tuning at the published sizes on the real-corpus readers: the lazy WordPiece
vocabulary, the COCO / VQA v2 tasks (tasks/mplug_corpora.py) on a tiny corpus written in
the published formats, and the three experiments' gin files."""
import importlib.util
import os
import pathlib

import numpy as np
import pytest

from plug_jax.data.wordpiece import LazyWordPieceVocabulary, WordPieceVocabulary

import tensorflow as tf  # noqa: E402  (configured by plug_jax.data)

_spec = importlib.util.spec_from_file_location(  # the published-format writers
    "plug_jax_tests_corpus_fixtures",
    pathlib.Path(__file__).resolve().parents[2] / "corpus_fixtures.py")
corpus_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus_fixtures)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                    "gin_configs")
# The published CLIP normalisation (OpenAI CLIP's preprocessing), written out here.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
RED, BLUE, GREY = (220, 20, 20), (20, 30, 220), (128, 128, 128)

# bert-base-uncased's layout of the special ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102,
# [MASK] 103), then the words these tests need, then filler up to its 30522 lines.
WORDS = ["a", "red", "blue", "grey", "square", "squares", "picture", "of", "on", "the",
         "what", "colour", "is", "it", "how", "many", "are", "there", "yes", "one", "1",
         "2", "?", ".", "##s", "sq", "##uare"]


def _bert_like_lines(words=WORDS, total=30522):
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(99)]
    lines += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(words)
    lines += [f"[filler{i}]" for i in range(total - len(lines))]
    return lines


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- lazy vocabulary
def test_lazy_vocabulary_touches_no_file_until_used(tmp_path):
    calls = []
    missing = tmp_path / "nowhere" / "vocab.txt"

    def where():
        calls.append(1)
        return str(missing)

    lazy = LazyWordPieceVocabulary(where, missing_hint="put the test vocab there")
    assert calls == [] and not lazy.loaded  # constructing does not even resolve the path
    assert lazy.vocab_file == str(missing) and not missing.exists()
    with pytest.raises(ValueError) as e:
        lazy.encode("a red square")
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg and "put the test vocab there" in msg
    assert not lazy.loaded
    # a failed load is not remembered: once the file is there, the next use reads it
    _write(missing, _bert_like_lines(total=200))
    assert list(lazy.encode("red")) == [105]
    assert lazy.loaded and lazy.eos_id == 102 and lazy.bos_id == 101 and lazy.pad_id == 0


def test_lazy_vocabulary_equals_the_eager_one(tmp_path):
    path = _write(tmp_path / "vocab.txt", _bert_like_lines(total=300))
    eager = WordPieceVocabulary(str(path))
    lazy = LazyWordPieceVocabulary(str(path))
    texts = ["A red square.", "How many squares are there?", "what colour is it? grey",
             "squares sq", "unknownword on the picture", ""]
    for text in texts:
        ids = list(eager.encode(text))
        assert list(lazy.encode(text)) == ids, text
        assert lazy.decode(ids) == eager.decode(ids)
    # hand-checked ids: "a"=104, "square"=108, "##s"=128, "."=127
    assert list(lazy.encode("A squares.")) == [104, 109, 127]
    assert list(lazy.encode("squares")) == [109]
    assert list(lazy.encode("squaress")) == [109, 128]
    got = lazy.encode_tf(tf.constant("How many squares are there?")).numpy().tolist()
    assert got == list(eager.encode("How many squares are there?"))
    ragged = lazy.encode_tf(tf.constant(["a red square", "yes"]))
    assert ragged.to_list() == [[104, 105, 108], [122]]
    decoded = lazy.decode_tf(tf.constant([[104, 105, 108, 102, 0]])).numpy().tolist()
    assert decoded == [b"a red square"]
    assert (lazy.vocab_size, lazy.eos_id, lazy.unk_id, lazy.pad_id) == (300, 102, 100, 0)
    assert lazy == eager and lazy == LazyWordPieceVocabulary(str(path))
    assert lazy != LazyWordPieceVocabulary(str(path), do_lower_case=False)


def test_lazy_vocabulary_expected_size(tmp_path):
    path = tmp_path / "vocab.txt"
    lazy = LazyWordPieceVocabulary(str(path), expected_vocab_size=30522)
    assert lazy.vocab_size == 30522 and not lazy.loaded  # answered without the file
    _write(path, _bert_like_lines(total=500))
    with pytest.raises(ValueError, match="gives 500 ids but 30522 are expected"):
        lazy.eos_id


def test_mplug_vocab_path_and_missing_file_message(tmp_path, monkeypatch):
    from plug_jax.tasks import mplug_corpora
    monkeypatch.setenv("PLUG_JAX_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("PLUG_JAX_MPLUG_VOCAB", raising=False)
    assert mplug_corpora.mplug_vocab_path() == str(tmp_path / "mplug" / "vocab.txt")
    vocab = mplug_corpora.mplug_vocabulary()
    with pytest.raises(ValueError) as e:
        vocab.encode("a")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "mplug" / "vocab.txt") in msg
    assert "bert-base-uncased" in msg and "PLUG_JAX_MPLUG_VOCAB" in msg
    monkeypatch.setenv("PLUG_JAX_MPLUG_VOCAB", str(tmp_path / "elsewhere.txt"))
    assert mplug_corpora.mplug_vocab_path() == str(tmp_path / "elsewhere.txt")


# ---------------------------------------------------------------- tiny corpus
COCO = [  # (folder, cocoid, Karpathy split, colour, raw captions)
    ("val2014", 11, "train", RED, ["A red square.", "A picture of a red square."]),
    ("train2014", 12, "restval", BLUE, ["A blue square on the picture."]),
    ("val2014", 13, "val", GREY, ["A grey square."]),
]
VQA = {  # subset -> [(image_id, colour, question_id, question, mc answer, ten answers, type)]
    # the first answer (by answer_id) is not the most frequent one (the target)
    "train2014": [(21, RED, 2100, "What colour is it?", "red", ["blue"] * 2 + ["red"] * 8,
                   "other"),
                  (22, BLUE, 2200, "How many squares are there?", "1",
                   ["1"] * 6 + ["one"] * 4, "number")],
    "val2014": [(23, GREY, 2300, "Is it grey?", "yes", ["yes"] * 10, "yes/no")],
}


def _write_coco(root):
    corpus_fixtures.write_coco(root, COCO, height=12, width=16, quality=100)


def _write_vqa(root):
    corpus_fixtures.write_vqa(root, VQA, height=12, width=16, quality=100)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mplug_corpora")
    _write_coco(root / "coco")
    _write_vqa(root / "vqa_v2")
    vocab = _write(root / "checkpoint" / "vocab" / "vocab.txt", _bert_like_lines())
    mp = pytest.MonkeyPatch()
    mp.setenv("PLUG_JAX_DATA_DIR", str(root))
    mp.setenv("PLUG_JAX_MPLUG_VOCAB", str(vocab))
    from plug_jax.tasks import mplug_corpora
    yield root, mplug_corpora
    mp.undo()


def _examples(name, split, lengths):
    import seqio
    ds = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length=lengths, split=split, shuffle=False, use_cached=False,
        num_epochs=1, try_in_mem_cache=False)
    return list(ds.as_numpy_iterator())


def _clip(colour):
    return (np.array(colour) / 255.0 - MEAN) / STD


def _check_image(image, size, colour):
    assert image.shape == (size, size, 3) and image.dtype == np.float32
    # JPEG + bicubic resize of a solid colour: within 6 grey levels of it, after normalising
    tol = 6 / 255.0 / STD.min()
    np.testing.assert_allclose(image.reshape(-1, 3).mean(0), _clip(colour), atol=tol)
    assert np.abs(image - _clip(colour)).max() <= tol


def test_vqa_task_examples(corpus):
    _, m = corpus
    vocab = m.VOCABULARY
    rows = _examples("mplug_vqav2_384_en_v1", "train", {"inputs": 40, "targets": 10})
    assert [int(r["question_id"]) for r in rows] == [2100, 2200]
    want = [("what colour is it?", "red", RED), ("how many squares are there?", "1", BLUE)]
    for r, (question, answer, colour) in zip(rows, want):
        _check_image(r["image"], 384, colour)
        assert r["inputs"].dtype == np.int32 and r["targets"].dtype == np.int32
        assert r["inputs"][0] == 101 and r["inputs"][-1] == 102  # [CLS] ... [SEP]
        assert r["targets"][-1] == 102
        assert vocab.decode(r["inputs"].tolist()) == question
        assert vocab.decode(r["targets"].tolist()) == answer
    assert rows[0]["answers"].tolist() == [b"blue"] * 2 + [b"red"] * 8
    val = _examples("mplug_vqav2_336_en_v1", "validation", {"inputs": 40, "targets": 10})
    assert len(val) == 1 and vocab.decode(val[0]["targets"].tolist()) == "yes"
    _check_image(val[0]["image"], 336, GREY)


def test_caption_task_examples(corpus):
    _, m = corpus
    vocab = m.VOCABULARY
    rows = _examples("mplug_coco_caption_336_en_v1", "train", {"targets": 40})
    got = [(int(r["image_id"]), vocab.decode(r["targets"].tolist())) for r in rows]
    assert got == [(11, "a red square."), (11, "a picture of a red square."),
                   (12, "a blue square on the picture.")]
    for r, colour in zip(rows, (RED, RED, BLUE)):
        _check_image(r["image"], 336, colour)
        assert r["targets"][-1] == 102 and r["inputs"] == b""
    val = _examples("mplug_coco_caption_384_en_v1", "validation", {"targets": 40})
    assert [vocab.decode(r["targets"].tolist()) for r in val] == ["a grey square."]
    _check_image(val[0]["image"], 384, GREY)


def test_image_text_converter_batches(corpus):
    from plug_jax.trainer import loop
    _, m = corpus
    cfg = loop.DatasetConfig("mplug_vqav2_336_en_v1",
                             {"image": (336, 336, 3), "inputs": 12, "targets": 4},
                             split="train", batch_size=2, shuffle=False,
                             converter="image_text")
    b = next(iter(loop._batch_iterator(cfg, repeat=False)))
    assert b["image"].shape == (2, 336, 336, 3) and b["image"].dtype == np.float32
    _check_image(b["image"][0], 336, RED)
    red = m.VOCABULARY.token_to_id("red")
    assert red == 105
    np.testing.assert_array_equal(b["decoder_target_tokens"][0], [red, 102, 0, 0])
    np.testing.assert_array_equal(b["decoder_input_tokens"][0], [0, red, 102, 0])
    np.testing.assert_array_equal(b["decoder_loss_weights"][0], [1, 1, 0, 0])
    assert b["encoder_input_tokens"].shape == (2, 12)
    assert m.VOCABULARY.decode(b["encoder_input_tokens"][1].tolist()) == (
        "how many squares are there?")
    cap = loop.DatasetConfig("mplug_coco_caption_336_en_v1",
                             {"image": (336, 336, 3), "targets": 5}, split="train",
                             batch_size=3, shuffle=False, converter="image_text")
    b = next(iter(loop._batch_iterator(cap, repeat=False)))
    assert set(b) == {"image", "decoder_target_tokens", "decoder_input_tokens",
                      "decoder_loss_weights"}
    assert m.VOCABULARY.decode(b["decoder_target_tokens"][2].tolist()) == (
        "a blue square on")  # 7 tokens + EOS trimmed to 4 + EOS
    assert b["decoder_target_tokens"][2, -1] == 102


# ---------------------------------------------------------------- experiments
EXPERIMENTS = [  # file, preset, image size, patch, task, encoder_text, lengths
    ("experiments/mplug/vqa_v2_large.gin", "large", 336, 14, "mplug_vqav2_336_en_v1", True,
     {"image": (336, 336, 3), "inputs": 40, "targets": 10}),
    ("experiments/mplug/vqa_v2_base.gin", "base", 384, 16, "mplug_vqav2_384_en_v1", True,
     {"image": (384, 384, 3), "inputs": 40, "targets": 10}),
    ("experiments/mplug/coco_caption_large.gin", "large", 336, 14,
     "mplug_coco_caption_336_en_v1", False, {"image": (336, 336, 3), "targets": 40}),
]


@pytest.mark.parametrize("path, preset, size, patch, task, encoder_text, lengths",
                         EXPERIMENTS)
def test_experiment_gin_files(path, preset, size, patch, task, encoder_text, lengths):
    import gin
    import seqio

    from plug_jax import gin_utils
    gin_utils.parse_gin([path], ["MODEL_DIR='/tmp/unused'"], [ROOT], check_unused=True)
    q = gin.query_parameter
    assert q("%TASK_FEATURE_LENGTHS") == lengths
    assert q("%IMAGE_SIZE") == size == q("%TASK_FEATURE_LENGTHS")["image"][0]
    assert q("%MIXTURE_OR_TASK_NAME") == task and task in seqio.TaskRegistry.names()
    assert q("%FEATURE_CONVERTER") == "image_text"
    assert q("%RESTORE_MODE") == "params_only"
    assert q("%BATCH_SIZE") // q("%NUM_MICROBATCHES") == 128  # the plug-plan row's batch
    model = q("%MODEL").scoped_configurable_fn()
    assert model.encoder_text is encoder_text
    c = model.config
    assert (c.preset, c.vision.image_size, c.vision.patch_size) == (preset, size, patch)
    assert c.vocab_size == 30522 and c.dtype == "bfloat16" and c.remat_policy == "full"
    assert (size // patch) ** 2 + 1 == 577  # the released fine-tune's position table
    mesh = q("%MESH").scoped_configurable_fn()
    assert mesh.rules == "dp"
