"""Runs in the reference env: taming-transformers' PatchGAN discriminator, random weights.

    python taming_discriminator.py OUT_DIR [--seed N]

Imports ``taming.modules.discriminator.model`` only (it needs torch; ``vqperceptual.py``, where
taming's losses live, imports LPIPS and torchvision, which the reference env does not install).

For ``n_layers`` 2 and 3 (``input_nc=3``, ``ndf=16``, ``use_actnorm=False``: BatchNorm2d) it
builds ``NLayerDiscriminator`` with taming's ``weights_init``, then puts noise on the
BatchNorm affine parameters (scale ``1 + 0.2 N``, bias ``0.1 N``) and on the conv biases,
and in train mode (batch statistics) records, for one random batch ``images`` ``[2, 32, 32,
3]`` in ``[-1, 1]``, the ``logits`` and the gradient of ``sum(logits * probe)`` (``probe``
random, the logits' shape) with respect to the images. Writes into OUT_DIR:

* ``discriminator_l{n}.safetensors``: the state dict under the keys a VQGAN training
  checkpoint gives it (``loss.discriminator.main.N.*``, running statistics and
  ``num_batches_tracked`` included), saved before the forward pass;
* ``reference.npz``: ``images`` (NHWC) and, per ``n``, ``logits_l{n}``, ``probe_l{n}`` and
  ``grad_l{n}`` (NHWC);
* ``config.json``: ``ndf`` and the layer counts.

Imports torch, numpy, safetensors and taming only; never plug_jax.
"""
import argparse
import importlib
import json
import os

import numpy as np
import torch

NDF, LAYERS, BATCH, SIZE = 16, (2, 3), 2, 32
PREFIX = "loss.discriminator."


def _nhwc(x):
    return x.detach().permute(0, 2, 3, 1).contiguous().numpy()


def build(out_dir, seed):
    disc_mod = importlib.import_module("taming.modules.discriminator.model")
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=g) * 2 - 1
    out = {"images": _nhwc(images)}
    for n in LAYERS:
        model = disc_mod.NLayerDiscriminator(input_nc=3, ndf=NDF, n_layers=n,
                                             use_actnorm=False).apply(disc_mod.weights_init)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.weight.copy_(1.0 + 0.2 * torch.randn_like(module.weight))
                    module.bias.copy_(0.1 * torch.randn_like(module.bias))
                elif isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                    module.bias.add_(0.05 * torch.randn_like(module.bias))
        sd = {PREFIX + k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, os.path.join(out_dir, f"discriminator_l{n}.safetensors"))
        model.train()  # batch statistics
        x = images.clone().requires_grad_(True)
        logits = model(x)
        probe = torch.randn(logits.shape, generator=g)
        (grad,) = torch.autograd.grad((logits * probe).sum(), x)
        out.update({f"logits_l{n}": _nhwc(logits), f"probe_l{n}": _nhwc(probe),
                    f"grad_l{n}": _nhwc(grad)})
    np.savez(os.path.join(out_dir, "reference.npz"), **out)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump({"ndf": NDF, "n_layers": list(LAYERS)}, f)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    build(args.out_dir, args.seed)
