"""AMTSS tasks (tasks/amtss.py), the teacher-logits file and the student's feature converter:
shapes, the translation indexing of the teachers' examples, teacher logits joined to the right
example, the missing-file error, the committed contract fixture, the vocabulary."""
import importlib.util
import pathlib

import numpy as np
import pytest

from plug_jax.data import features
from plug_jax.data import shop_world

REPO = pathlib.Path(__file__).resolve().parents[3]
LANGS = ("zh", "en", "de", "fr", "es", "ja")


@pytest.fixture(scope="module")
def tasks():
    import plug_jax.tasks.amtss as amtss_tasks
    return amtss_tasks


def _query(split, index):
    """Query example ``index`` of the ``queries`` config, straight from the generator:
    language ``index % 6``, product ``index // 6``."""
    return shop_world.query_example(0, split, index // 6, LANGS[index % 6])


def test_student_feature_spec_shapes_and_dtypes():
    spec = features.feature_spec("amtss_student", {"inputs": 32, "teacher_logits": (6, 5)})
    got = {k: (str(v.dtype), v.shape) for k, v in spec.items()}
    assert got == {"encoder_input_tokens": ("int32", (32,)),
                   "encoder_token_types": ("int32", (32,)),
                   "label": ("int32", (1,)), "lang": ("int32", (1,)),
                   "teacher_logits": ("float32", (6, 5)), "teacher_mask": ("float32", (6,))}
    with pytest.raises(ValueError, match="teacher_logits") as e:
        features.feature_spec("amtss_student", {"inputs": 32})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"\(teachers, classes\)"):
        features.feature_spec("amtss_student", {"inputs": 32, "teacher_logits": 6})


def test_teacher_task_is_its_language_of_each_product(tasks):
    """Teacher de's example j is query example 6 j + 2: product j's German query."""
    import seqio
    vocab = tasks.vocabulary()
    ds = seqio.get_mixture_or_task("amtss_teacher_shop_de_v1").get_dataset(
        {"inputs": 32}, split="test", shuffle=False)
    n = 0
    for j, ex in enumerate(ds.take(8)):
        want = _query("test", 6 * j + 2)
        assert want["lang"] == "de"
        ids = ex["inputs"].numpy().tolist()
        assert ids[0] == vocab.vocab_size - 1  # [CLS]
        assert vocab.decode(ids[1:]) == want["query"]
        assert int(ex["label"]) == want["intent_label"]
        n += 1
    assert n == 8
    assert tasks.teacher_split_sizes() == {"train": 2000, "validation": 100, "test": 100}


def _coded_file(tasks, path, sizes):
    """A teacher-logits file whose row i holds i * 100 + t * 10 + c (so a row shows which
    example it came from), with the gold labels and languages of the queries."""
    from plug_jax.families.amtss import logits_file
    splits = {}
    for split, n in sizes.items():
        i, t, c = np.meshgrid(np.arange(n), np.arange(6), np.arange(5), indexing="ij")
        mask = np.ones((n, 6), np.float32)
        mask[:, 3] = 0  # no fr teacher
        splits[split] = {"logits": (i * 100 + t * 10 + c).astype(np.float32), "mask": mask,
                         "label": [_query(split, k)["intent_label"] for k in range(n)],
                         "lang": np.arange(n) % 6}
    return logits_file.write(path, splits, LANGS, 5)


def test_student_task_joins_each_example_to_its_row_of_teacher_logits(tasks, tmp_path):
    import seqio
    path = _coded_file(tasks, tmp_path / "logits.npz", {"train": 30, "validation": 12})
    name = tasks.student_task(str(path))
    task = seqio.get_mixture_or_task(name)
    vocab = tasks.vocabulary()
    seen = set()
    for ex in task.get_dataset({"inputs": 32}, split="train", shuffle=True, seed=3):
        ids = ex["inputs"].numpy().tolist()
        logits = ex["teacher_logits"].numpy()
        i = int(logits[0, 0]) // 100  # the row the example got
        want = _query("train", i)
        assert vocab.decode(ids[1:]) == want["query"]  # ... is this example's row
        assert int(ex["label"]) == want["intent_label"]
        assert int(ex["lang"]) == i % 6
        np.testing.assert_array_equal(logits, i * 100 + np.arange(6)[:, None] * 10
                                      + np.arange(5)[None, :])
        np.testing.assert_array_equal(ex["teacher_mask"].numpy(), [1, 1, 1, 0, 1, 1])
        seen.add(i)
    assert seen == set(range(30))  # the file's rows are the split


def test_student_feature_converter_batches(tasks, tmp_path):
    from plug_jax.data import pipeline
    from plug_jax.trainer import loop
    path = _coded_file(tasks, tmp_path / "logits.npz", {"train": 12, "validation": 12})
    cfg = loop.DatasetConfig(tasks.student_task(str(path)), {"inputs": 32,
                                                             "teacher_logits": (6, 5)},
                             split="validation", batch_size=4, shuffle=False,
                             converter="amtss_student")
    batch = next(iter(loop._batch_iterator(cfg, repeat=False, shuffle=False)))
    assert {k: v.shape for k, v in batch.items()} == {
        "encoder_input_tokens": (4, 32), "encoder_token_types": (4, 32), "label": (4, 1),
        "lang": (4, 1), "teacher_logits": (4, 6, 5), "teacher_mask": (4, 6)}
    assert batch["teacher_logits"].dtype == np.float32
    rows = batch["teacher_logits"][:, 0, 0] // 100
    np.testing.assert_array_equal(batch["lang"][:, 0], rows % 6)
    del pipeline


