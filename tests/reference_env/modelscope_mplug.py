"""Runs in the reference env: random tiny modelscope mPLUG models (VQA, caption, retrieval).

    python modelscope_mplug.py OUT_DIR [--seed N]

For each of ``MPlugForVisualQuestionAnswering``, ``MPlugForImageCaption`` and
``MPlugForImageTextRetrieval`` (``modelscope.models.multi_modal.mplug.modeling_mplug``,
modelscope 1.40.2) this builds the class offline at a tiny size, puts seeded noise on every
parameter (LayerNorm weights leave 1, biases leave 0, the zero-initialised visual position
table gets values, so a wrong mapping cannot pass), and writes ``OUT_DIR/<task>/`` exactly as a
released modelscope mPLUG model dir is laid out and read:

* ``pytorch_model.bin``: ``torch.save(model.state_dict())`` of the ``MPlug*`` class (the names
  a released checkpoint has after ``MPlug.from_pretrained`` strips ``model.`` and unwraps
  ``'model'`` / ``'module'``);
* ``config.yaml``: the ``MPlugConfig`` keyword arguments; ``MPlug.from_pretrained`` reads this
  file (``CONFIG_NAME = 'config.yaml'``, ``MPlugConfig.from_yaml_file``), not a ``config.json``;
* ``config_bert.json``: the BERT config, read by ``MPlug.module_setting`` through
  ``config.bert_config`` and joined to ``config.model_dir``, with mPLUG's extra keys
  (``text_encoder_layers``, ``fusion_layers``, ``text_decode_layers``, ``stride_layer``,
  ``encoder_width``, ``fusion_layer``);
* ``vocab.txt``: read by ``MPlug.__init__`` (``BertTokenizer``); the BERT-uncased special ids
  ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103) are kept because
  ``predictor.TextGenerator`` hard-codes start 101 / end 102;
* ``configuration.json``: ``{"framework": "pytorch", "task": ..., "model": {"type": "mplug"}}``,
  which ``Model.from_pretrained`` uses to pick ``MPlugForAllTasks``.

The dir is then reloaded the way modelscope does (``MPlugForAllTasks(model_dir, task=...)``,
whose ``__init__`` calls ``MPlug.from_pretrained(model_dir, task)``: config.yaml ->
``MPlugConfig``, ``model_dir`` set, ``task_mapping[task](config)``, ``torch.load`` of
pytorch_model.bin, ``load_state_dict(strict=False)``); the script exits non-zero unless no key
is missing or unexpected and every reloaded tensor equals the saved one. All outputs below come
from the reloaded model.

Shared inputs, ``OUT_DIR/inputs.npz``: ``image`` [2, 3, 48, 48] float32; ``question_ids`` /
``question_mask`` [2, 6] (row 0 padded after 4 tokens), used as the VQA question and as the
retrieval text; ``answer_ids`` / ``answer_mask`` [2, 5] ([CLS] ... [SEP], row 1 padded), used
as the VQA answer and the caption (teacher forcing). int64 ids, int64 masks.

``OUT_DIR/<task>/outputs.npz`` (float32), each computed with the submodule calls of the
class's own ``forward`` (quoted in the functions below), and cross-checked against the class's
``forward`` itself where it returns something (loss / ITM scores):

* vqa: ``vision_ln_post`` (``visual_encoder.visual(image, skip_last_layer=True)``, all tokens
  after ``ln_post``, width 768), ``vision_embeds`` (after ``visn_fc`` + ``visn_layer_norm``),
  ``text_embeds`` (text encoder), ``fused_image`` / ``fused_text`` (fusion encoder outputs),
  ``fused_states`` ([fused image; fused text], the decoder's cross-attention memory) and
  ``fused_mask``, ``decoder_logits`` [B, La, V] (``text_decoder(answer_ids, ...).logits``,
  position t predicts token t+1), and ``loss`` (``forward(train=True)``'s per-example loss,
  reproduced from the logits);
* caption: ``vision_ln_post``, ``vision_embeds``, ``decoder_logits`` [B, Lc, V] (the
  ``BertPrefixModel`` decoder over the image tokens only; no prompt: generation starts from
  [CLS]) and ``loss`` (``forward(train=True)``, a mean over tokens);
* retrieval: ``vision_ln_post``, ``vision_embeds``, ``text_embeds``, ``image_feat`` /
  ``text_feat`` [B, embed_dim] (ITC features, ``F.normalize(vision_proj(image_embeds[:, 0]))``,
  ``F.normalize(text_proj(text_embeds[:, 0]))``), ``sim_i2t`` = image_feat @ text_feat.T / temp
  (the in-batch block of the training ``sim_i2t``; ``sim_t2i`` is its transpose), ``temp``,
  ``itm_logits`` [B_image, B_text, 2] (``itm_head`` on the fused CLS of every pair) and
  ``itm_scores`` [B, 2] (``forward(train=False)``: softmax of the matched pairs, equal to
  softmax(itm_logits[i, i])).

``OUT_DIR/manifest.json``: per task, the files, the config values, the module/class each
top-level submodule comes from, the code paths, and every state-dict key with shape and dtype.

Standard library, numpy, torch and modelscope only (never plug_jax); runs offline.
"""
import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MODELSCOPE_OFFLINE", "1")


