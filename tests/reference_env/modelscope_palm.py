"""Runs in the reference env: a random modelscope ``PalmForTextGeneration`` (palm_v2).

    python modelscope_palm.py OUT_DIR [--seed N]
    python modelscope_palm.py --check MODEL_DIR INPUTS_NPZ OUT_NPY

Builds the model as ModelScope's ``PalmConfig`` describes it (a BERT encoder read from
``encoder_pth``, the PreSumm-style decoder, the tied ``PalmPointerGenerator``) at a tiny size,
puts Gaussian noise on every parameter (so biases and LayerNorms are not 0 / 1; the tied
generator weight stays tied), and writes into OUT_DIR:

* ``pytorch_model.bin``: ``torch.save(model.palm.state_dict())``, the summarizer's state dict,
  which ``AbsSummarizer`` loads from ``pytorch_model.bin`` (``_unwrap_checkpoint`` then
  ``load_state_dict``); it is reloaded that way here and must give the same outputs;
* ``config.json`` (ModelScope's ``PalmConfig``) and ``bert/`` (the encoder's ``config.json``
  and a ``vocab.txt`` the tokenizer needs);
* ``reference.npz``: ``src`` [2, 9] (row 0 padded with id 0 after 6 tokens), ``mask_src``,
  ``dec_in`` = ``tgt[:, :-1]`` (what ``AbsSummarizer.forward`` feeds the decoder) and
  ``log_probs`` = ``palm.generator(decoder_outputs)`` [2, 5, vocab], in float32.

and ``OUT_DIR/trainer/``, a second random model as ModelScope's trainer leaves a fine-tuned
one (``label_smoothing`` 0.1, so the loss has its buffer):

* ``pytorch_model.bin``: ``torch.save(PalmForTextGeneration.state_dict())``, written by the
  trainer's own ``modelscope.trainers.hooks.checkpoint.checkpoint_processor.
  CheckpointProcessor.save_model_state`` (``modelscope.utils.checkpoint.save_checkpoint(...,
  with_meta=False)``): ``palm.``-prefixed summarizer keys plus, from
  ``PalmForTextGeneration.loss`` (``NMTLossCompute``, ``modelscope.models.nlp.palm_v2.
  text_generation``), ``loss.generator.dense.{weight,bias}`` (the generator module again) and
  ``loss.criterion.one_hot`` (``LabelSmoothingLoss``'s buffer);
* ``config.json`` with ``encoder_pth`` relative to the dir (``"bert"``), as
  ``PalmPreTrainedModel._from_pretrained`` joins it, ``bert/`` and ``configuration.json``
  (``modelscope.utils.checkpoint.save_configuration``);
* ``reference.npz`` as above, for the model reloaded the way ``_instantiate`` loads the dir
  (``PalmForTextGeneration._from_pretrained``, whose ``AbsSummarizer`` unwraps ``palm.`` and
  loads with ``strict=False``), which must equal the trained model's.

``--check MODEL_DIR INPUTS_NPZ OUT_NPY`` loads a palm_v2 dir written by something else
(``plug-convert --family palm --to modelscope``) the way ``Model.from_pretrained`` does: the
class that ``configuration.json``'s ``model.type`` and ``task`` name in modelscope's ``MODELS``
registry, built with its ``_instantiate(model_dir=MODEL_DIR)`` (``_from_pretrained``: ModelScope's
``PalmConfig`` from ``config.json``, ``encoder_pth`` joined to the dir, the encoder config and
the tokenizer read there, ``pytorch_model.bin`` unwrapped and loaded with ``strict=False``).
Every tensor of the file must be one of the model's, and every parameter of the model must
come from the file (only the rebuilt buffers may be missing), since ``strict=False`` would
otherwise leave a misnamed tensor at its random initialisation. It then runs the summarizer
on ``src`` / ``mask_src`` / ``dec_in`` of INPUTS_NPZ (``dec_in`` is what ``AbsSummarizer``
feeds the decoder, ``tgt[:, :-1]``) and saves ``palm.generator``'s log-probabilities
[batch, dec_len, vocab] (float32) to OUT_NPY.
"""
import argparse
import os