def test_missing_teacher_logits_file_names_the_command(tasks, tmp_path):
    import seqio
    missing = tmp_path / "nowhere" / "logits.npz"
    task = seqio.get_mixture_or_task(tasks.student_task(str(missing)))
    from plug_jax.families.amtss.logits_file import TeacherLogitsError
    with pytest.raises(TeacherLogitsError) as e:
        task.get_dataset({"inputs": 32}, split="train")
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg
    assert "python -m plug_jax.families.amtss.score" in msg


def test_missing_file_through_the_command_line(tmp_path, capsys):
    from plug_jax import main
    missing = tmp_path / "logits.npz"
    rc = main.run(["--mode=train", "--gin_file=experiments/amtss/shop_student_small.gin",
                   f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=1",
                   f"--gin.TEACHER_LOGITS='{missing}'"])
    err = capsys.readouterr().err
    assert rc == 2  # a user error: one line, no traceback
    line = [x for x in err.splitlines() if "teacher-logits file" in x]
    assert len(line) == 1 and str(missing) in line[0], err
    assert "python -m plug_jax.families.amtss.score" in line[0]
    assert "Traceback" not in err


def test_a_file_that_is_not_these_queries_is_refused(tasks, tmp_path):
    import seqio
    from plug_jax.families.amtss import logits_file
    n = 12
    labels = np.array([_query("train", k)["intent_label"] for k in range(n)])
    path = logits_file.write(tmp_path / "shifted.npz", {"train": {
        "logits": np.zeros((n, 6, 5)), "label": (labels + 1) % 5,
        "lang": np.arange(n) % 6}}, LANGS, 5)
    task = seqio.get_mixture_or_task(tasks.student_task(str(path)))
    with pytest.raises(Exception, match="does not match the Shop World queries"):
        list(task.get_dataset({"inputs": 32}, split="train", shuffle=False))


def test_committed_contract_fixture_is_what_its_script_writes(tasks):
    from plug_jax.families.amtss import family, logits_file
    spec = importlib.util.spec_from_file_location(
        "amtss_contract_fixture", REPO / "tests/families/amtss/contract_fixture.py")
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    assert str(fixture.PATH).endswith(family.CONTRACT_LOGITS)
    got = logits_file.read(fixture.PATH)
    assert got["teachers"] == LANGS and got["num_labels"] == 5
    want = fixture.fixture_splits()
    assert sorted(got["splits"]) == sorted(want)
    for split, d in want.items():
        for k, v in d.items():
            np.testing.assert_array_equal(got["splits"][split][k], v, err_msg=f"{split} {k}")
        # the gold intent is every teacher's top class
        assert (got["splits"][split]["logits"].argmax(-1)
                == got["splits"][split]["label"][:, None]).all()


def test_query_vocabulary_is_deterministic_and_covers_the_queries(tasks, tmp_path):
    from plug_jax.data import vocab as shop_vocab
    corpus = tasks.vocabulary_corpus()
    assert len(corpus) == 12000 and corpus[7] == _query("train", 7)["query"]
    a = shop_vocab.ensure_corpus_model(corpus, 1024, "amtss_queries", tmp_path / "a")
    b = shop_vocab.ensure_corpus_model(corpus, 1024, "amtss_queries", tmp_path / "b")
    assert pathlib.Path(a).name == pathlib.Path(b).name
    assert pathlib.Path(a).read_bytes() == pathlib.Path(b).read_bytes()
    vocab = tasks.vocabulary()
    for i in range(0, 600, 7):
        q = _query("test", i)["query"]
        ids = vocab.encode(q)
        assert vocab.decode(ids) == q and 2 not in ids  # no unknown pieces
        assert len(ids) < 32


def test_xnli_teacher_task_reads_the_published_files(tasks, tmp_path):
    """XNLI through the existing reader: [CLS] premise [SEP] hypothesis, token types 0 / 1,
    the label ids of the reader (entailment 0, neutral 1, contradiction 2)."""
    import seqio
    from plug_jax.data import vocab as shop_vocab
    rows = [("Der Hund schläft.", "Ein Tier ruht.", "entailment"),
            ("Die Katze läuft.", "Die Katze schläft.", "contradiction"),
            ("Es regnet heute.", "Morgen scheint die Sonne.", "neutral")]
    (tmp_path / "multinli.train.de.tsv").write_text(
        "premise\thypo\tlabel\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows),
        encoding="utf-8")
    (tmp_path / "xnli.test.tsv").write_text(
        "language\tgold_label\tsentence1\tsentence2\n"
        + "".join(f"{lang}\t{c}\t{a}\t{b}\n" for a, b, c in rows for lang in ("en", "de")),
        encoding="utf-8")
    spm_model = shop_vocab.ensure_corpus_model([x for r in rows for x in r[:2]] * 20, 36,
                                               "test_xnli", tmp_path)
    task = tasks.register_xnli_teacher_task("de", name="test_amtss_xnli_de",
                                            data_dir=str(tmp_path), spm_model=spm_model)
    vocab = task.output_features["inputs"].vocabulary
    cls, sep = vocab.vocab_size - 2, vocab.vocab_size - 1
    for split in ("train", "test"):
        got = list(task.get_dataset({"inputs": 64}, split=split, shuffle=False))
        assert len(got) == 3, split  # the test split keeps the German rows only
        for ex, (a, b, c) in zip(got, rows):
            ids, types = ex["inputs"].numpy().tolist(), ex["token_type_ids"].numpy().tolist()
            k = ids.index(sep)
            assert ids[0] == cls and vocab.decode(ids[1:k]) == a
            assert vocab.decode(ids[k + 1:]) == b
            assert types == [0] * (k + 1) + [1] * (len(ids) - k - 1)
            assert int(ex["label"]) == ("entailment", "neutral", "contradiction").index(c)
    assert seqio.get_mixture_or_task("amtss_teacher_xnli_de_v1")  # registered at import