def _timm_stub():
    """modelscope's mplug package imports mvit.py (HiTeA), which needs only
    ``timm.models.layers.trunc_normal_``; timm itself (and torchvision) is not installed."""
    root = tempfile.mkdtemp(prefix="mplug_timm_stub_")
    pkg = os.path.join(root, "timm", "models", "layers")
    os.makedirs(pkg)
    for d in (os.path.join(root, "timm"), os.path.join(root, "timm", "models")):
        open(os.path.join(d, "__init__.py"), "w").close()
    with open(os.path.join(pkg, "__init__.py"), "w") as f:
        f.write("from torch.nn.init import trunc_normal_  # stub for modelscope mvit.py\n")
    sys.path.insert(0, root)


_timm_stub()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402  (a modelscope dependency; MPlugConfig.from_yaml_file uses it)

from modelscope.models.multi_modal.mplug import modeling_mplug as mm  # noqa: E402
from modelscope.models.multi_modal.mplug_for_all_tasks import MPlugForAllTasks  # noqa: E402

VOCAB = 128
IMAGE_RES = 48  # 3 x 3 patches of 16 (+ CLS) = 10 vision tokens
# The BERT config shared by the text encoder, the fusion module and the decoder
# (MPlug.module_setting reads it three times and overrides num_hidden_layers for two).
BERT = dict(
    architectures=["BertForMaskedLM"], model_type="bert", vocab_size=VOCAB, hidden_size=64,
    num_hidden_layers=5, num_attention_heads=4, intermediate_size=128, hidden_act="gelu",
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=40,
    type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
    # mPLUG's extra keys:
    text_encoder_layers=2,   # config_encoder.num_hidden_layers
    text_decode_layers=2,    # config_decoder.num_hidden_layers (+ add_cross_attention)
    fusion_layers=4,         # fusion uses layers [num_hidden_layers - 4, 5) = 1..4; layer 0 unused
    stride_layer=2,          # relative fusion layer r is "connected" iff r != 0 and r % 2 == 0
    encoder_width=64,        # cross-attention K/V input width = hidden (vision goes via visn_fc)
    fusion_layer=0,          # only read by BertLayer for list-valued encoder states (unused)
)
# MPlugConfig: CLIP ViT-B/16 layout with width 768 (_initialize_clip hard-codes 768 for
# 'ViT-B-16' in clip_name) and 1 layer; a tiny unused CLIP text tower; vision_width 768 !=
# hidden 64, so module_setting adds visn_fc / visn_layer_norm (the "large" path).
MPLUG = dict(
    bert_config="config_bert.json", image_res=IMAGE_RES, vision_width=768, distill=False,
    clip_name="ViT-B-16", clip_embed_dim=32, clip_image_resolution=32, clip_vision_layers=1,
    clip_vision_width=768, clip_vision_patch_size=16, clip_context_length=8, clip_vocab_size=64,
    clip_transformer_width=32, clip_transformer_heads=2, clip_transformer_layers=1,
    queue_size=8, embed_dim=16, temp=0.07, momentum=0.995, alpha=0.4,
    min_length=1, max_length=5, beam_size=2,
)
TASKS = {  # directory -> (modelscope Tasks value, class, config overrides)
    "vqa": ("visual-question-answering", mm.MPlugForVisualQuestionAnswering, {}),
    "caption": ("image-captioning", mm.MPlugForImageCaption, {}),
    # distill=True: released retrieval checkpoints carry the *_m momentum copies (and always the
    # queues); the eval path and the outputs here never touch them.
    "retrieval": ("image-text-retrieval", mm.MPlugForImageTextRetrieval, {"distill": True}),
}