import numpy as np
import torch
from transformers import BertConfig

from modelscope.models.nlp.palm_v2.configuration import PalmConfig
from modelscope.models.nlp.palm_v2.text_generation import AbsSummarizer, PalmForTextGeneration

VOCAB = 96
BERT = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=256, max_position_embeddings=64, type_vocab_size=2,
            layer_norm_eps=1e-12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
DECODER = dict(dec_layers=3, dec_hidden_size=64, dec_heads=4, dec_ff_size=256, dec_dropout=0.0,
               label_smoothing=0.0)


def _bert_dir(out_dir):
    bert_dir = os.path.join(out_dir, "bert")
    os.makedirs(bert_dir, exist_ok=True)
    BertConfig(**BERT).save_pretrained(bert_dir)
    special = ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = ["[PAD]", "[unused1]", "[unused2]"] + special
    tokens += [f"w{i}" for i in range(VOCAB - len(tokens))]
    with open(os.path.join(bert_dir, "vocab.txt"), "w") as f:
        f.write("\n".join(tokens) + "\n")
    return bert_dir


def _noise(model):
    with torch.no_grad():
        for p in model.parameters():  # the tied table is one Parameter: noised once
            p.add_(0.1 * torch.randn_like(p))


def _log_probs(summarizer, src, tgt, mask_src):
    with torch.no_grad():
        decoder_outputs, _, _ = summarizer(src, tgt, mask_src)
        return summarizer.generator(decoder_outputs)


