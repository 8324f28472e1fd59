"""Caption metrics: pycocoevalcap's CIDEr-D and BLEU-4 on our tokenization."""
import pytest

from plug_jax.metrics.captions import caption_scores, tokenize

REFS = [["A red wool hat is on the left of the picture."],
        ["From left to right, the picture shows a blue mug and a green sofa."],
        ["A white linen scarf is in the middle of the picture."]]


def test_tokenize_lowercases_drops_punctuation_and_splits_chinese_characters():
    assert tokenize("A red hat, on the LEFT.") == "a red hat on the left"
    assert tokenize("红色的帽子在左边。", "zh") == "红 色 的 帽 子 在 左 边"


def test_exact_captions_beat_swapped_and_generic_ones():
    exact = caption_scores([r[0] for r in REFS], REFS)
    swapped = caption_scores([REFS[1][0], REFS[2][0], REFS[0][0]], REFS)
    generic = caption_scores(["a picture"] * 3, REFS)
    assert exact["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert exact["cider"] > swapped["cider"] > generic["cider"] >= 0.0
    assert exact["bleu4"] > swapped["bleu4"]
    # punctuation and case do not change the score
    assert caption_scores([r[0].upper().rstrip(".") for r in REFS], REFS) == exact


def test_mismatched_lengths_are_one_clear_error():
    with pytest.raises(ValueError, match="2 predictions for 3 reference lists"):
        caption_scores(["a", "b"], REFS)
