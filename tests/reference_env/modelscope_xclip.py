"""Runs in the reference env: a random tiny X-CLIP checkpoint, saved as the release saves it.

    python modelscope_xclip.py OUT_DIR [--seed N]

X-CLIP (xuguohai/X-CLIP) has no installable package; its code base is CLIP4Clip, which the
modelscope package ships (``modelscope.models.multi_modal.mmr.models``): ``module_clip.CLIP``
is OpenAI's CLIP class (the layout of every OpenAI CLIP state dict) and
``module_cross.Transformer`` is the ``TransformerClip`` that X-CLIP's ``seqTransf`` header
runs over the frame features. The release's ``XCLIP`` module holds exactly:

* ``clip`` (``CLIP``), ``frame_position_embeddings`` (``nn.Embedding(context_length,
  hidden)``), ``transformerClip`` (``Transformer(width=text width, layers, heads=width // 64)``);
* eight square ``nn.Parameter`` matrices: ``global_mat_weight`` and ``local_mat_weight``
  (D x D), ``word_logit_weight``, ``word_mat_weight``, ``word_mat_weight2`` (words x words),
  ``frame_logit_weight``, ``frame_mat_weight``, ``frame_mat_weight2`` (frames x frames);

and ``save_model`` writes ``torch.save(model.state_dict(), 'pytorch_model.bin.<epoch>')``.
This script builds that module from the modelscope classes (their two files imported
directly: the folder's ``__init__`` needs decord) at a tiny size (words != frames),
puts Gaussian noise on every parameter (the matrices are not the identity, LayerNorms not
1 / 0) and writes into OUT_DIR:

* ``pytorch_model.bin.0``: the X-CLIP state dict;
* ``clip.pt``: ``torch.save(clip.state_dict())``, an OpenAI CLIP state dict;
* ``reference.npz``: inputs ``video`` ``[B, F, H, W, 3]`` (NHWC; the model read NCHW) and
  ``input_ids`` ``[B, W]`` (the end-of-text id is the largest, padding 0 after it), and the
  release's features before normalisation: ``frame_embeds`` ``[B, F, D]``
  (``clip.encode_image``), ``sequence_output`` ``[B, D]`` and ``word_embeds`` ``[B, W, D]``
  (``clip.encode_text(..., return_hidden=True)``), ``temporal_output`` ``[B, F, D]`` (the
  ``seqTransf`` header: frame positions, ``transformerClip`` under an all-ones video mask,
  plus the frame features), and the eight matrices and ``logit_scale`` as the module holds
  them.
"""
import argparse
import importlib
import importlib.util
import os
import sys
import types

import numpy as np
import torch
from torch import nn


def _mmr_modules():
    """``module_clip`` and ``module_cross`` from the installed modelscope package, imported
    as files of their folder: the folder's ``__init__`` imports the video-embedding pipeline,
    which needs decord (not in the reference env) and nothing these classes use."""
    root = importlib.util.find_spec("modelscope").submodule_search_locations[0]
    pkg = types.ModuleType("_modelscope_mmr_models")
    pkg.__path__ = [os.path.join(root, "models", "multi_modal", "mmr", "models")]
    sys.modules[pkg.__name__] = pkg
    return (importlib.import_module(f"{pkg.__name__}.module_clip"),
            importlib.import_module(f"{pkg.__name__}.module_cross"))


_module_clip, _module_cross = _mmr_modules()
CLIP = _module_clip.CLIP
TransformerClip = _module_cross.Transformer

EMBED, IMAGE, PATCH, VISION_WIDTH, VISION_LAYERS = 64, 32, 8, 64, 2
CONTEXT, VOCAB, TEXT_WIDTH, TEXT_LAYERS, TEMPORAL_LAYERS = 32, 100, 64, 2, 2
WORDS, FRAMES, BATCH = 12, 5, 3


class XClipModule(nn.Module):
    """The parameters of the release's ``XCLIP`` (loose type, ``seqTransf``)."""

    def __init__(self):
        super().__init__()
        self.clip = CLIP(EMBED, IMAGE, VISION_LAYERS, VISION_WIDTH, PATCH, CONTEXT, VOCAB,
                         TEXT_WIDTH, TEXT_WIDTH // 64, TEXT_LAYERS).float()
        self.frame_position_embeddings = nn.Embedding(CONTEXT, TEXT_WIDTH)
        self.transformerClip = TransformerClip(width=TEXT_WIDTH, layers=TEMPORAL_LAYERS,
                                               heads=TEXT_WIDTH // 64)
        sizes = {"global_mat_weight": EMBED, "word_logit_weight": WORDS,
                 "frame_logit_weight": FRAMES, "local_mat_weight": EMBED,
                 "frame_mat_weight": FRAMES, "word_mat_weight": WORDS,
                 "frame_mat_weight2": FRAMES, "word_mat_weight2": WORDS}
        for name, n in sizes.items():
            setattr(self, name, nn.Parameter(torch.eye(n)))


def build(out_dir, seed):
    torch.manual_seed(seed)
    model = XClipModule()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.clip.logit_scale.fill_(float(np.log(1 / 0.07)))
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    video = torch.randn(BATCH, FRAMES, 3, IMAGE, IMAGE, generator=g)
    ids = torch.randint(1, VOCAB - 1, (BATCH, WORDS), generator=g)
    for row, n in enumerate((WORDS, 7, 3)):  # the end-of-text id (the largest) ends a row
        ids[row, n - 1] = VOCAB - 1
        ids[row, n:] = 0
    with torch.no_grad():
        frames = model.clip.encode_image(video.reshape(-1, 3, IMAGE, IMAGE)).float()
        frames = frames.reshape(BATCH, FRAMES, -1)
        sentence, words = model.clip.encode_text(ids, return_hidden=True)
        # the seqTransf header: positions, the temporal blocks (mask: every frame real),
        # then the frame features added back
        x = frames + model.frame_position_embeddings(torch.arange(FRAMES))[None]
        mask = torch.zeros(BATCH, FRAMES, FRAMES)
        x = model.transformerClip(x.permute(1, 0, 2), mask).permute(1, 0, 2) + frames
    torch.save(model.state_dict(), os.path.join(out_dir, "pytorch_model.bin.0"))
    torch.save(model.clip.state_dict(), os.path.join(out_dir, "clip.pt"))
    arrays = {name: p.detach().numpy() for name, p in model.named_parameters()
              if name.endswith(("_weight", "_weight2")) and "." not in name}
    np.savez(os.path.join(out_dir, "reference.npz"),
             video=video.permute(0, 1, 3, 4, 2).numpy(), input_ids=ids.numpy().astype(np.int32),
             frame_embeds=frames.numpy(), sequence_output=sentence.numpy(),
             word_embeds=words.numpy(), temporal_output=x.numpy(),
             logit_scale=model.clip.logit_scale.detach().numpy(), **arrays)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    build(args.out_dir, args.seed)
