"""A converted checkpoint is usable: it carries its vocabulary, plug-infer / plug-train /
plug-export run on it (runs/converted.gin), and ``--to hf`` goes back to transformers.

The inputs are written as the released code lays them out:

* GPT-3: a ModelScope ``GPT3Model`` folder (``config.json`` + ``pytorch_model.bin``,
  ``plug-convert --to modelscope``'s ``save_modelscope``, the layout of
  ``modelscope.models.nlp.gpt3.backbone`` that tests/convert/test_modelscope_gpt3.py checks
  against the real class) with the ``vocab.txt`` that ``GPT3ForTextGeneration`` hands to
  ``BertTokenizer.from_pretrained(model_dir)``;
* PALM: the ModelScope palm_v2 ``pytorch_model.bin`` that ``plug-convert --to modelscope``
  writes (checked against modelscope's classes in tests/convert/test_palm.py), with the same
  kind of ``vocab.txt``.

The vocabulary is the Shop World WordPiece one (1508 BERT-style tokens, CJK characters as
single pieces). Every CLI command runs in one subprocess (``DRIVER``), as plug-convert,
plug-train, plug-infer and plug-export would; the tests read its captured output. The
transformers comparison runs here: ``GPT2LMHeadModel.from_pretrained`` of the ``--to hf``
folder must give GPT3LM's logits within 1e-4, and ``AutoTokenizer`` the same ids.
"""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax.families.gpt3 import GPT3Config, GPT3LM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPT = "红色棉质连衣裙"
VOCAB_ROWS = 1536  # >= the 1508 vocabulary tokens, a multiple of 128

DRIVER = r'''
import contextlib, io, json, sys, traceback
job = json.loads(sys.argv[1])
results = {}
for name, module, argv in job["commands"]:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if module == "convert":
                from plug_jax.convert.cli import main as fn
            elif module == "export":
                from plug_jax.export import main as fn
            else:
                from plug_jax.main import run as fn
            rc = fn(argv)
    except SystemExit as e:
        rc = e.code
    except BaseException:
        rc = "exception"
        err.write(traceback.format_exc())
    results[name] = {"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}
    with open(job["results"], "w") as f:
        json.dump(results, f)
'''


