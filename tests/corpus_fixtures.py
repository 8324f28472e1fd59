"""Tiny real-corpus fixtures written in the *published* formats (COCO Karpathy
``dataset_coco.json``, VQA v2 question / annotation files, solid-colour JPEGs), shared by the
reader tests (tests/data/test_corpora_vision.py) and mPLUG's fine-tune task tests
(tests/families/mplug/test_corpus_experiments.py).

Tests load this module by its path (``--import-mode=importlib``; see tests/cli_helpers.py)::

    _spec = importlib.util.spec_from_file_location(
        "plug_jax_tests_corpus_fixtures",
        pathlib.Path(__file__).resolve().parents[1] / "corpus_fixtures.py")  # tests/data/x.py
    corpus_fixtures = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(corpus_fixtures)
"""
import json

import numpy as np

from plug_jax.data import configure_tensorflow

tf = configure_tensorflow()


def write_jpeg(path, colour, height=16, width=20, quality=95):
    """A solid-colour ``height x width`` JPEG (decoded pixels come back within a few levels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.broadcast_to(np.array(colour, np.uint8), (height, width, 3))
    path.write_bytes(tf.io.encode_jpeg(tf.constant(pixels), quality=quality).numpy())


def write_coco(root, images, **jpeg):
    """``root/dataset_coco.json`` + one JPEG per image; ``images``: ``[(filepath, cocoid,
    Karpathy split, colour, raw captions)]``. Returns ``root``."""
    out, sentid = [], 0
    for imgid, (folder, cocoid, split, colour, raws) in enumerate(images):
        name = f"COCO_{folder}_{cocoid:012d}.jpg"
        write_jpeg(root / folder / name, colour, **jpeg)
        sents = [{"raw": r, "tokens": r.lower().strip(" .").split(), "imgid": imgid,
                  "sentid": sentid + i} for i, r in enumerate(raws)]
        out.append({"filepath": folder, "filename": name, "imgid": imgid, "split": split,
                    "sentences": sents, "cocoid": cocoid,
                    "sentids": [s["sentid"] for s in sents]})
        sentid += len(raws)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_coco.json").write_text(json.dumps({"images": out, "dataset": "coco"}))
    return root


def write_vqa(root, table, **jpeg):
    """The VQA v2 question / annotation files of each subset + one JPEG per image;
    ``table``: ``{subset: [(image_id, colour, question_id, question, multiple-choice answer,
    ten answers, answer type)]}``. The answers are stored out of ``answer_id`` order (the
    reader sorts them). Returns ``root``."""
    for subset, rows in table.items():
        questions, annotations = [], []
        for image_id, colour, qid, question, mc, answers, atype in rows:
            write_jpeg(root / subset / f"COCO_{subset}_{image_id:012d}.jpg", colour, **jpeg)
            questions.append({"image_id": image_id, "question": question, "question_id": qid})
            annotations.append({
                "question_id": qid, "image_id": image_id, "question_type": "what",
                "answer_type": atype, "multiple_choice_answer": mc,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                            for i, a in reversed(list(enumerate(answers)))]})
        root.mkdir(parents=True, exist_ok=True)
        (root / f"v2_OpenEnded_mscoco_{subset}_questions.json").write_text(json.dumps(
            {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
             "data_subtype": subset, "questions": questions}))
        (root / f"v2_mscoco_{subset}_annotations.json").write_text(json.dumps(
            {"info": {}, "data_type": "mscoco", "data_subtype": subset,
             "annotations": annotations}))
    return root