def _vocab():
    toks = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)]
    toks += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += [f"w{i}" for i in range(VOCAB - len(toks))]
    assert len(toks) == VOCAB
    return toks


def _write_dir(path, task, overrides):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(_vocab()) + "\n")
    with open(os.path.join(path, "config_bert.json"), "w") as f:
        json.dump(BERT, f, indent=2, sort_keys=True)
    cfg = dict(MPLUG, task=task, **overrides)
    with open(os.path.join(path, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=True)
    with open(os.path.join(path, "configuration.json"), "w") as f:
        json.dump({"framework": "pytorch", "task": task,
                   "model": {"type": "mplug"}}, f, indent=2)
    return cfg


def _noise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "temp":
                p.mul_(1.0 + 0.2 * torch.rand((), generator=gen))
            elif p.dim() <= 1:  # biases, LayerNorm weights/biases, class embedding
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _inputs(gen):
    image = torch.randn(2, 3, IMAGE_RES, IMAGE_RES, generator=gen)
    q = torch.randint(104, VOCAB, (2, 6), generator=gen)
    q[:, 0], q[0, 3], q[1, 5] = 101, 102, 102
    q[0, 4:] = 0
    a = torch.randint(104, VOCAB, (2, 5), generator=gen)
    a[:, 0], a[0, 4], a[1, 3] = 101, 102, 102
    a[1, 4:] = 0
    return dict(image=image, question_ids=q, question_mask=(q != 0).long(),
                answer_ids=a, answer_mask=(a != 0).long())


class _Ids:  # what the forward methods read: .input_ids / .attention_mask (addict.Dict there)
    def __init__(self, ids, mask):
        self.input_ids, self.attention_mask = ids, mask


def _vision(model, image):
    """MPlugFor*.forward: ``image_embeds = self.visual_encoder.visual(image,
    skip_last_layer=True)``; ``if self.large: image_embeds = self.dropout(self.visn_layer_norm(
    self.visn_fc(image_embeds)))``; ``image_atts = ones``."""
    ln_post = model.visual_encoder.visual(image, skip_last_layer=True)
    embeds = model.dropout(model.visn_layer_norm(model.visn_fc(ln_post))) if model.large \
        else ln_post
    return ln_post, embeds, torch.ones(embeds.shape[:-1], dtype=torch.long)


def _fuse(model, text_embeds, text_mask, image_embeds, image_atts):
    # FusionEncoder adds the connected layers' vision output into encoder_hidden_states IN
    # PLACE (``encoder_hidden_states += ...``): pass a clone so image_embeds stays intact.
    return model.fusion_encoder(encoder_embeds=text_embeds, attention_mask=text_mask,
                                encoder_hidden_states=image_embeds.clone(),
                                encoder_attention_mask=image_atts, return_dict=False)


def run_vqa(model, x):
    """MPlugForVisualQuestionAnswering.forward(train=True, distill False, k None): vision
    (_vision), ``text_encoder(question.input_ids, attention_mask=question.attention_mask,
    return_dict=True).last_hidden_state``, ``fusion_encoder(encoder_embeds=text_embeds,
    attention_mask=question.attention_mask, encoder_hidden_states=image_embeds,
    encoder_attention_mask=image_atts, return_dict=False)`` -> (image_output, question_output),
    states = cat([image_output, question_output], 1), mask = cat([image_atts, question mask]),
    then ``text_decoder(answer.input_ids, attention_mask=answer.attention_mask,
    encoder_hidden_states=states, encoder_attention_mask=mask, return_dict=True,
    reduction='none')`` (BertLMHeadModel; labels only add the loss). Generation
    (``forward(train=False)`` -> TextGenerator) calls the same decoder on the same memory."""
    ln_post, image_embeds, image_atts = _vision(model, x["image"])
    text = model.text_encoder(x["question_ids"], attention_mask=x["question_mask"],
                              return_dict=True).last_hidden_state
    fused_image, fused_text = _fuse(model, text, x["question_mask"], image_embeds, image_atts)
    states = torch.cat([fused_image, fused_text], 1)
    mask = torch.cat([image_atts, x["question_mask"]], 1)
    logits = model.text_decoder(x["answer_ids"], attention_mask=x["answer_mask"],
                                encoder_hidden_states=states, encoder_attention_mask=mask,
                                return_dict=True, reduction="none").logits
    # BertLMHeadModel's loss: CE(logits[:, :-1], labels[:, 1:], reduction='none').sum(1),
    # labels = answer ids with pad -> -100; forward returns its sum / batch.
    targets = x["answer_ids"].masked_fill(x["answer_ids"] == 0, -100)
    per_example = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), targets[:, 1:].reshape(-1),
                                  reduction="none").view(2, -1).sum(1)
    loss = model(x["image"], _Ids(x["question_ids"], x["question_mask"]),
                 _Ids(x["answer_ids"], x["answer_mask"]), train=True)
    torch.testing.assert_close(per_example.sum() / 2, loss, rtol=1e-5, atol=1e-5)
    return dict(vision_ln_post=ln_post, vision_embeds=image_embeds, text_embeds=text,
                fused_image=fused_image, fused_text=fused_text, fused_states=states,
                fused_mask=mask, decoder_logits=logits, loss=per_example)


