"""OpenAI CLIP's BPE as a seqio vocabulary (plug_jax/data/clip_bpe.py), on a tiny real CLIP
BPE written here in the published layout: ``vocab.json`` = the 256 byte characters, the same
with ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` as the
last two ids; ``merges.txt`` = a ``#version`` line and one merge per line.

``write_clip_bpe`` is shared with tests/families/xclip/test_msrvtt.py (loaded by path)."""
import json
import pickle

import numpy as np
import pytest

from plug_jax.data import clip_bpe

tf = clip_bpe.tf
transformers = pytest.importorskip("transformers")
regex = pytest.importorskip("regex")

WORDS = ("a", "man", "is", "talking", "cat", "plays", "someone", "speaks", "cars", "race",
         "song", "tall", "the", "dog", "runs")
STRINGS = ["a man is talking", "A  Cat PLAYS!", "someone speaks\n", "talk tall talks",
           "héllo 42 cars, race", "the dog's runs", "zebra"]


def bytes_to_unicode() -> dict:
    """byte -> the printable character CLIP's BPE writes for it (GPT-2's table)."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def write_clip_bpe(folder, words=WORDS, size=None):
    """A CLIP BPE folder whose merges build each of ``words`` left to right (so ``talk``
    stops at ``tal`` + ``k</w>``); with ``size``, unused filler tokens (no merge makes them)
    come before the two special tokens so that there are ``size`` ids (OpenAI: 49408, the
    start token 49406, the end token 49407). Returns ``folder``."""
    b2u = bytes_to_unicode()
    tokens = list(b2u.values())
    tokens += [t + "</w>" for t in tokens]
    merges = []
    for word in words:
        syms = [b2u[b] for b in word.encode("utf-8")]
        syms[-1] += "</w>"
        while len(syms) > 1:
            pair = f"{syms[0]} {syms[1]}"
            if pair not in merges:
                merges.append(pair)
                tokens.append(syms[0] + syms[1])
            syms = [syms[0] + syms[1]] + syms[2:]
    if size is not None:
        tokens += [f"unused{k}" for k in range(size - 2 - len(tokens))]
    tokens += [clip_bpe.START_OF_TEXT, clip_bpe.END_OF_TEXT]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)},
                                                  ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                       encoding="utf-8")
    return folder


def openai_bpe_ids(text: str, folder) -> list[int]:
    """The BPE ids of ``text`` by OpenAI's algorithm (lower-case, CLIP's word regex, lowest
    ranked merge first), written from its description, without the special tokens."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    ranks = {tuple(m.split()): r for r, m in enumerate(lines) if m}
    b2u = bytes_to_unicode()
    text = " ".join(text.split()).lower()
    pattern = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
    ids = []
    for piece in pattern.findall(text):
        word = [b2u[b] for b in piece.encode("utf-8")]
        word[-1] += "</w>"
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids += [vocab[w] for w in word]
    return ids


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_clip_bpe(tmp_path_factory.mktemp("clip_bpe"))


def test_ids_match_clip_tokenizer_and_openai_bpe(folder):
    """encode = [<|startoftext|>] + the BPE ids, the same as transformers.CLIPTokenizer on
    the same files (less its end token) and as OpenAI's merge order; the special ids are the
    last two, end-of-text the largest; padding is 0."""
    vocab = clip_bpe.ClipBpeVocabulary(folder)
    table = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    n = len(table)
    assert vocab.vocab_size == n
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id, vocab.pad_id) == (n - 2, n - 1, n - 1, 0)
    reference = transformers.CLIPTokenizer.from_pretrained(str(folder))
    for s in STRINGS:
        ids = vocab.encode(s)
        assert ids == reference(s)["input_ids"][:-1], s
        assert ids == [n - 2] + openai_bpe_ids(s, folder), s
        assert max(ids) < n - 1
    assert vocab.encode("a man is talking") == [
        n - 2, table["a</w>"], table["man</w>"], table["is</w>"], table["talking</w>"]]
    assert vocab.tokenize("talk tall!") == ["tal", "k</w>", "tall</w>", "!</w>"]
    assert vocab.encode("") == [n - 2]


def test_decode_round_trip(folder):
    """decode drops the start token, stops at the end token, drops padding: lower-case,
    single-spaced captions come back as they were; others come back normalised."""
    vocab = clip_bpe.ClipBpeVocabulary(folder)
    eos = vocab.eos_id
    for s in ["a man is talking", "someone speaks", "the dog runs", "héllo 4 cars"]:
        ids = vocab.encode(s)
        assert vocab.decode(ids) == s
        assert vocab.decode(ids + [eos] + [0] * 5) == s
        assert vocab.decode(ids + [0] * 5) == s  # padded, no end token
        assert vocab.decode(ids + [eos] + vocab.encode("cat")[1:]) == s
    assert vocab.decode(vocab.encode("A  Cat PLAYS!")) == "a cat plays !"
    assert vocab.decode([vocab.bos_id, eos]) == ""


