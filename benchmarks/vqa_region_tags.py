"""Does dense supervision of the vision tower lift tiny mPLUG's Shop World VQA? A probe.

mPLUG's tiny VQA stays far below its 0.80 target (plug_jax/families/mplug/README.md,
"Results"), and ``benchmarks/vision_probe.py`` showed that the conv-stem tower *can* learn
category and material when supervised directly. This trains the tiny mPLUG (conv stem by
default) on VQA with a **region-tagging** loss on the vision tokens: every patch token is
classified as the category, material and colour of the product whose box holds the patch
centre (or background), from the generator's labels of the 2000 training images, as
Visual-Genome object / attribute tags supervise detector features. ``--tag_steps`` first
trains the tower on tagging alone; ``--aux`` weighs tagging during VQA (0 turns it off).

It uses its own loop and batches (numpy, not seqio) and prints the teacher-forced exact-match
VQA accuracy (= greedy accuracy) on the 1676 validation questions per type, then the same
questions with blank images::

    python benchmarks/vqa_region_tags.py --tag_steps 500 --steps 1750 --aux 1.0

Measured on the 2-core CPU (session of 2026-12-06, about 19 min): 0.447 overall (colour
0.58, category 0.23, count 0.88, position 0.37, material 0.38), blank images 0.193. Tagging
only category and material (no colour): 0.403, blank 0.166. Far from 0.80: with a tower
that tags the regions, the fusion and decoder still do not learn, in this budget, to bind a
named product to its region.
"""
import argparse
import time

import numpy as np

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--steps", type=int, default=1750)
ap.add_argument("--tag_steps", type=int, default=500)
ap.add_argument("--aux", type=float, default=1.0)
ap.add_argument("--stem", default="conv")
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--batch", type=int, default=32)
ap.add_argument("--ntrain", type=int, default=2000)
ap.add_argument("--vlayers", type=int, default=2)
a = ap.parse_args()

import jax
import jax.numpy as jnp
import optax
import flax.linen as nn
import seqio

import plug_jax.tasks  # noqa: F401  (registers the tasks)
from plug_jax.data.multimodal import normalize_pixels, VQA_TYPES
from plug_jax.data.shop_world import images as shop_images
from plug_jax.families.mplug.config import MPlugConfig
from plug_jax.layers.clip import CLIPVisionConfig
from plug_jax.models.image_text_lm import ImageTextLM
from plug_jax.data.shop_world import world

vocab = seqio.get_mixture_or_task("mplug_shop_vqa_en_v1").output_features["targets"].vocabulary
CATS = [c.key for c in world.CATEGORIES]
MATS = [m.key for m in world.MATERIALS]
COLS = [c.key for c in world.COLOURS]
G = 8


def data(split, n):
    imgs, dense_c, dense_m, qs = [], [], [], []
    centres = (np.arange(G) + 0.5) * 8
    for i in range(n):
        ex = shop_images.image_example(0, split, i, size=64, lang="en")
        imgs.append(np.asarray(normalize_pixels(ex["image"].astype(np.float32)), np.float32))
        c = np.zeros((G, G), np.int32)
        m = np.zeros((G, G), np.int32)
        k = np.zeros((G, G), np.int32)
        for (x0, y0, x1, y1), cat, mat, col in zip(ex["boxes"], ex["categories"],
                                                   ex["materials"], ex["colours"]):
            inside = ((centres[None, :] >= x0) & (centres[None, :] < x1)
                      & (centres[:, None] >= y0) & (centres[:, None] < y1))
            c[inside] = CATS.index(cat) + 1
            m[inside] = MATS.index(mat) + 1
            k[inside] = COLS.index(col) + 1
        dense_c.append(c.reshape(-1))
        dense_m.append(np.stack([m.reshape(-1), k.reshape(-1)], -1))
        for q, ans, t in ex["vqa"]:
            qi = vocab.encode(q)[:23] + [1]
            ai = vocab.encode(ans)[:7] + [1]
            qs.append((i, qi, ai, VQA_TYPES.index(t)))
    X = np.stack(imgs)
    Q = np.zeros((len(qs), 24), np.int32)
    T = np.zeros((len(qs), 8), np.int32)
    I = np.zeros(len(qs), np.int32)
    TY = np.zeros(len(qs), np.int32)
    for r, (i, qi, ai, t) in enumerate(qs):
        Q[r, :len(qi)] = qi
        T[r, :len(ai)] = ai
        I[r] = i
        TY[r] = t
    return X, np.stack(dense_c), np.stack(dense_m), Q, T, I, TY


