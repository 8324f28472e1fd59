"""The 'encoder' and 'encdec_mlm' feature converters on the StructBERT and PLUG tasks."""
import numpy as np
import pytest
import seqio

import plug_jax.tasks  # noqa: F401  (registers the tasks)
from plug_jax.data import pipeline
from plug_jax.data.pipeline import EncDecMlmFeatureConverter, get_batch_iterator
from plug_jax.tasks import structbert as sb


def test_structbert_pretrain_batches():
    it = get_batch_iterator("structbert_pretrain_zh_v2", {"inputs": 48}, "train", 16,
                            converter="encoder", seed=3)
    b = next(it)
    vocab = pipeline.task_vocabulary("structbert_pretrain_zh_v2")
    ids = sb.special_ids(vocab)
    assert set(b) == {"encoder_input_tokens", "encoder_token_types", "mlm_targets",
                      "mlm_weights", "structural_weights", "label"}
    assert b["label"].shape == (16, 1) and set(b["label"].ravel()) <= {0, 1, 2}
    x, t = b["encoder_input_tokens"], b["mlm_targets"]
    assert (x[:, 0] == ids["cls"]).all() and (t[:, 0] == ids["cls"]).all()
    real = t > 0
    # Every row is [CLS] S1 [SEP] S2: type 0 up to and including the separator after S1,
    # 1 after it (segments of up to two sentences keep a separator between them).
    for r in range(16):
        n = int(real[r].sum())
        types = b["encoder_token_types"][r, :n]
        n1 = int((types == 0).sum())
        assert t[r, n1 - 1] == ids["sep"] and 2 < n1 < n
        assert (types[:n1] == 0).all() and (types[n1:] == 1).all()
    # Inputs differ from the targets only where a token was masked or shuffled.
    changed = x != t
    assert not (changed & (b["mlm_weights"] == 0) & (b["structural_weights"] == 0)).any()
    assert (b["mlm_weights"] * b["structural_weights"] == 0).all()  # never both
    assert (x[b["mlm_weights"] > 0] == ids["mask"]).mean() > 0.5  # 80% become [MASK]
    assert ((b["mlm_weights"] > 0) & ~real).sum() == 0


def test_structbert_pairs_come_from_the_description_pages():
    """Unshuffled test split: row i pairs consecutive sentences of product i's page (title,
    then the description sentences) around one boundary, in order for label 0, swapped for
    1, and with S2 from product i-1's page for 2; no review text is ever used."""
    from plug_jax.data import shop_world
    it = get_batch_iterator("structbert_pretrain_zh_v2", {"inputs": 128}, "test", 32,
                            converter="encoder", shuffle=False, seed=0)
    b = next(it)
    vocab = pipeline.task_vocabulary("structbert_pretrain_zh_v2")

    def page(i):
        ex = shop_world.text_example(0, "test", i, "zh")
        return [ex["title"], *ex["description_sentences"]]

    def runs(sents, k):  # every run of k consecutive sentences
        return [sents[i:i + k] for i in range(len(sents) - k + 1)]

    from plug_jax import models
    from plug_jax.families.structbert import StructBERTConfig
    model = models.EncoderModel(StructBERTConfig())
    seen = set()
    for r in range(32):
        real = b["mlm_targets"][r] > 0
        toks, types = b["mlm_targets"][r][real][1:], b["encoder_token_types"][r][real][1:]
        s1 = vocab.decode([int(t) for t in toks[types == 0][:-1]]).split("\n")
        s2 = vocab.decode([int(t) for t in toks[types == 1]]).split("\n")
        # plug-infer's "S1<tab>S2" prompt gives the model exactly the ids and types of training
        # (every sentence tokenized as inside a document: no start-of-text piece)
        prompt, _ = model.prompt_batch(vocab, ["\n".join(s1) + "\t" + "\n".join(s2)])
        np.testing.assert_array_equal(prompt["encoder_input_tokens"][0], b["mlm_targets"][r][real])
        np.testing.assert_array_equal(prompt["encoder_token_types"][0],
                                      b["encoder_token_types"][r][real])
        assert 1 <= len(s1) <= sb.SEGMENT_SENTENCES and 1 <= len(s2) <= sb.SEGMENT_SENTENCES
        label = int(b["label"][r, 0])
        sents = page(r)
        if label == 2:
            assert r > 0 and s1 in runs(sents, len(s1)) and s2 in runs(page(r - 1), len(s2))
        else:
            first, second = (s1, s2) if label == 0 else (s2, s1)
            assert first + second in runs(sents, len(first) + len(second))
        seen.add(label)
    assert seen == {0, 1, 2}