def run_caption(model, x):
    """MPlugForImageCaption.forward(train=True): vision (_vision), then ``text_decoder(
    answer.input_ids, attention_mask=answer.attention_mask, encoder_hidden_states=image_embeds,
    encoder_attention_mask=image_atts, labels=..., return_dict=True, reduction='none')``
    (BertPrefixModel; the text encoder and fusion module are in the checkpoint but unused
    outside ``scst``). ``forward(train=False)`` -> ``generation(image_embeds, image_atts)``:
    TextGenerator starts from [CLS] (101) with no prompt."""
    ln_post, image_embeds, image_atts = _vision(model, x["image"])
    logits = model.text_decoder(x["answer_ids"], attention_mask=x["answer_mask"],
                                encoder_hidden_states=image_embeds,
                                encoder_attention_mask=image_atts, return_dict=True,
                                reduction="none").logits
    targets = x["answer_ids"].masked_fill(x["answer_ids"] == 0, -100)
    mean = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), targets[:, 1:].reshape(-1))
    loss = model(x["image"], None, _Ids(x["answer_ids"], x["answer_mask"]), train=True)
    torch.testing.assert_close(mean, loss, rtol=1e-5, atol=1e-5)
    return dict(vision_ln_post=ln_post, vision_embeds=image_embeds, decoder_logits=logits,
                loss=mean)


def run_retrieval(model, x):
    """MPlugForImageTextRetrieval.forward(train=True) for the ITC features: ``image_feat =
    F.normalize(self.vision_proj(image_embeds[:, 0, :]), dim=-1)``, ``text_feat =
    F.normalize(self.text_proj(text_embeds[:, 0, :]), dim=-1)``, ``sim_i2t = image_feat @
    text_feat_all / self.temp`` (in-batch block only; the rest is the queue); ITM as in
    ``forward(train=False)``: ``fusion_encoder(encoder_embeds=text_feat, attention_mask=
    text.attention_mask, encoder_hidden_states=visn_layer_norm(visn_fc(visual(...))),
    ...)`` -> ``itm_head(output[:, 0, :])``, here for every (image i, text j) pair."""
    ln_post, image_embeds, image_atts = _vision(model, x["image"])
    text = model.text_encoder(x["question_ids"], attention_mask=x["question_mask"],
                              return_dict=True).last_hidden_state
    image_feat = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)
    text_feat = F.normalize(model.text_proj(text[:, 0, :]), dim=-1)
    sim_i2t = image_feat @ text_feat.t() / model.temp
    b = x["image"].shape[0]
    itm = torch.zeros(b, b, 2)
    for i in range(b):
        _, out = _fuse(model, text, x["question_mask"], image_embeds[i:i + 1].expand(b, -1, -1),
                       image_atts[:1].expand(b, -1))
        itm[i] = model.itm_head(out[:, 0, :])
    scores = model(x["image"], _Ids(x["question_ids"], x["question_mask"]), train=False)
    torch.testing.assert_close(F.softmax(itm.diagonal().t(), -1), scores, rtol=1e-5, atol=1e-6)
    return dict(vision_ln_post=ln_post, vision_embeds=image_embeds, text_embeds=text,
                image_feat=image_feat, text_feat=text_feat, sim_i2t=sim_i2t,
                temp=model.temp.detach(), itm_logits=itm, itm_scores=scores)


RUNS = {"vqa": run_vqa, "caption": run_caption, "retrieval": run_retrieval}


