"""WordPieceVocabulary: ids match transformers.BertTokenizer, TF == python, padding, errors."""
import numpy as np
import pytest

from plug_jax.data.wordpiece import (WordPieceVocabulary, basic_tokenize, location_tokens)

import tensorflow as tf  # noqa: E402  (already configured by plug_jax.data.wordpiece)

VOCAB = (
    ["[PAD]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("我爱北京天安门今气很好的人工智能模型中文")
    + list("，。！？、：；（）,.!?;:()'-\"")
    + ["hello", "world", "un", "##aff", "##able", "play", "##ing", "##ed", "the", "a",
       "bert", "jax", "##s", "cafe", "naive", "1", "2", "##0", "##24", "20", "x", "##y"]
)
TEXTS = [
    "我爱北京天安门",
    "今天天气很好！",
    "Hello, World!",
    "unaffable playing played plays",
    "我爱 JAX 模型，BERT 也很好。",
    "Café naïve",
    "2024年 的 x y xy yx",
    "unknownword 中文模型 （测试）",
    "  tabs\tand\nnewlines  ",
    "a-b 'c' \"the\" 1.2",
    "人工智能[MASK]模型",
    "",
    "pla playingg ##ing",
]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wp") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return str(path)


def bert_reference(vocab_file, do_lower_case):
    """transformers' BertTokenizer (the Rust ``tokenizers`` backend) over ``vocab_file``."""
    import transformers
    from transformers.models.bert.tokenization_bert import load_vocab
    ref = transformers.BertTokenizer(vocab=dict(load_vocab(vocab_file)),
                                     do_lower_case=do_lower_case)
    assert len(set(VOCAB)) == len(VOCAB) == ref.vocab_size  # the file was really loaded
    return ref


@pytest.fixture(scope="module")
def vocab(vocab_file):
    return WordPieceVocabulary(vocab_file)


def test_ids_match_transformers_bert_tokenizer(vocab, vocab_file):
    ref = bert_reference(vocab_file, do_lower_case=True)
    for text in TEXTS:
        expected = ref(text, add_special_tokens=False)["input_ids"]
        assert list(vocab.encode(text)) == expected, text


def test_cased_matches_transformers(vocab_file):
    ref = bert_reference(vocab_file, do_lower_case=False)
    cased = WordPieceVocabulary(vocab_file, do_lower_case=False)
    for text in ["hello World", "Café 我爱北京", "the Bert"]:
        assert list(cased.encode(text)) == ref(text, add_special_tokens=False)["input_ids"]


def test_basic_tokenize():
    assert basic_tokenize("Héllo,世界 ab") == ["hello", ",", "世", "界", "ab"]
    assert basic_tokenize("Héllo", do_lower_case=False) == ["Héllo"]


def test_round_trip(vocab):
    for text in ["我爱北京天安门", "今天天气很好！", "hello, world!", "unaffable playing",
                 "我爱jax模型，bert很好。", "the (bert) jax"]:
        assert vocab.decode(vocab.encode(text)) == text
    # Special pad/cls/sep are dropped; decode stops at eos ([SEP]).
    ids = [vocab.cls_id] + vocab.encode("我爱北京") + [vocab.sep_id] + vocab.encode("hello")
    assert vocab.decode(ids) == "我爱北京"


def test_special_ids_and_sizes(vocab):
    assert (vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.sep_id, vocab.mask_id) == (
        0, 2, 3, 4, 5)
    assert vocab.eos_id == vocab.sep_id and vocab.bos_id == vocab.cls_id
    assert vocab.vocab_size == len(VOCAB)
    assert vocab.encode("zzz") == [vocab.unk_id]
    assert vocab.encode("[MASK]") == [vocab.mask_id]


def test_pad_to_multiple_of(vocab_file):
    v = WordPieceVocabulary(vocab_file, pad_to_multiple_of=128)
    assert v.vocab_size == 128 and v.file_vocab_size == len(VOCAB)
    assert v.encode("我爱北京") == WordPieceVocabulary(vocab_file).encode("我爱北京")
    # Placeholders never come out of encoding and decode to nothing.
    assert v.decode([v.token_to_id("我"), len(VOCAB) + 3]) == "我"


def test_location_tokens(vocab_file):
    locs = location_tokens(300)
    assert locs[0] == "<loc_0>" and locs[-1] == "<loc_299>"
    v = WordPieceVocabulary(vocab_file, extra_tokens=locs, pad_to_multiple_of=128)
    n = len(VOCAB) + 300
    assert v.vocab_size == -n % 128 + n
    ids = v.encode("我<loc_12><loc_299> hello<loc_0>")
    assert ids == [v.token_to_id("我"), len(VOCAB) + 12, len(VOCAB) + 299,
                   v.token_to_id("hello"), len(VOCAB)]
    assert v.decode(ids) == "我<loc_12> <loc_299> hello <loc_0>"
    with pytest.raises(ValueError, match="extra_tokens"):
        WordPieceVocabulary(vocab_file, extra_tokens=["hello"])


def test_tf_matches_python(vocab):
    for text in TEXTS:
        got = vocab.encode_tf(tf.constant(text)).numpy().tolist()
        assert got == list(vocab.encode(text)), text
    ragged = vocab.encode_tf(tf.constant(TEXTS[:3]))
    assert ragged.to_list() == [list(vocab.encode(t)) for t in TEXTS[:3]]
    ids = [vocab.encode(t) for t in ["我爱北京天安门", "hello, world!"]]
    width = max(map(len, ids))
    batch = np.array([r + [0] * (width - len(r)) for r in ids], np.int32)
    decoded = vocab.decode_tf(tf.constant(batch)).numpy().tolist()
    assert [d.decode() for d in decoded] == ["我爱北京天安门", "hello, world!"]
    assert vocab.decode_tf(tf.constant(batch[0])).numpy().decode() == "我爱北京天安门"
    # Inside a tf.data graph, shapes are known.
    ds = tf.data.Dataset.from_tensor_slices(TEXTS[:4]).map(vocab.encode_tf)
    assert ds.element_spec.shape.as_list() == [None]
    assert [x.tolist() for x in ds.as_numpy_iterator()] == [
        list(vocab.encode(t)) for t in TEXTS[:4]]


@pytest.mark.parametrize("lines, match", [
    (None, "not found"),
    (["[PAD]", "[CLS]", "[SEP]", "[MASK]", "a"], r"lacks special token\(s\) \['\[UNK\]'\]"),
    (["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"], "seqio pads with id 0"),
    ([], "empty"),
])
def test_bad_vocab_file(tmp_path, lines, match):
    path = tmp_path / "vocab.txt"
    if lines is not None:
        path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=match) as info:
        WordPieceVocabulary(path)
    assert "\n" not in str(info.value)


def test_shop_world_character_vocabulary_covers_the_world(tmp_path):
    from plug_jax.data import shop_world as sw
    from plug_jax.data import wordpiece as wp
    v = wp.shop_world_wordpiece(cache_dir=str(tmp_path), pad_to_multiple_of=128)
    assert v.vocab_size % 128 == 0 and v.pad_id == 0 and v.mask_id == 4
    for lang in ("zh", "en"):
        for i in range(20):
            doc = sw.lm_document(0, "test", i, lang)
            ids = v.encode(doc)
            assert v.unk_id not in ids, doc
    zh = sw.lm_document(0, "test", 0, "zh").split("\n")[1]
    assert len(v.encode(zh[:10])) == len(zh[:10].replace(" ", ""))  # one id per character
    assert wp.shop_world_wordpiece(cache_dir=str(tmp_path)).vocab_size <= v.vocab_size
