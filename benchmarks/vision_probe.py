"""How fast can a vision tower learn to *see* Shop World products? A probe, with a CNN reference
trained in the same run.

mPLUG's tiny Shop World VQA reads colour and count from the pixels but answers category,
material and position questions at the answer prior (plug_jax/families/mplug/README.md,
"Results"). This separates the vision tower from the rest of the model: each tower is
trained from scratch, alone, to name the category and the material of the product in each
third of the image (left / middle / right; "none" where the third is empty), from the
tokens over that third (mean-pooled), on the 2000 ``images_64`` training images. Accuracy is
printed on the held-out validation images (attribute combinations absent from training),
over the thirds that hold a product.

Towers (``--towers``, comma-separated):

* ``patch``: the tiny mPLUG / CLIP ViT (``CLIPVisionTower``, 8 px patches, ``--width``,
  ``--layers``), the released patch embedding;
* ``conv``: the same ViT with ``stem='conv'`` (``ConvStem``: the convolutions of ``cnn``
  below in place of the patch embedding, the same 64 tokens);
* ``cnn``: the reference, a plain CNN (three 3x3 convolutions at 32 / 64 / 64 channels,
  each followed by 2x2 max-pooling) giving an 8 x 8 grid of features, pooled the same way.

The first line printed gives chance (one over the number of categories / materials in the
training images). Timings are not compared: the towers
differ in cost on purpose; what matters is validation accuracy per training step::

    python benchmarks/vision_probe.py                       # patch, conv, cnn; 1500 steps
    python benchmarks/vision_probe.py --towers patch --width 128 --layers 4 --steps 3000
    python benchmarks/vision_probe.py --towers patch --patch 16 --steps 4500 --train_images 20000

``--train_images`` reads more of the drawn training images (``images_64_xl`` holds 20,000,
the first 2,000 those of ``images_64``); ``--patch`` sets the ViT towers' patch size.
Measured on 2026-12-07 (plug_jax/families/mplug/README.md, "More pictures, larger patches"):
16 px patches on 20,000 images reach category 0.602 at 4,500 steps (81 s), 8 px patches
0.469 (373 s); on 2,000 images 16 px patches reach 0.390.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _dataset(split: str, n: int):
    from plug_jax.data.multimodal import normalize_pixels
    from plug_jax.data.shop_world import images as shop_images
    xs, rows = [], []
    for i in range(n):
        ex = shop_images.image_example(0, split, i, size=64, lang="en")
        xs.append(np.asarray(normalize_pixels(ex["image"].astype(np.float32)), np.float32))
        rows.append(ex)
    return np.stack(xs), rows


def _labels(rows, cats, mats):
    slots = ("left", "middle", "right")
    c = np.full((len(rows), 3), len(cats), np.int32)
    m = np.full((len(rows), 3), len(mats), np.int32)
    for r, ex in enumerate(rows):
        for cat, mat, pos in zip(ex["categories"], ex["materials"], ex["positions"]):
            c[r, slots.index(pos)] = cats.index(cat)
            m[r, slots.index(pos)] = mats.index(mat)
    return c, m


def run(tower: str, width: int, layers: int, steps: int, lr: float, batch: int, seed: int,
        data, patch: int = 8) -> list[tuple[int, float, float]]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from plug_jax.layers.clip import CLIPVisionConfig, CLIPVisionTower

    (xt, ct, mt), (xv, cv, mv), n_cat, n_mat = data
    patch = 8 if tower == "cnn" else patch
    grid = 64 // patch
    centres = (np.arange(grid) + 0.5) * patch
    w = np.stack([((centres >= 64 * s / 3) & (centres < 64 * (s + 1) / 3)).astype(np.float32)
                  for s in range(3)])
    w = np.repeat(w[:, None, :], grid, 1).reshape(3, grid * grid)
    w /= w.sum(1, keepdims=True)  # [3, 64]: mean over the patches whose centre is in a third

    class Probe(nn.Module):
        @nn.compact
        def __call__(self, x):
            if tower == "cnn":
                h = x
                for f in (32, 64, 64):
                    h = nn.max_pool(nn.relu(nn.Conv(f, (3, 3))(h)), (2, 2), (2, 2))
                t = nn.Dense(width)(h).reshape(h.shape[0], grid * grid, width)
            else:
                cfg = CLIPVisionConfig(image_size=64, patch_size=patch, width=width,
                                       layers=layers, heads=4, mlp_dim=2 * width,
                                       projection_dim=32, stem=tower)
                t = CLIPVisionTower(cfg)(x)["tokens"][:, 1:]
            s = jnp.einsum("sp,bpd->bsd", w, t)
            return nn.Dense(n_cat + 1)(s), nn.Dense(n_mat + 1)(s)

    model = Probe()
    params = model.init(jax.random.PRNGKey(seed), xt[:2])
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, 100, steps),
                     weight_decay=0.01)
    opt = tx.init(params)

    def loss(p, x, c, m):
        lc, lm = model.apply(p, x)
        ce = optax.softmax_cross_entropy_with_integer_labels
        return ce(lc, c).mean() + ce(lm, m).mean()

    @jax.jit
    def step(p, o, x, c, m):
        g = jax.grad(loss)(p, x, c, m)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o

    @jax.jit
    def predict(p, x):
        lc, lm = model.apply(p, x)
        return lc.argmax(-1), lm.argmax(-1)

    rng = np.random.default_rng(seed)
    out = []
    for i in range(1, steps + 1):
        idx = rng.integers(0, len(xt), batch)
        params, opt = step(params, opt, xt[idx], ct[idx], mt[idx])
        if i % max(steps // 4, 1) == 0 or i == steps:
            pc, pm = (np.asarray(a) for a in predict(params, xv))
            held = cv < n_cat
            out.append((i, float((pc == cv)[held].mean()), float((pm == mv)[held].mean())))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--towers", default="patch,conv,cnn")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patch", type=int, default=8,
                    help="patch size of the ViT towers (the cnn always gives 8 x 8 tokens)")
    ap.add_argument("--train_images", type=int, default=2000,
                    help="training images (images_64 has 2000; images_64_xl, the same "
                         "first 2000, has 20000)")
    a = ap.parse_args(argv)
    towers = [t for t in a.towers.split(",") if t]
    bad = [t for t in towers if t not in ("patch", "conv", "cnn")]
    if bad:
        ap.error(f"unknown tower(s) {bad}; choose from patch, conv, cnn")
    xt, rows_t = _dataset("train", a.train_images)
    xv, rows_v = _dataset("validation", 200)
    cats = sorted({c for ex in rows_t for c in ex["categories"]})
    mats = sorted({m for ex in rows_t for m in ex["materials"]})
    data = ((xt, *_labels(rows_t, cats, mats)), (xv, *_labels(rows_v, cats, mats)),
            len(cats), len(mats))
    print(f"{len(cats)} categories (chance {1 / len(cats):.3f}), {len(mats)} materials "
          f"(chance {1 / len(mats):.3f}); width {a.width}, {a.layers} layers, lr {a.lr}, "
          f"batch {a.batch}")
    results = {}
    for t in towers:
        t0 = time.time()
        results[t] = run(t, a.width, a.layers, a.steps, a.lr, a.batch, a.seed, data, a.patch)
        for i, cat, mat in results[t]:
            print(f"  {t:5s} step {i:5d}: validation category {cat:.3f}, material {mat:.3f}",
                  flush=True)
        print(f"  {t:5s} done in {time.time() - t0:.0f} s", flush=True)
    if "cnn" in results:
        ref = results["cnn"][-1]
        for t in towers:
            if t != "cnn":
                print(f"{t} / cnn at step {ref[0]}: category {results[t][-1][1] / ref[1]:.2f}, "
                      f"material {results[t][-1][2] / ref[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