def _modules(model):
    out = {}
    for name, m in model.named_children():
        out[name] = f"{type(m).__module__}.{type(m).__qualname__}"
    v = model.visual_encoder.visual
    out["visual_encoder.visual"] = f"{type(v).__module__}.{type(v).__qualname__}"
    return out


def _tied(sd):
    groups = {}
    for k, v in sd.items():
        groups.setdefault((v.data_ptr(), v.dtype, tuple(v.shape)), []).append(k)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def build(out_dir, name, seed, inputs):
    task, cls, overrides = TASKS[name]
    path = os.path.join(out_dir, name)
    cfg = _write_dir(path, task, overrides)
    config = mm.MPlugConfig(**cfg)
    config.model_dir = path
    torch.manual_seed(seed)
    model = cls(config).eval()
    _noise(model, torch.Generator().manual_seed(seed + 1000 * (1 + list(TASKS).index(name))))
    saved = model.state_dict()
    torch.save(saved, os.path.join(path, "pytorch_model.bin"))

    # Reload as modelscope does: MPlugForAllTasks -> MPlug.from_pretrained(model_dir, task).
    wrapper = MPlugForAllTasks(path, task=task, device="cpu")
    reloaded = wrapper.model.eval()
    assert type(reloaded) is cls, (type(reloaded), cls)
    got = reloaded.state_dict()
    # from_pretrained loads with strict=False: compare the file itself with the reloaded model
    # (no tensor silently dropped or left at its initialisation), and both with the original.
    on_disk = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu")
    for label, ref in (("file", on_disk), ("built model", saved)):
        missing, unexpected = sorted(set(ref) - set(got)), sorted(set(got) - set(ref))
        if missing or unexpected:
            raise SystemExit(f"{name}: reloaded model vs {label}: keys missing {missing}, "
                             f"unexpected {unexpected}")
        differ = [k for k in ref if ref[k].shape != got[k].shape
                  or ref[k].dtype != got[k].dtype or not torch.equal(ref[k], got[k])]
        if differ:
            raise SystemExit(f"{name}: reloaded tensors differ from the {label}: {differ}")

    with torch.no_grad():
        outs = RUNS[name](reloaded, inputs)
    arrays = {k: v.detach().numpy().astype(np.float32) for k, v in outs.items()}
    for k, v in arrays.items():
        if not np.isfinite(v).all():
            raise SystemExit(f"{name}: output {k} is not finite")
    np.savez(os.path.join(path, "outputs.npz"), **arrays)
    files = sorted(os.listdir(path))
    return {
        "dir": name,
        "task": task,
        "modelscope_class": f"{cls.__module__}.{cls.__qualname__}",
        "loaded_with": "modelscope.models.multi_modal.mplug_for_all_tasks.MPlugForAllTasks"
                       "(model_dir, task=task) -> MPlug.from_pretrained",
        "files": files,
        "mplug_config": cfg,
        "bert_config": BERT,
        "large_visn_fc": bool(reloaded.large),
        "fusion_start_layer": reloaded.fusion_encoder.encoder.start_layer,
        "modules": _modules(reloaded),
        "code_path": RUNS[name].__doc__.split("\n")[0].strip() + " ... (see the script)",
        "outputs": {k: list(v.shape) for k, v in arrays.items()},
        # state-dict keys that share one tensor (the decoder's output layer is tied to its word
        # embeddings, and cls.predictions.decoder.bias to cls.predictions.bias)
        "tied": _tied(saved),
        "state_dict": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                       for k, v in saved.items()},
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset")
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    inputs = _inputs(torch.Generator().manual_seed(args.seed))
    np.savez(os.path.join(args.out_dir, "inputs.npz"),
             **{k: v.numpy() for k, v in inputs.items()})
    manifest = {"modelscope": __import__("modelscope").__version__,
                "transformers": __import__("transformers").__version__,
                "torch": torch.__version__, "seed": args.seed, "inputs": "inputs.npz",
                "inputs_shapes": {k: list(v.shape) for k, v in inputs.items()}, "tasks": {}}
    for name in args.tasks.split(","):
        entry = build(args.out_dir, name, args.seed, inputs)
        manifest["tasks"][name] = entry
        print(f"{name}: {entry['modelscope_class'].rsplit('.', 1)[-1]}, "
              f"{len(entry['state_dict'])} tensors, outputs "
              + ", ".join(f"{k}{tuple(s)}" for k, s in entry["outputs"].items()))
    with open(os.path.join(args.out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    print(f"wrote {args.out_dir}")


if __name__ == "__main__":
    main()
