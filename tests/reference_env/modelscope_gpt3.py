"""Runs in the reference env: a random modelscope ``GPT3Model``, saved as ModelScope reads it.

    python modelscope_gpt3.py OUT_DIR [--seed N]
    python modelscope_gpt3.py --check MODEL_DIR IDS_NPY OUT_NPY   # load a folder, run it

Writes into OUT_DIR:
* ``config.json`` (``GPT3Config.save_pretrained``, less one alias: see below) and ``pytorch_model.bin``
  (``torch.save(model.state_dict())``): the two files ``GPT3Model.from_pretrained`` reads;
* ``reference.npz``: ``ids`` [2, 7] and ``ids_long`` [1, 16] (random token ids) and the
  model's ``logits`` / ``logits_long`` for them, in float32.

The weights are the model's own init plus Gaussian noise on every tensor, so biases and
LayerNorm parameters are not at their trivial 0 / 1. Before writing the reference the file is
reloaded with ``GPT3Model.from_pretrained`` and must give the same logits.

``modelscope.models.nlp.gpt3.backbone`` imports ``sample`` from ``distributed_gpt3``, whose
module imports Megatron (``megatron_util``, an empty placeholder on PyPI). ``sample`` is
used only by ``generate``; a stand-in module that provides it (and raises if called) lets
the plain-torch backbone import. Nothing of the forward pass is replaced.
"""
import argparse
import json
import os
import sys
import types

import numpy as np
import torch

_stub = types.ModuleType("modelscope.models.nlp.gpt3.distributed_gpt3")


def _no_sample(*args, **kwargs):
    raise RuntimeError("generation is not part of the parity reference")


_stub.sample = _no_sample
sys.modules[_stub.__name__] = _stub

from modelscope.models.nlp.gpt3.backbone import GPT3Model  # noqa: E402
from modelscope.models.nlp.gpt3.configuration import GPT3Config  # noqa: E402

# The test reads the same numbers from config.json, not from here.
CONFIG = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=16, layernorm_epsilon=1e-5, hidden_dropout=0.0,
              attention_dropout=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def check(model_dir, ids_path, out_path):
    """Loads MODEL_DIR as modelscope does (``GPT3Model.from_pretrained``: its config.json and
    pytorch_model.bin; plug-convert --to modelscope's output) and writes its float32 logits
    for the ids in IDS_NPY. Every parameter must come from the file: strict loading of the
    file's state dict into the loaded model must report no missing or unexpected key."""
    model = GPT3Model.from_pretrained(model_dir).eval()
    sd = torch.load(os.path.join(model_dir, "pytorch_model.bin"), weights_only=True)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise SystemExit(f"{model_dir}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        logits = model(torch.from_numpy(np.load(ids_path))).logits
    np.save(out_path, logits.numpy().astype(np.float32))
    print(f"checked {model_dir}: logits {tuple(logits.shape)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", nargs=3, metavar=("MODEL_DIR", "IDS_NPY", "OUT_NPY"))
    args = ap.parse_args()
    if args.check:
        return check(*args.check)
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(args.seed)
    config = GPT3Config(**CONFIG)
    model = GPT3Model(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    config.save_pretrained(args.out_dir)
    # GPT3Config passes layernorm_epsilon on as transformers' layer_norm_eps, and
    # save_pretrained writes both; its own from_pretrained then fails ("multiple values for
    # keyword argument 'layer_norm_eps'"). The released config.json files carry only
    # layernorm_epsilon, so the alias is dropped, as they have it.
    path = os.path.join(args.out_dir, "config.json")
    with open(path) as f:
        saved = json.load(f)
    saved.pop("layer_norm_eps")
    with open(path, "w") as f:
        json.dump(saved, f, indent=2)
    torch.save(model.state_dict(), os.path.join(args.out_dir, "pytorch_model.bin"))

    ids = torch.randint(0, CONFIG["vocab_size"], (2, 7))
    ids_long = torch.randint(0, CONFIG["vocab_size"], (1, CONFIG["max_position_embeddings"]))
    reloaded = GPT3Model.from_pretrained(args.out_dir).eval()
    out = {"ids": ids.numpy(), "ids_long": ids_long.numpy()}
    with torch.no_grad():
        for name, x in (("logits", ids), ("logits_long", ids_long)):
            logits = model(x).logits
            again = reloaded(x).logits
            assert torch.equal(logits, again), "from_pretrained did not restore the same model"
            out[name] = logits.numpy().astype(np.float32)
    np.savez(os.path.join(args.out_dir, "reference.npz"), **out)
    print(f"wrote {args.out_dir}: {len(model.state_dict())} tensors")


if __name__ == "__main__":
    main()