def test_sentiment_batches_match_the_reviews():
    it = get_batch_iterator("structbert_sentiment_en_v1", {"inputs": 64}, "test", 8,
                            converter="encoder", shuffle=False)
    b = next(it)
    vocab = pipeline.task_vocabulary("structbert_sentiment_en_v1")
    from plug_jax.data import shop_world
    from plug_jax import models
    from plug_jax.families.structbert import StructBERTConfig
    clf = models.EncoderModel(StructBERTConfig(), objectives=("classify",), num_labels=2)
    prompts, _ = clf.prompt_batch(vocab, [shop_world.text_example(0, "test", r, "en")["review"]
                                          for r in range(8)], max_length=64)
    for r in range(8):
        ex = shop_world.text_example(0, "test", r, "en")
        assert b["label"][r, 0] == ex["label"]
        # plug-infer tokenizes a review as the sentiment task does
        n = int((b["encoder_input_tokens"][r] > 0).sum())
        np.testing.assert_array_equal(prompts["encoder_input_tokens"][r, :n],
                                      b["encoder_input_tokens"][r, :n])
        toks = [int(v) for v in b["encoder_input_tokens"][r] if v > 0]
        assert toks[0] == sb.special_ids(vocab)["cls"]
        assert vocab.decode(toks[1:]) == ex["review"][:len(vocab.decode(toks[1:]))]
    assert (b["mlm_weights"] == 0).all() and (b["encoder_token_types"] == 0).all()


def test_encoder_converter_needs_an_inputs_length():
    with pytest.raises(ValueError, match="needs an 'inputs' length"):
        get_batch_iterator("structbert_sentiment_zh_v1", {"targets": 64}, "test", 8,
                           converter="encoder")


@pytest.mark.parametrize("pack", [True, False])
def test_encdec_mlm_equals_seqio_encdec_plus_aligned_mlm_targets(pack):
    """Encoder/decoder features equal seqio's EncDecFeatureConverter on the same examples;
    the MLM targets and weights stay aligned with the encoder tokens after packing."""
    task = seqio.get_mixture_or_task("plug_genae_zh_v1")
    lengths = {"inputs": 128, "targets": 128}  # room for several examples per packed row
    ds = task.get_dataset(lengths, split="validation", shuffle=False, use_cached=False, seed=0)
    examples = list(ds.take(40).as_numpy_iterator())  # fixed: masking is random per pass
    tf = pipeline.tf
    ds = tf.data.Dataset.from_generator(lambda: iter(examples),
                                        output_signature=ds.element_spec)
    ours = list(EncDecMlmFeatureConverter(pack)(ds, lengths).take(12).as_numpy_iterator())
    plain = ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})
    ref = list(seqio.EncDecFeatureConverter(pack=pack)(plain, lengths).take(12)
               .as_numpy_iterator())
    assert len(ours) == len(ref) == 12
    masked, multi = 0, 0
    for a, r in zip(ours, ref):
        for k in r:
            np.testing.assert_array_equal(a[k], r[k], err_msg=k)
        x, t, w = a["encoder_input_tokens"], a["encoder_mlm_targets"], a["encoder_mlm_weights"]
        assert not ((x != t) & (w == 0)).any()  # every corruption is a weighted position
        assert ((t > 0) == (x > 0)).all() and not (w[x == 0]).any()
        masked += int(w.sum())
        multi += int(pack and a["encoder_segment_ids"].max() >= 2)
    assert masked > 0
    assert multi > 0 or not pack  # packed rows with several examples were checked


def test_encdec_mlm_without_mlm_features_has_zero_weights():
    it = get_batch_iterator("plug_gen_zh_v1", {"inputs": 64, "targets": 32}, "validation", 4,
                            converter="encdec_mlm", shuffle=False)
    b = next(it)
    assert (b["encoder_mlm_weights"] == 0).all()
    np.testing.assert_array_equal(b["encoder_mlm_targets"], b["encoder_input_tokens"])
