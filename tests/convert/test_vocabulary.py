"""Finding, checking and writing back the vocabulary a conversion carries
(plug_jax.convert.vocabulary); the CLI flow is tests/convert/test_converted_checkpoints.py."""
import json

import pytest

from plug_jax.convert import vocabulary

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab(path, extra=("红", "色")):
    path.write_text("\n".join(SPECIALS + list(extra)) + "\n", encoding="utf-8")
    return path


def test_top_level_vocab_txt_comes_first(tmp_path):
    _vocab(tmp_path / "vocab.txt")
    (tmp_path / "spiece.model").write_bytes(b"not used")
    assert vocabulary.find_vocabulary(str(tmp_path)) == (str(tmp_path / "vocab.txt"), None)
    # an input file: its folder is searched
    weights = tmp_path / "pytorch_model.bin"
    weights.write_bytes(b"")
    assert vocabulary.find_vocabulary(str(weights))[0] == str(tmp_path / "vocab.txt")


def test_palm_v2_vocab_in_the_encoder_folder(tmp_path):
    # ModelScope palm_v2: config.json names encoder_pth; BertTokenizer reads vocab.txt there
    (tmp_path / "config.json").write_text(json.dumps({"encoder_pth": "bert"}))
    (tmp_path / "bert").mkdir()
    _vocab(tmp_path / "bert" / "vocab.txt")
    assert vocabulary.find_vocabulary(str(tmp_path)) == (str(tmp_path / "bert" / "vocab.txt"),
                                                        None)


def test_unsupported_or_absent_vocabulary_is_a_note(tmp_path):
    path, note = vocabulary.find_vocabulary(str(tmp_path))
    assert path is None and "no vocabulary carried" in note and "--vocab FILE" in note
    (tmp_path / "tokenizer.json").write_text("{}")
    path, note = vocabulary.find_vocabulary(str(tmp_path))
    assert path is None and "tokenizer.json" in note and "Jieba-BPE" in note


def test_size_check_and_bad_files(tmp_path):
    vocab = _vocab(tmp_path / "vocab.txt")
    entry = vocabulary.describe(str(vocab))
    assert entry == {"kind": "wordpiece", "file": "vocab/vocab.txt", "size": 7,
                     "do_lower_case": True}
    vocabulary.check_fits(entry, str(vocab), 7)  # fits exactly
    with pytest.raises(vocabulary.VocabularyError, match="has 7 tokens but the checkpoint's "
                                                         "embedding table has 6 rows"):
        vocabulary.check_fits(entry, str(vocab), 6)
    with pytest.raises(vocabulary.VocabularyError, match="expected a WordPiece vocab.txt"):
        vocabulary.describe(str(tmp_path / "vocab.json"))
    bad = tmp_path / "spm.model"
    bad.write_bytes(b"garbage")
    with pytest.raises(vocabulary.VocabularyError, match="cannot read vocabulary"):
        vocabulary.describe(str(bad))
    no_pad = tmp_path / "nopad.txt"
    no_pad.write_text("\n".join(["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
    with pytest.raises(vocabulary.VocabularyError, match=r"\[PAD\] at id 1"):
        vocabulary.describe(str(no_pad))
