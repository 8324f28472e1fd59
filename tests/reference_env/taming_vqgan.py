"""Runs in the reference env: taming-transformers' VQGAN modules at a tiny size, random weights.

    python taming_vqgan.py OUT_DIR [--seed N]

taming-transformers-rom1504 0.0.6 declares pytorch-lightning, torchvision and omegaconf as
requirements, which the two modules used here never import (``model.py`` needs torch and
numpy; ``quantize.py`` torch, numpy and einops). build.py installs it from
requirements-nodeps.txt with ``--no-deps``; this script imports the submodules
``taming.modules.diffusionmodules.model`` and ``taming.modules.vqvae.quantize`` only
(``taming.models.vqgan`` imports pytorch_lightning).

It builds taming's ``Encoder``, ``Decoder``, ``VectorQuantizer2`` (legacy=True, remap None,
sane_index_shape=True), ``quant_conv`` and ``post_quant_conv`` under the attribute names of
``VQModel`` at the tiny config, puts noise on every parameter (GroupNorm scales and biases,
conv biases, the codebook: nothing at its default init), and writes into OUT_DIR:

* ``vqgan.ckpt``: ``torch.save({'state_dict': ..., 'global_step': 0, 'epoch': 0})`` as a
  pytorch-lightning VQModel checkpoint holds it (plus one ``loss.*`` tensor, as taming's
  training loss leaves them), and ``vqgan.safetensors``: the same state dict without
  ``loss.*``;
* ``reference.npz``: ``images`` ``[B, H, W, 3]`` (NHWC; taming read NCHW); every output NHWC:
  ``h`` (encoder then ``quant_conv``), ``quantized`` (``VectorQuantizer2``'s z_q), ``indices``
  ``[B, h, w]``, ``loss`` (its legacy loss), ``reconstruction`` (``post_quant_conv`` then
  decoder on z_q); ``codes`` ``[B, h, w]`` random and ``decoded_codes`` (taming's
  ``get_codebook_entry`` then ``post_quant_conv`` and decoder); ``muge_f16_1024_params``:
  ``sum(p.numel())`` over taming's Encoder, Decoder, VectorQuantizer2 and both 1x1 convs at
  the standard f = 16 / 1024-code config (built on the meta device);
* ``config.json``: the tiny config.

Imports torch, numpy, safetensors and taming only; never plug_jax.
"""
import argparse
import importlib
import json
import os

import numpy as np
import torch


TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32,
            in_channels=3, out_ch=3, z_channels=16, double_z=False, dropout=0.0)
TINY_EMBED_DIM, TINY_N_EMBED = 16, 64
MUGE = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
            resolution=256, in_channels=3, out_ch=3, z_channels=256, double_z=False,
            dropout=0.0)
MUGE_EMBED_DIM, MUGE_N_EMBED = 256, 1024
BATCH = 2


def _taming_modules():
    """taming's ``model`` and ``quantize`` modules (installed by build.py from
    requirements-nodeps.txt, without taming's declared dependencies)."""
    model = importlib.import_module("taming.modules.diffusionmodules.model")
    quantize = importlib.import_module("taming.modules.vqvae.quantize")
    return model, quantize


_model, _quantize = _taming_modules()


class VQParts(torch.nn.Module):
    """``VQModel``'s submodules under its attribute names (its state-dict keys), no loss."""

    def __init__(self, ddconfig, embed_dim, n_embed):
        super().__init__()
        self.encoder = _model.Encoder(**ddconfig)
        self.decoder = _model.Decoder(**ddconfig)
        self.quantize = _quantize.VectorQuantizer2(n_embed, embed_dim, beta=0.25, remap=None,
                                                   sane_index_shape=True, legacy=True)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)


def _nhwc(x):
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def build(out_dir, seed):
    torch.manual_seed(seed)
    model = VQParts(TINY, TINY_EMBED_DIM, TINY_N_EMBED)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):  # default: weight 1, bias 0
                module.weight.copy_(1.0 + 0.2 * torch.randn_like(module.weight))
                module.bias.copy_(0.1 * torch.randn_like(module.bias))
            elif isinstance(module, torch.nn.Conv2d):
                module.weight.add_(0.05 * torch.randn_like(module.weight))
                module.bias.add_(0.05 * torch.randn_like(module.bias))
        # default: uniform(-1/64, 1/64); spread the codes like the latents instead
        emb = model.quantize.embedding.weight
        emb.copy_(0.5 * torch.randn_like(emb))
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    res = TINY["resolution"]
    images = torch.rand(BATCH, 3, res, res, generator=g) * 2 - 1
    side = res // 2 ** (len(TINY["ch_mult"]) - 1)
    codes = torch.randint(0, TINY_N_EMBED, (BATCH, side, side), generator=g)
    with torch.no_grad():
        h = model.quant_conv(model.encoder(images))
        quant, loss, (_, _, indices) = model.quantize(h)
        rec = model.decoder(model.post_quant_conv(quant))
        zq = model.quantize.get_codebook_entry(codes.reshape(-1),
                                               (BATCH, side, side, TINY_EMBED_DIM))
        decoded = model.decoder(model.post_quant_conv(zq))
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    ckpt_sd = dict(sd)
    ckpt_sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4, generator=g)
    torch.save({"epoch": 0, "global_step": 0, "state_dict": ckpt_sd},
               os.path.join(out_dir, "vqgan.ckpt"))
    from safetensors.torch import save_file
    save_file(sd, os.path.join(out_dir, "vqgan.safetensors"))

    with torch.device("meta"):
        big = VQParts(MUGE, MUGE_EMBED_DIM, MUGE_N_EMBED)
    muge_params = sum(p.numel() for p in big.parameters())

    np.savez(os.path.join(out_dir, "reference.npz"),
             images=_nhwc(images), h=_nhwc(h), quantized=_nhwc(quant),
             indices=indices.numpy().astype(np.int32), loss=np.float32(loss.item()),
             reconstruction=_nhwc(rec), codes=codes.numpy().astype(np.int32),
             decoded_codes=_nhwc(decoded), muge_f16_1024_params=np.int64(muge_params))
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY.items()}
    config.update(embed_dim=TINY_EMBED_DIM, n_embed=TINY_N_EMBED)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    build(args.out_dir, args.seed)