def trainer_saved(out_dir, seed):
    """OUT_DIR/trainer: what ModelScope's trainer writes for a fine-tuned PALM (docstring)."""
    import json

    from modelscope.trainers.hooks.checkpoint.checkpoint_processor import CheckpointProcessor
    from modelscope.utils.checkpoint import save_configuration

    bert_dir = _bert_dir(out_dir)
    config = PalmConfig(encoder="bert", encoder_pth=bert_dir, max_pos=512,
                        **dict(DECODER, label_smoothing=0.1))
    torch.manual_seed(seed + 100)
    model = PalmForTextGeneration(config).eval()
    _noise(model.palm)
    assert model.loss.generator is model.palm.generator
    sd = model.state_dict()
    assert "loss.criterion.one_hot" in sd and "loss.generator.dense.weight" in sd
    CheckpointProcessor().save_model_state(model, os.path.join(out_dir, "pytorch_model.bin"))
    config.save_pretrained(out_dir)
    path = os.path.join(out_dir, "config.json")
    with open(path) as f:
        saved = json.load(f)
    saved["encoder_pth"] = "bert"  # relative to the model dir, as the released dirs have it
    with open(path, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
    save_configuration(out_dir, {"framework": "pytorch", "task": "text-generation",
                                 "model": {"type": "palm-v2"}})

    src = torch.randint(7, VOCAB, (2, 9))
    src[0, 6:] = 0
    mask_src = (src != 0).long()
    tgt = torch.randint(7, VOCAB, (2, 6))
    reloaded = PalmForTextGeneration._from_pretrained(out_dir).eval()
    want = _log_probs(model.palm, src, tgt, mask_src)
    got = _log_probs(reloaded.palm, src, tgt, mask_src)
    assert torch.equal(want, got), "the trainer-saved dir does not reload the same model"
    np.savez(os.path.join(out_dir, "reference.npz"), src=src.numpy(),
             mask_src=mask_src.numpy(), dec_in=tgt[:, :-1].numpy(),
             log_probs=got.numpy().astype(np.float32))
    print(f"wrote {out_dir}: {len(sd)} tensors (PalmForTextGeneration.state_dict())")


def check(model_dir, inputs_path, out_path):
    """``--check``: a dir written by plug-convert, loaded as Model.from_pretrained would."""
    import json

    from modelscope.models.builder import MODELS

    # Model.from_pretrained(model_dir) itself parses configuration.json with modelscope's
    # Config.from_file, which needs simplejson (absent from this env); the rest of its path is
    # done here by hand: the registered class for (task, model.type), then build_from_cfg's
    # cls._instantiate(model_dir=...).
    with open(os.path.join(model_dir, "configuration.json")) as f:
        cfg = json.load(f)
    cls = MODELS.get(cfg["model"]["type"], group_key=cfg["task"])
    assert cls is PalmForTextGeneration, (cfg, cls)
    model = cls._instantiate(model_dir=model_dir).eval()
    summarizer = model.palm

    sd = torch.load(os.path.join(model_dir, "pytorch_model.bin"), weights_only=True)
    ours = summarizer.state_dict()
    unknown = sorted(set(AbsSummarizer._unwrap_checkpoint(sd)) - set(ours))
    assert not unknown, f"tensors the model does not have (strict=False drops them): {unknown}"
    params = {name for name, _ in summarizer.named_parameters(remove_duplicate=False)}
    missing = sorted(params - set(AbsSummarizer._unwrap_checkpoint(sd)))
    assert not missing, f"parameters left at their initialisation: {missing}"

    inputs = np.load(inputs_path)
    src = torch.from_numpy(inputs["src"]).long()
    mask_src = torch.from_numpy(inputs["mask_src"]).long()
    dec_in = torch.from_numpy(inputs["dec_in"]).long()
    tgt = torch.cat([dec_in, torch.zeros_like(dec_in[:, :1])], 1)  # forward drops the last
    log_probs = _log_probs(summarizer, src, tgt, mask_src)
    np.save(out_path, log_probs.numpy().astype(np.float32))
    print(f"{cls.__name__} from {model_dir} (encoder {model.config.encoder}, "
          f"{len(sd)} tensors): log-probs {tuple(log_probs.shape)} -> {out_path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", nargs=3, metavar=("MODEL_DIR", "INPUTS_NPZ", "OUT_NPY"))
    args = ap.parse_args()
    if args.check:
        check(*args.check)
        return
    if args.out_dir is None:
        ap.error("OUT_DIR (or --check) is required")
    bert_dir = _bert_dir(args.out_dir)
    config = PalmConfig(encoder="bert", encoder_pth=bert_dir, max_pos=512, **DECODER)
    config.save_pretrained(args.out_dir)

    torch.manual_seed(args.seed)
    model = PalmForTextGeneration(config).eval()
    palm = model.palm
    _noise(palm)
    assert palm.generator.dense.weight is palm.decoder.embeddings.weight
    path = os.path.join(args.out_dir, "pytorch_model.bin")
    torch.save(palm.state_dict(), path)

    src = torch.randint(7, VOCAB, (2, 9))
    src[0, 6:] = 0
    mask_src = (src != 0).long()
    tgt = torch.randint(7, VOCAB, (2, 6))
    reloaded = AbsSummarizer(config, checkpoint=torch.load(path, weights_only=True)).eval()
    with torch.no_grad():
        outs = []
        for summarizer in (palm, reloaded):
            decoder_outputs, _, _ = summarizer(src, tgt, mask_src)
            outs.append(summarizer.generator(decoder_outputs))
    assert torch.equal(outs[0], outs[1]), "the saved state dict does not reload the same model"
    np.savez(os.path.join(args.out_dir, "reference.npz"), src=src.numpy(),
             mask_src=mask_src.numpy(), dec_in=tgt[:, :-1].numpy(),
             log_probs=outs[0].numpy().astype(np.float32))
    print(f"wrote {args.out_dir}: {len(palm.state_dict())} tensors")
    trainer_saved(os.path.join(args.out_dir, "trainer"), args.seed)


if __name__ == "__main__":
    main()