t0 = time.time()
tr = data("train", a.ntrain)
va = data("validation", 200)
print(f"data {time.time() - t0:.0f}s, {len(tr[3])} train questions, {len(va[3])} val", flush=True)

cfg = MPlugConfig.from_preset(
    "tiny", vocab_size=1024, vision=CLIPVisionConfig(image_size=64, patch_size=8, width=64,
                                                     layers=a.vlayers, heads=4, mlp_dim=128,
                                                     projection_dim=32, stem=a.stem))
model = ImageTextLM(cfg, encoder_text=True)
net = model.module


class Head(nn.Module):
    @nn.compact
    def __call__(self, t):
        return nn.Dense(len(CATS) + 1)(t), nn.Dense(len(MATS) + 1)(t), nn.Dense(len(COLS) + 1)(t)


head = Head()


def batch_of(d, idx):
    X, C, M, Q, T, I, TY = d
    dec_in = np.concatenate([np.zeros((len(idx), 1), np.int32), T[idx, :-1]], 1)
    return {"image": X[I[idx]], "encoder_input_tokens": Q[idx], "decoder_input_tokens": dec_in,
            "decoder_target_tokens": T[idx],
            "decoder_loss_weights": (T[idx] > 0).astype(np.float32)}


b0 = batch_of(tr, np.arange(2))
params = {"m": model.init_params(jax.random.PRNGKey(0), b0),
          "h": head.init(jax.random.PRNGKey(1), jnp.zeros((1, 64, 64)))["params"]}
total = a.steps + a.tag_steps
tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, a.lr, 100, total), weight_decay=0.01)
opt = tx.init(params)
ce = optax.softmax_cross_entropy_with_integer_labels


def tag_loss(p, x, c, m):
    tok = net.apply({"params": p["m"]}, x, method="encode_image")[:, 1:]
    lc, lm, lk = head.apply({"params": p["h"]}, tok)
    return ce(lc, c).mean() + ce(lm, m[..., 0]).mean() + ce(lk, m[..., 1]).mean()


def vqa_loss(p, batch):
    s = model.loss_sums(p["m"], batch, deterministic=True)
    return s["loss"] / s["weight"] if "weight" in s else s["answer_loss"] / s["answer_weight"]


def full_loss(p, batch, c, m, aux):
    l = vqa_loss(p, batch)
    return l + aux * tag_loss(p, batch["image"], c, m) if aux else l


@jax.jit
def step_vqa(p, o, batch, c, m):
    l, g = jax.value_and_grad(full_loss)(p, batch, c, m, a.aux)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, l


@jax.jit
def step_tag(p, o, x, c, m):
    l, g = jax.value_and_grad(tag_loss)(p, x, c, m)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, l


@jax.jit
def exact(p, batch):
    return model.eval_outputs(p["m"], batch)["exact"]


def evaluate(p, blank=False):
    n = len(va[3])
    out = []
    for s in range(0, n, 256):
        idx = np.arange(s, min(n, s + 256))
        b = batch_of(va, idx)
        if blank:
            b["image"] = np.zeros_like(b["image"])
        out.append(np.asarray(exact(p, b)))
    e = np.concatenate(out)
    per = {t: float(e[va[6] == k].mean()) for k, t in enumerate(VQA_TYPES)}
    return float(e.mean()), per


rng = np.random.default_rng(0)
t0 = time.time()
for i in range(1, a.tag_steps + 1):
    idx = rng.integers(0, len(tr[0]), a.batch)
    params, opt, l = step_tag(params, opt, tr[0][idx], tr[1][idx], tr[2][idx])
    if i % 250 == 0:
        print(f"tag {i} loss {float(l):.3f} {time.time() - t0:.0f}s", flush=True)
for i in range(1, a.steps + 1):
    idx = rng.integers(0, len(tr[3]), a.batch)
    b = batch_of(tr, idx)
    im = tr[5][idx]
    params, opt, l = step_vqa(params, opt, b, tr[1][im], tr[2][im])
    if i % 250 == 0 or i == a.steps:
        acc, per = evaluate(params)
        print(f"vqa {i} loss {float(l):.3f} val {acc:.3f} "
              + " ".join(f"{k} {v:.2f}" for k, v in per.items()) + f" {time.time() - t0:.0f}s",
              flush=True)
acc, per = evaluate(params, blank=True)
print(f"blank {acc:.3f} " + " ".join(f"{k} {v:.2f}" for k, v in per.items()))
