"""ROUGE-L: hand-computed values, edge cases, brute-force LCS, the lead baseline."""
import itertools
import random

import pytest

from plug_jax.metrics import rouge
from plug_jax.metrics.rouge import corpus_rouge_l, lcs_length, lead_baseline, rouge_l, tokenize


def _close(got, p, r, f):
    assert got["precision"] == pytest.approx(p)
    assert got["recall"] == pytest.approx(r)
    assert got["f"] == pytest.approx(f)


def test_lin_2004_example():
    # Lin (2004), section 3.1: reference S1 "police killed the gunman".
    # S2 "police kill the gunman": LCS = "police the gunman" = 3 of 4 and 4 -> P = R = F = 3/4.
    # S3 "the gunman kill police": LCS = "the gunman" = 2 -> P = R = F = 1/2, so ROUGE-L
    # prefers S2, as the paper says.
    ref = "police killed the gunman"
    _close(rouge_l("police kill the gunman", ref, "en"), 0.75, 0.75, 0.75)
    _close(rouge_l("the gunman kill police", ref, "en"), 0.5, 0.5, 0.5)


def test_english_hand_computed():
    # "the cat sat on the mat" vs "the cat lay on the mat": 6 words each, LCS = "the cat on
    # the mat" = 5 -> P = R = F = 5/6.
    _close(rouge_l("the cat sat on the mat", "the cat lay on the mat", "en"), 5 / 6, 5 / 6, 5 / 6)
    # prediction "a b c d" (4 words), reference "b d" (2): LCS 2 -> P = 2/4, R = 2/2,
    # F = 2 * 1/2 * 1 / (1/2 + 1) = 2/3.
    _close(rouge_l("a b c d", "b d", "en"), 0.5, 1.0, 2 / 3)
    # Case and punctuation do not count: "Hello, World!" -> [hello, world].
    _close(rouge_l("Hello, World!", "hello world", "en"), 1.0, 1.0, 1.0)
    # "wrinkle-resistant" is two words; the hyphen separates them.
    assert tokenize("Wrinkle-resistant, ¥239.", "en") == ["wrinkle", "resistant", "239"]


def test_chinese_hand_computed():
    # zh tokens are characters without whitespace / punctuation, lower-cased:
    # prediction "红色棉质T恤" -> 红 色 棉 质 t 恤 (6);
    # reference "【南风】红色T恤，纯棉" -> 南 风 红 色 t 恤 纯 棉 (8; 【】， dropped).
    # LCS = 红 色 t 恤 = 4 (红色棉 would be only 3): P = 4/6 = 2/3, R = 4/8 = 1/2,
    # F = 2 * (2/3) * (1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7.
    assert tokenize("【南风】红色T恤，纯棉", "zh") == list("南风红色t恤纯棉")
    _close(rouge_l("红色棉质T恤", "【南风】红色T恤，纯棉", "zh"), 2 / 3, 1 / 2, 4 / 7)
    # Spaces between title fields do not matter: identical characters -> 1.
    _close(rouge_l("海盐 秋季新款 灰色夹克", "海盐秋季新款灰色夹克", "zh"), 1.0, 1.0, 1.0)


def test_beta_weights_recall():
    # P = 1/2, R = 1 ("a b c d" vs "b d"); beta = 2: F = (1 + 4) P R / (R + 4 P)
    # = 5 * 1/2 / (1 + 2) = 5/6.
    assert rouge_l("a b c d", "b d", "en", beta=2.0)["f"] == pytest.approx(5 / 6)


def test_empty_and_disjoint_give_zero():
    zero = {"precision": 0.0, "recall": 0.0, "f": 0.0}
    assert rouge_l("", "", "en") == zero
    assert rouge_l("", "the cat", "en") == zero
    assert rouge_l("the cat", "", "en") == zero
    assert rouge_l("，。 ！", "红色", "zh") == zero  # only punctuation: no tokens
    assert rouge_l("dog", "cat", "en") == zero
    assert lcs_length([], "abc") == 0 and lcs_length("abc", []) == 0