def _random_params(module, *args):
    p = nn.unbox(module.init(jax.random.PRNGKey(0), *args)["params"])
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda x: (np.asarray(x) + 0.05 * rng.standard_normal(x.shape)).astype(np.float32), p)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from plug_jax.data.wordpiece import shop_world_vocab_lines
    from plug_jax.families.gpt3.convert_modelscope import save_modelscope
    from plug_jax.families.palm import PalmConfig, PalmModel
    from plug_jax.trainer import checkpointing

    tmp = tmp_path_factory.mktemp("converted")
    vocab_lines = shop_world_vocab_lines(0)
    vocab_txt = "\n".join(vocab_lines) + "\n"

    # GPT-3: a ModelScope folder with vocab.txt beside the weights
    cfg = GPT3Config.from_preset("tiny", vocab_size=VOCAB_ROWS, scan_layers=False)
    params = _random_params(GPT3LM(cfg), jnp.zeros((1, 4), jnp.int32))
    ms = tmp / "gpt3_modelscope"
    ms.mkdir()
    save_modelscope(cfg, params, str(ms))
    (ms / "vocab.txt").write_text(vocab_txt, encoding="utf-8")
    small = tmp / "gpt3_small_table"  # an embedding table smaller than the vocabulary
    small.mkdir()
    cfg_small = cfg.replace(vocab_size=1024)
    save_modelscope(cfg_small, _random_params(GPT3LM(cfg_small),
                                                        jnp.zeros((1, 4), jnp.int32)), str(small))
    (small / "vocab.txt").write_text(vocab_txt, encoding="utf-8")

    # PALM: our tiny model written in the ModelScope layout, then vocab.txt beside it
    pcfg = PalmConfig.from_preset("tiny", vocab_size=VOCAB_ROWS, copy=False, scan_layers=False)
    ids = jnp.ones((1, 4), jnp.int32)
    pparams = _random_params(PalmModel(pcfg), ids, ids)
    ours = str(tmp / "palm_ours")
    checkpointing.save_params(ours, pparams, config_dict=dataclasses.asdict(pcfg),
                              metadata={"family": "palm", "preset": "tiny", "scanned": False})
    palm_ms = tmp / "palm_modelscope"

    jsonl = tmp / "train.jsonl"
    texts = ["红色棉质连衣裙，柔软透气。", "蓝色皮革钱包，做工精致。", "白色帆布鞋，轻便舒适。",
             "黑色羊毛外套，保暖有型。"] * 10
    jsonl.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                             for t in texts), encoding="utf-8")

    conv, pconv = tmp / "gpt3_conv", tmp / "palm_conv"
    fine, hf, hf2 = tmp / "finetuned", tmp / "gpt3_hf", tmp / "finetuned_hf"
    gpt3 = ["--gin_file=experiments/gpt3/shop_tiny.gin"]
    short = ["--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4", "--gin.EVAL_STEPS=1",
             "--gin.LOG_PERIOD=1", "--gin.EVAL_PERIOD=2", "--gin.CHECKPOINT_PERIOD=2",
             "--gin.EVAL_BASELINE=False", "--gin.TASK_FEATURE_LENGTHS={'targets': 32}"]
    infer = [f"--gin.PROMPTS=['{PROMPT}']", "--gin.MAX_NEW_TOKENS=3",
             "--gin.DECODE_METHODS=['greedy']"]
    converted = ["--gin_file=runs/converted.gin", f"--gin.CONVERTED='{conv}'"]
    local = ["--gin_file=runs/local_data.gin", f"--gin.LOCAL_TRAIN='{jsonl}'"]
    commands = [
        ("import", "convert", ["--family", "gpt3", "--source", "modelscope", "--input",
                               str(ms), "--output", str(conv), "--scan_layers", "false"]),
        ("too_big", "convert", ["--family", "gpt3", "--source", "modelscope", "--input",
                                str(small), "--output", str(tmp / "never")]),
        ("infer", "main", ["--mode=infer", *gpt3, *converted, f"--gin.MODEL_DIR='{conv}'",
                           *infer]),
        ("finetune", "main", ["--mode=train", *gpt3, *local, *converted,
                              f"--gin.MODEL_DIR='{fine}'", *short]),
        ("wrong_vocab", "main", ["--mode=train", *gpt3, *converted,
                                 f"--gin.MODEL_DIR='{tmp / 'never_trained'}'", *short]),
        ("infer_finetuned", "main", ["--mode=infer", *gpt3, *local, *converted,
                                     f"--gin.MODEL_DIR='{fine}'", *infer]),
        ("to_hf", "convert", ["--family", "gpt3", "--to", "hf", "--input", str(conv),
                              "--output", str(hf)]),
        ("export_hf", "export", [*gpt3, "--gin_file=runs/export.gin", *local, *converted,
                                 f"--gin.MODEL_DIR='{fine}'", f"--gin.EXPORT_DIR='{hf2}'",
                                 "--to", "hf"]),
        ("palm_to_modelscope", "convert", ["--family", "palm", "--to", "modelscope",
                                           "--input", ours, "--output", str(palm_ms)]),
    ]
    def run(cmds):
        results = tmp / f"results_{cmds[0][0]}.json"
        job = {"commands": cmds, "results": str(results)}
        env = dict(os.environ, XLA_FLAGS=os.environ["PLUG_JAX_TEST_XLA_FLAGS"])
        env["JAX_PLATFORMS"] = "cpu"
        out = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(job)], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=900)
        assert results.exists(), out.stderr[-3000:]
        return json.loads(results.read_text())

    res = run(commands)
    # the PALM folder needs its vocab.txt before the import (second driver run)
    (palm_ms / "vocab.txt").write_text(vocab_txt, encoding="utf-8")
    res.update(run([
        ("palm_import", "convert", ["--family", "palm", "--source", "modelscope", "--input",
                                    str(palm_ms), "--output", str(pconv), "--preset", "tiny",
                                    "--vocab_size", str(VOCAB_ROWS)]),
        ("palm_infer", "main", ["--mode=infer",
                                "--gin_file=experiments/palm/shop_title_tiny.gin",
                                "--gin_file=runs/converted.gin", f"--gin.CONVERTED='{pconv}'",
                                f"--gin.MODEL_DIR='{pconv}'", *infer]),
    ]))
    return {"tmp": tmp, "res": res, "cfg": cfg, "params": params, "conv": conv, "hf": hf,
            "hf2": hf2, "fine": fine, "pconv": pconv, "vocab_lines": vocab_lines}


def _ok(built, name):
    r = built["res"][name]
    assert r["rc"] == 0, f"{name}: rc {r['rc']}\n{r['stderr'][-3000:]}\n{r['stdout'][-2000:]}"
    return r["stdout"]


def _error_line(built, name):
    r = built["res"][name]
    assert r["rc"] == 2, f"{name}: rc {r['rc']}\n{r['stderr'][-3000:]}"
    lines = [ln for ln in r["stderr"].splitlines() if ln.strip()]
    assert len(lines) == 1, r["stderr"]
    return lines[0]


def test_import_carries_the_vocabulary(built):
    out = _ok(built, "import")
    conv = built["conv"]
    meta = json.loads((conv / "metadata.json").read_text())
    assert meta["vocabulary"] == {"kind": "wordpiece", "file": "vocab/vocab.txt",
                                  "size": 1508, "do_lower_case": True}
    assert (conv / "vocab" / "vocab.txt").read_text(encoding="utf-8").split("\n")[:1508] == \
        built["vocab_lines"]
    assert "vocabulary: wordpiece vocab.txt (1508 tokens, embedding rows 1536) -> " \
           "vocab/vocab.txt" in out


def test_vocabulary_larger_than_the_table_is_one_line(built):
    line = _error_line(built, "too_big")
    assert "has 1508 tokens but the checkpoint's embedding table has 1024 rows" in line
    assert not (built["tmp"] / "never").exists()


