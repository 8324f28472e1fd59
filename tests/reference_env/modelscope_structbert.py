"""Runs in the reference env: random modelscope StructBERT models, saved as modelscope saves them.

    python modelscope_structbert.py OUT_DIR [--seed N]      # build the two fixtures
    python modelscope_structbert.py --check DIR [DIR ...]   # reload written dirs, record logits

The layouts come from the modelscope package's own classes:

* ``modelscope.models.nlp.structbert.configuration.SbertConfig``: ``config.json``
  (``"model_type": "structbert"``, BERT field names plus ``adv_grad_factor`` / ``sigma`` /
  ``adv_bound`` / ``classifier_dropout``), written by its ``save_pretrained``;
* ``modelscope.models.nlp.structbert.fill_mask.SbertForMaskedLM``: ``bert.*``
  (``SbertModel``, with its pooler and the persistent ``bert.embeddings.position_ids``
  buffer) + ``cls.predictions.{transform.dense, transform.LayerNorm, decoder}.*``: no
  ``cls.seq_relationship`` and no separate ``cls.predictions.bias`` (the decoder's own
  bias is the output bias); ``decoder.weight`` is tied to the word embeddings;
* ``modelscope.models.nlp.structbert.text_classification.SbertForSequenceClassification``:
  ``bert.*`` + ``classifier.{weight,bias}`` with ``config.num_labels`` rows (3 here, from
  ``id2label``);
* the weights file: ``TorchModel.save_pretrained`` (``modelscope.models.base.base_torch_model``)
  with its default ``save_function``, ``modelscope.utils.checkpoint.save_checkpoint(...,
  with_meta=False)``, i.e. ``torch.save(model.state_dict())`` as ``pytorch_model.bin``, and
  ``configuration.json`` through ``modelscope.utils.checkpoint.save_configuration``: what the
  trainer's ``CheckpointProcessor`` writes for a fine-tuned model, and what the released
  model dirs hold (with ``vocab.txt``).

Writes ``OUT_DIR/fill_mask/`` and ``OUT_DIR/classification/``, each with ``config.json``,
``configuration.json``, ``pytorch_model.bin``, ``vocab.txt`` and ``reference.npz``
(``input_ids`` [3, 9] right-padded with 0 to lengths 9 / 5 / 2, ``token_type_ids`` (1 from
position 4), ``attention_mask`` and ``logits``: [3, 9, vocab] for fill-mask, [3, 3] for
classification, float32).

Every parameter gets Gaussian noise (biases and LayerNorms are not 0 / 1). modelscope's
``TorchModel.init_weights`` does not tie the MLM decoder to the word embeddings; loading
(``PreTrainedModel.from_pretrained``, which ``SbertPreTrainedModel._instantiate`` calls)
does, so the model is tied before the noise, as a loaded and fine-tuned model is. Each dir is
reloaded the way ``_instantiate`` loads it (``transformers.PreTrainedModel.from_pretrained``
on the dir; ``Model.from_pretrained`` itself would first parse ``configuration.json``, which
needs ``simplejson``, absent from the reference env) and must give the same logits.

``--check DIR [DIR ...]`` reloads each dir written by something else (``plug-convert --to
modelscope``) with the class its ``config.json`` names in ``architectures`` (the same
``from_pretrained``), runs it on the inputs of ``DIR/inputs.npz`` and writes
``DIR/reference.npz`` with ``logits``.
"""
import argparse
import os

import numpy as np
import torch

from modelscope.models import Model
from modelscope.models.nlp.structbert import (SbertConfig, SbertForMaskedLM,
                                              SbertForSequenceClassification)

VOCAB = 96
CONFIG = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, max_position_embeddings=32, type_vocab_size=2,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu")
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
KINDS = {
    "fill_mask": (SbertForMaskedLM, "fill-mask"),
    "classification": (SbertForSequenceClassification, "text-classification"),
}


def _load(cls, path):
    """What ``SbertPreTrainedModel._instantiate(model_dir=path)`` does after parsing labels."""
    return super(Model, cls).from_pretrained(path).eval()


def _inputs(seed):
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(1, VOCAB, (3, 9), generator=g)
    mask = torch.zeros(3, 9, dtype=torch.long)
    for row, n in enumerate((9, 5, 2)):
        mask[row, :n] = 1
    types = torch.zeros(3, 9, dtype=torch.long)
    types[:, 4:] = 1
    return ids * mask, types * mask, mask


def _logits(model, ids, types, mask):
    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
    return out.logits


def _write_vocab(path):
    tokens = ["[PAD]", "[unused1]", "[unused2]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += [f"w{i}" for i in range(VOCAB - len(tokens))]
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(tokens) + "\n")


def build(out_dir, seed):
    ids, types, mask = _inputs(seed)
    for k, (name, (cls, task)) in enumerate(KINDS.items()):
        path = os.path.join(out_dir, name)
        os.makedirs(path, exist_ok=True)
        extra = {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}} \
            if cls is SbertForSequenceClassification else {}
        config = SbertConfig(**CONFIG, **extra)
        config.architectures = [cls.__name__]
        torch.manual_seed(seed * 10 + k)
        model = cls(config)
        model.tie_weights()  # what from_pretrained does (TorchModel.init_weights does not)
        with torch.no_grad():
            for p in model.parameters():  # a tied table is one Parameter: noised once
                p.add_(0.1 * torch.randn_like(p))
        model.eval()
        if cls is SbertForMaskedLM:
            assert model.cls.predictions.decoder.weight is \
                model.bert.embeddings.word_embeddings.weight
        config.save_pretrained(path)
        _write_vocab(path)
        model.model_dir = None  # built here, not loaded: nothing to copy along
        model.save_pretrained(path, "pytorch_model.bin",
                              config={"framework": "pytorch", "task": task,
                                      "model": {"type": "structbert"}})
        logits = _logits(model, ids, types, mask)
        again = _logits(_load(cls, path), ids, types, mask)
        assert torch.equal(logits, again), f"{name}: the saved dir does not reload the model"
        np.savez(os.path.join(path, "reference.npz"), input_ids=ids.numpy(),
                 token_type_ids=types.numpy(), attention_mask=mask.numpy(),
                 logits=logits.numpy().astype(np.float32))
        print(f"wrote {path}: {len(model.state_dict())} tensors")


def check(path):
    import json

    with open(os.path.join(path, "config.json")) as f:
        arch = json.load(f)["architectures"][0]
    cls = {c.__name__: c for c, _ in KINDS.values()}[arch]
    inputs = np.load(os.path.join(path, "inputs.npz"))
    model = _load(cls, path)
    logits = _logits(model, *(torch.from_numpy(inputs[k]).long()
                              for k in ("input_ids", "token_type_ids", "attention_mask")))
    np.savez(os.path.join(path, "reference.npz"), logits=logits.numpy().astype(np.float32))
    print(f"{arch} from {path}: logits {tuple(logits.shape)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", nargs="+", default=None)
    args = ap.parse_args()
    if args.check:
        for path in args.check:
            check(path)
    else:
        build(args.out_dir, args.seed)


if __name__ == "__main__":
    main()