def test_precision_and_recall_swap_with_the_arguments():
    a, b = "红色棉质T恤", "南风红色T恤纯棉"
    x, y = rouge_l(a, b, "zh"), rouge_l(b, a, "zh")
    assert x["precision"] == pytest.approx(y["recall"])
    assert x["recall"] == pytest.approx(y["precision"])
    assert x["f"] == pytest.approx(y["f"])


def test_corpus_is_the_mean_of_example_f():
    # F per example: identical -> 1; disjoint -> 0; the cat example -> 5/6.
    # Mean = (1 + 0 + 5/6) / 3 = (11/6) / 3 = 11/18.
    preds = ["hello world", "foo", "the cat sat on the mat"]
    refs = ["hello world", "bar", "the cat lay on the mat"]
    assert corpus_rouge_l(preds, refs, "en") == pytest.approx(11 / 18)
    with pytest.raises(ValueError):
        corpus_rouge_l(["a"], ["a", "b"], "en")
    with pytest.raises(ValueError):
        corpus_rouge_l([], [], "en")
    with pytest.raises(ValueError):
        rouge_l("a", "b", "fr")


def _brute_force_lcs(a, b) -> int:
    """Longest subsequence of the shorter sequence that is also a subsequence of the other."""
    if len(a) > len(b):
        a, b = b, a

    def is_subsequence(sub, seq):
        it = iter(seq)
        return all(any(x == y for y in it) for x in sub)

    for k in range(len(a), 0, -1):
        for idx in itertools.combinations(range(len(a)), k):
            if is_subsequence([a[i] for i in idx], b):
                return k
    return 0


def test_lcs_matches_brute_force_on_random_strings():
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 8)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 9)))
        assert lcs_length(a, b) == _brute_force_lcs(a, b), (a, b)


def test_rouge_l_matches_brute_force_on_random_chinese():
    rng = random.Random(1)
    chars = "红绿蓝棉麻，。 "
    for _ in range(200):
        p = "".join(rng.choice(chars) for _ in range(rng.randint(0, 9)))
        r = "".join(rng.choice(chars) for _ in range(rng.randint(0, 9)))
        tp = [c for c in p if c not in "，。 "]
        tr = [c for c in r if c not in "，。 "]
        lcs = _brute_force_lcs(tp, tr)
        got = rouge_l(p, r, "zh")
        if lcs == 0:
            assert got["f"] == 0.0
        else:
            prec, rec = lcs / len(tp), lcs / len(tr)
            assert got["precision"] == pytest.approx(prec)
            assert got["recall"] == pytest.approx(rec)
            assert got["f"] == pytest.approx(2 * prec * rec / (prec + rec))


def test_lead_baseline():
    assert lead_baseline("第一句，还是第一句。第二句！第三句？", "zh") == "第一句，还是第一句。"
    assert lead_baseline("只有一句没有句号", "zh") == "只有一句没有句号"
    assert lead_baseline("First one. Second! Third?", "en") == "First one."
    # A full stop not followed by a space does not end an English sentence.
    assert lead_baseline("Now ¥2.5 only! Buy it.", "en") == "Now ¥2.5 only!"
    assert lead_baseline("", "zh") == "" and lead_baseline("   ", "en") == ""
    assert rouge.split_sentences("A. B? C!", "en") == ["A.", "B?", "C!"]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_lead_baseline_is_the_first_shop_world_description_sentence(lang):
    from plug_jax.data import shop_world
    for i in range(20):
        ex = shop_world.text_example(0, "test", i, lang, kinds=("description",))
        assert lead_baseline(ex["description"], lang) == ex["description_sentences"][0]
        assert rouge.split_sentences(ex["description"], lang) == list(
            ex["description_sentences"])