def test_tf_path_equals_python_path(folder):
    """encode_tf (scalar, batch, inside tf.data) and decode_tf give what encode / decode
    give."""
    vocab = clip_bpe.ClipBpeVocabulary(folder)
    for s in STRINGS:
        np.testing.assert_array_equal(vocab.encode_tf(tf.constant(s)).numpy(), vocab.encode(s))
    ragged = vocab.encode_tf(tf.constant(STRINGS))
    assert ragged.to_list() == [vocab.encode(s) for s in STRINGS]
    ds = tf.data.Dataset.from_tensor_slices(STRINGS).map(vocab.encode_tf)
    assert [list(x) for x in ds.as_numpy_iterator()] == [vocab.encode(s) for s in STRINGS]
    rows = [vocab.encode(s) + [vocab.eos_id] for s in STRINGS]
    width = max(map(len, rows)) + 2
    padded = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)
    got = vocab.decode_tf(tf.constant(padded)).numpy()
    assert [g.decode() for g in got] == [vocab.decode(r) for r in rows]
    assert vocab.decode_tf(tf.constant(padded[0])).numpy().decode() == vocab.decode(rows[0])


def test_tokenizer_json_layout_and_identity(folder, tmp_path):
    """A folder that CLIPTokenizer.save_pretrained wrote (tokenizer.json with transformers 5)
    gives the same ids and fingerprint; spec names the folder and hashes its files; the
    vocabulary pickles (reloading from its folder) and equals itself."""
    vocab = clip_bpe.ClipBpeVocabulary(folder)
    saved = tmp_path / "saved"
    transformers.CLIPTokenizer.from_pretrained(str(folder)).save_pretrained(str(saved))
    other = clip_bpe.ClipBpeVocabulary(saved)
    for s in STRINGS:
        assert other.encode(s) == vocab.encode(s)
    assert other.fingerprint == vocab.fingerprint and other == vocab
    spec = vocab.spec
    assert spec["kind"] == "clip_bpe" and spec["folder"] == str(folder)
    assert sorted(spec["files"]) == ["merges.txt", "vocab.json"]
    assert all(len(h) == 16 for h in spec["files"].values())
    copy = pickle.loads(pickle.dumps(vocab))
    assert copy.encode("a cat") == vocab.encode("a cat") and copy == vocab
    assert hash(copy) == hash(vocab)
    write_clip_bpe(tmp_path / "fewer", WORDS[:3])
    assert clip_bpe.ClipBpeVocabulary(tmp_path / "fewer") != vocab


def test_missing_folder_or_file_is_one_line(folder, tmp_path):
    """A missing folder or file is one ValueError line naming the path and the fix; a lazy
    vocabulary touches nothing until used, answers an expected size without the files, and
    loads once the files are there; a size other than the expected one is one line too."""
    n = len(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))
    nowhere = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="CLIP BPE folder .* not found") as info:
        clip_bpe.ClipBpeVocabulary(nowhere)
    msg = str(info.value)
    assert "\n" not in msg and str(nowhere) in msg
    assert "CLIPTokenizer.from_pretrained('openai/clip-vit-base-patch32')" in msg
    half = tmp_path / "half"
    half.mkdir()
    (half / "vocab.json").write_text((folder / "vocab.json").read_text(encoding="utf-8"),
                                     encoding="utf-8")
    with pytest.raises(ValueError, match=r"has no merges\.txt \(nor tokenizer\.json\)") as info:
        clip_bpe.ClipBpeVocabulary(half)
    assert "\n" not in str(info.value) and str(half) in str(info.value)

    lazy = clip_bpe.ClipBpeVocabulary(lambda: str(nowhere), lazy=True, expected_vocab_size=n)
    assert not lazy.loaded and lazy.vocab_size == n and lazy.folder == str(nowhere)
    with pytest.raises(ValueError, match="not found") as info:
        lazy.encode("a man")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not found"):
        lazy.encode_tf(tf.constant("a man"))
    write_clip_bpe(nowhere)
    assert lazy.encode("a man") == clip_bpe.ClipBpeVocabulary(folder).encode("a man")
    assert lazy.loaded

    wrong = clip_bpe.ClipBpeVocabulary(folder, lazy=True, expected_vocab_size=49408)
    with pytest.raises(ValueError, match=f"gives {n} ids but 49408 are expected") as info:
        wrong.eos_id
    assert "\n" not in str(info.value)