def _greedy(cfg, params, ids, n):
    """Greedy continuation by full forward passes (no cache, independent of decoding.py)."""
    ids = list(ids)
    model = GPT3LM(cfg)
    for _ in range(n):
        logits = model.apply({"params": params}, jnp.asarray([ids], jnp.int32))
        ids.append(int(np.argmax(np.asarray(logits)[0, -1])))
    return ids


def test_infer_on_the_converted_folder_uses_its_vocabulary(built):
    from plug_jax.data.wordpiece import WordPieceVocabulary
    out = _ok(built, "infer")
    vocab = WordPieceVocabulary(str(built["conv"] / "vocab" / "vocab.txt"))
    ids = [int(i) for i in vocab.encode(PROMPT)]
    assert len(ids) == len(PROMPT)  # one WordPiece per CJK character
    assert f"vocabulary carried by {built['conv']}: WordPiece vocab.txt, 1508 tokens" in out
    shown = " ".join(map(str, ids))
    assert f"tokenize '{PROMPT}' -> {len(ids)} ids [{shown}] -> detokenize '{PROMPT}'" in out
    # the continuation is the converted weights' own greedy one (not a fresh init)
    want = _greedy(built["cfg"], built["params"], ids, 3)[len(ids):]
    eos = vocab.eos_id
    want = want[:want.index(eos)] if eos in want else want
    assert f"[greedy] {PROMPT} ▸ {vocab.decode(want)}" in out


def test_finetune_on_user_jsonl_from_the_converted_checkpoint(built):
    out = _ok(built, "finetune")
    assert f"parameter arrays from converted checkpoint {built['conv']} (from modelscope" in out
    rows = [json.loads(x) for x in (built["fine"] / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/loss" in r for r in rows)
    assert (built["fine"] / "checkpoints" / "2").is_dir()
    out = _ok(built, "infer_finetuned")
    assert f"continuations from {built['fine']} @ step 2" in out


def test_training_with_another_vocabulary_is_refused(built):
    line = _error_line(built, "wrong_vocab")
    assert "carries vocabulary vocab.txt, but task gpt3_shoplm_zh_v1 tokenizes with" in line
    assert "runs/local_data.gin" in line
    assert not (built["tmp"] / "never_trained").exists()


def _hf_logits_match(folder, cfg, params, ids):
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits.numpy()
    ours = np.asarray(GPT3LM(cfg).apply({"params": params}, jnp.asarray([ids], jnp.int32)))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert type(tok).__name__.startswith("BertTokenizer")
    return tok(PROMPT, add_special_tokens=False)["input_ids"]


def test_to_hf_loads_in_transformers_with_the_vocabulary(built):
    from plug_jax.data.wordpiece import WordPieceVocabulary
    out = _ok(built, "to_hf")
    assert "vocabulary: wordpiece vocab.txt (1508 tokens) -> vocab.txt, config.json special " \
           "token ids, tokenizer_config.json" in out
    vocab = WordPieceVocabulary(str(built["hf"] / "vocab.txt"))
    ids = [int(i) for i in vocab.encode(PROMPT)]
    assert _hf_logits_match(built["hf"], built["cfg"], built["params"], ids) == ids
    # GPT-2 gets no token_type_ids from the tokenizer, and the vocabulary's special ids
    from transformers import AutoConfig, AutoTokenizer
    assert "token_type_ids" not in AutoTokenizer.from_pretrained(str(built["hf"]))(PROMPT)
    hf_cfg = AutoConfig.from_pretrained(str(built["hf"]))
    assert (hf_cfg.bos_token_id, hf_cfg.eos_token_id, hf_cfg.pad_token_id) == \
        (vocab.cls_id, vocab.sep_id, 0)


def test_plug_export_to_hf_of_the_finetuned_run(built):
    from plug_jax.families.gpt3.convert_hf import from_transformers
    from plug_jax.trainer import checkpointing
    _ok(built, "export_hf")
    hf2 = built["hf2"]
    assert (hf2 / "vocab.txt").read_text(encoding="utf-8").split("\n")[:1508] == \
        built["vocab_lines"]
    # the fine-tuned weights (step 2), not the converted ones
    cfg, params = from_transformers(str(hf2), scan_layers=False)
    _, before, _ = checkpointing.load_params(str(built["conv"]))
    diff = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a) - b))),
                                  params, before)
    assert max(jax.tree_util.tree_leaves(diff)) > 0
    ids = [5, 6, 7, 8]
    _hf_logits_match(hf2, cfg, params, ids)


def test_palm_converted_folder_infers_with_its_vocabulary(built):
    _ok(built, "palm_to_modelscope")
    out = _ok(built, "palm_import")
    assert "vocabulary: wordpiece vocab.txt (1508 tokens, embedding rows 1536)" in out
    out = _ok(built, "palm_infer")
    assert f"vocabulary carried by {built['pconv']}: WordPiece vocab.txt, 1508 tokens" in out
    assert f"-> detokenize '{PROMPT}'" in out
    assert f"[greedy] {PROMPT} ▸ " in out
