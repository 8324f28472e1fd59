"""Does M6 draw what a title says? An attribute classifier's verdict on generated pictures.

A small CNN (:class:`AttributeCNN`) is trained on the real ``products_64`` training pictures to
name each product's category (14 classes) and colour (10). Its accuracy is then reported on

* the real pictures of the evaluated split (how good the judge is);
* the tokenizer's reconstructions of those pictures (the ceiling the codes allow);
* pictures M6 generated from the split's titles (test titles: attribute combinations never
  seen in training);
* pictures decoded from uniformly random codes (the control: at chance, 1/14 and 1/10, if
  the judge reads the picture and not the decoder's style).

The classifier is trained once and kept in ``<image-code corpus>/classifier/`` (``params.npz``
and ``classifier.json``); a later run reads it back (``--retrain`` trains it again). Run::

    python -m plug_jax.families.m6.t2i_eval --gin_file=experiments/m6/shop_t2i_tiny.gin \\
        --gin.MODEL_DIR=/tmp/m6_t2i [--split test] [--guidance 2.0] [--top_k 64] [--png F]
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

CLASSIFIER_DIR = "classifier"


def label_names():
    from plug_jax.data.shop_world import world
    return ([c.key for c in world.CATEGORIES], [c.key for c in world.COLOURS])


class AttributeCNN(nn.Module):
    """Four 3x3 convs with ReLU (16, 32, 64, 64 channels), a 2x2 max-pool after each of the
    first three, a global max-pool (the product is small and anywhere in the picture), then
    a hidden layer and one linear head per attribute. Small enough to train in a few minutes
    on two CPU cores."""

    num_categories: int
    num_colours: int

    @nn.compact
    def __call__(self, pictures):
        x = jnp.asarray(pictures, jnp.float32) / 127.5 - 1.0
        for i, width in enumerate((16, 32, 64, 64)):
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            if i < 3:
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = jnp.max(x, axis=(1, 2))
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(self.num_categories)(x), nn.Dense(self.num_colours)(x)


def _labels(values, names) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    return np.asarray([index[str(v)] for v in values], np.int32)


def soften(pictures, key):
    """Augmentation: each uint8 picture of the batch kept (1/3), blurred with a 3x3 box (1/3)
    or halved and enlarged back bilinearly (1/3), so the judge names a product whose edges
    are soft, as a tokenizer's reconstruction draws them, as well as a crisp one."""
    x = jnp.asarray(pictures, jnp.float32)
    b, h, w, c = x.shape
    pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    box = sum(pad[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
    half = jax.image.resize(jax.image.resize(x, (b, h // 2, w // 2, c), "linear"),
                            (b, h, w, c), "linear")
    pick = jax.random.randint(key, (b, 1, 1, 1), 0, 3)
    out = jnp.where(pick == 0, x, jnp.where(pick == 1, box, half))
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def train_classifier(pictures, categories, colours, *, steps: int = 1500,
                     batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 0,
                     augment: bool = True, log=print):
    """``(module, params)``: :class:`AttributeCNN` fitted to uint8 ``pictures`` and their
    category / colour keys (cross-entropy of both heads, AdamW), with :func:`soften` on
    two thirds of each batch unless ``augment=False``."""
    cats, cols = label_names()
    y_cat, y_col = _labels(categories, cats), _labels(colours, cols)
    module = AttributeCNN(len(cats), len(cols))
    rng = jax.random.PRNGKey(seed)
    params = module.init(rng, jnp.zeros((1,) + pictures.shape[1:], jnp.uint8))["params"]
    tx = optax.adamw(optax.cosine_onecycle_schedule(steps, learning_rate), weight_decay=1e-4)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, a, b, key):
        x = soften(x, key) if augment else x

        def loss_fn(p):
            la, lb = module.apply({"params": p}, x)
            return (optax.softmax_cross_entropy_with_integer_labels(la, a).mean()
                    + optax.softmax_cross_entropy_with_integer_labels(lb, b).mean())
        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    order = np.random.default_rng(seed)
    t0 = time.time()
    for i in range(steps):
        idx = order.integers(0, len(pictures), batch_size)
        params, opt, loss = step(params, opt, jnp.asarray(pictures[idx]), y_cat[idx],
                                 y_col[idx], jax.random.fold_in(rng, i))
        if (i + 1) % 200 == 0 or i + 1 == steps:
            log(f"classifier step {i + 1}/{steps}: loss {float(loss):.4f} "
                f"({time.time() - t0:.0f}s)", flush=True)
    return module, params


def predict(module, params, pictures, batch_size: int = 200):
    fn = jax.jit(lambda p, x: tuple(jnp.argmax(o, -1) for o in module.apply({"params": p}, x)))
    cat, col = [], []
    for i in range(0, len(pictures), batch_size):
        a, b = fn(params, jnp.asarray(pictures[i:i + batch_size]))
        cat.append(np.asarray(a))
        col.append(np.asarray(b))
    return np.concatenate(cat), np.concatenate(col)


def accuracy(module, params, pictures, categories, colours) -> dict:
    cats, cols = label_names()
    pc, pl = predict(module, params, pictures)
    return {"category": float(np.mean(pc == _labels(categories, cats))),
            "colour": float(np.mean(pl == _labels(colours, cols))), "n": int(len(pictures))}


def save_classifier(params, directory, info: dict) -> None:
    from plug_jax.convert.io import flatten_tree
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    flat = {k: np.asarray(v) for k, v in flatten_tree(jax.device_get(params)).items()}
    tmp = d / ".params.tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, d / "params.npz")
    (d / "classifier.json").write_text(json.dumps(info, indent=1))


def load_classifier(directory):
    """``(module, params, info)`` or ``None`` when ``directory`` holds no classifier."""
    from plug_jax.convert.io import unflatten_tree
    d = Path(directory)
    if not (d / "params.npz").is_file() or not (d / "classifier.json").is_file():
        return None
    with np.load(d / "params.npz", allow_pickle=False) as z:
        params = unflatten_tree({k: z[k] for k in z.files})
    cats, cols = label_names()
    return AttributeCNN(len(cats), len(cols)), params, json.loads(
        (d / "classifier.json").read_text())


def classifier(codes_dir=None, *, retrain: bool = False, steps: int = 1500, log=print):
    """The corpus's attribute classifier: read back, or trained on the real training
    pictures (and saved) when absent or ``retrain``."""
    from plug_jax.families.m6 import image_codes
    d = Path(codes_dir if codes_dir is not None else image_codes.default_dir()) / CLASSIFIER_DIR
    got = None if retrain else load_classifier(d)
    if got is not None:
        log(f"attribute classifier read from {d}", flush=True)
        return got[0], got[1]
    rec = image_codes.products("train")
    module, params = train_classifier(rec["image"], rec["category"], rec["colour"],
                                      steps=steps, log=log)
    save_classifier(params, d, {"steps": steps, "train_pictures": int(len(rec["image"])),
                                "augment": "soften"})
    log(f"attribute classifier trained on {len(rec['image'])} real pictures -> {d}",
        flush=True)
    return module, params


def title_ids(titles, vocabulary, width: int) -> np.ndarray:
    eos = getattr(vocabulary, "eos_id", 1)
    ids = np.zeros((len(titles), width), np.int32)
    for r, t in enumerate(titles):
        row = list(vocabulary.encode(str(t)))[:width - 1] + [eos]
        ids[r, :len(row)] = row
    return ids


def generate(model, params, titles, vocabulary, *, grid: int, width: int = 32,
             top_k: int = 64, temperature: float = 1.0, guidance: float = 1.0,
             seed: int = 0, batch_size: int = 200) -> np.ndarray:
    """Codes ``[N, grid * grid]`` sampled for ``titles``."""
    ids = title_ids(titles, vocabulary, width)
    out = []
    for i in range(0, len(ids), batch_size):
        out.append(model.sample_codes(params, ids[i:i + batch_size],
                                      jax.random.fold_in(jax.random.PRNGKey(seed), i),
                                      grid=grid, top_k=top_k, temperature=temperature,
                                      guidance=guidance))
    return np.concatenate(out, axis=0)


def evaluate(model, params, vocabulary, *, split: str = "test", lang: str = "en",
             codes_dir=None, top_k: int = 64, temperature: float = 1.0,
             guidance: float = 1.0, seed: int = 0, limit: int | None = None,
             classifier_steps: int = 1500, retrain: bool = False, log=print) -> dict:
    """The four accuracies (see the module docstring) and the pictures behind them:
    ``{'rows': {name: {'category', 'colour', 'n'}}, 'real', 'recon', 'generated',
    'random', 'titles'}`` (uint8 pictures)."""
    from plug_jax.families.m6 import image_codes
    meta = image_codes.read_meta(codes_dir)
    data = image_codes.read_split(split, codes_dir)
    rec = image_codes.products(split, limit)
    n = len(rec["image"])
    titles = data[f"title_{lang}"][:n]
    if list(data["product_id"][:n]) != list(rec["product_id"]):
        raise ValueError(f"the image-code corpus's {split} rows are not the products_64 "
                         f"pictures in order; fix: write the corpus again (image_codes)")
    tok, vq = image_codes.load_tokenizer(codes_dir)
    module, cparams = classifier(codes_dir, retrain=retrain, steps=classifier_steps, log=log)
    t0 = time.time()
    codes = generate(model, params, titles, vocabulary, grid=int(meta["grid"]), top_k=top_k,
                     temperature=temperature, guidance=guidance, seed=seed)
    log(f"sampled {n} x {codes.shape[1]} codes in {time.time() - t0:.1f}s", flush=True)
    pictures = {
        "real": rec["image"],
        "recon": image_codes.decode_codes(tok, vq, data["codes"][:n]),
        "generated": image_codes.decode_codes(tok, vq, codes),
        "random": image_codes.decode_codes(
            tok, vq, np.random.default_rng(seed).integers(0, int(meta["n_embed"]),
                                                          codes.shape)),
    }
    rows = {name: accuracy(module, cparams, pics, rec["category"], rec["colour"])
            for name, pics in pictures.items()}
    return {"rows": rows, "titles": titles, "codes": codes, **pictures}


ROW_NAMES = {"real": "real pictures", "recon": "tokenizer reconstructions",
             "generated": "generated from the titles", "random": "random codes (control)"}


def format_rows(rows: dict, split: str) -> str:
    cats, cols = label_names()
    lines = [f"attribute classifier on {split} ({next(iter(rows.values()))['n']} products; "
             f"chance: category {1 / len(cats):.3f}, colour {1 / len(cols):.3f})",
             f"{'pictures':28s} {'category':>9s} {'colour':>7s}"]
    for name, r in rows.items():
        lines.append(f"{ROW_NAMES.get(name, name):28s} {r['category']:9.3f} {r['colour']:7.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    from plug_jax.data.pipeline import task_vocabulary
    from plug_jax.metrics.controls import load_checkpoint
    from plug_jax.models.text_to_image import write_grid
    bindings = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(add_help=False)
    for flag, kind, default in (("--guidance", float, 1.0), ("--top_k", int, 64),
                                ("--temperature", float, 1.0), ("--seed", int, 0),
                                ("--limit", int, None), ("--classifier_steps", int, 1500),
                                ("--png", str, None)):
        ap.add_argument(flag, type=kind, default=default)
    ap.add_argument("--retrain", action="store_true")
    own, rest = ap.parse_known_args(bindings)
    model, params, data, split = load_checkpoint(rest, __doc__.split("\n\n")[0])
    lang = "zh" if "_zh_" in data.mixture_or_task_name else "en"
    vocab = task_vocabulary(data.mixture_or_task_name)
    res = evaluate(model, params, vocab, split=split, lang=lang, codes_dir=model.codes_dir,
                   top_k=own.top_k, temperature=own.temperature, guidance=own.guidance,
                   seed=own.seed, limit=own.limit, classifier_steps=own.classifier_steps,
                   retrain=own.retrain)
    print(f"top-k {own.top_k}, temperature {own.temperature}, guidance {own.guidance}")
    print(format_rows(res["rows"], split), flush=True)
    if own.png:
        k = min(8, len(res["real"]))
        grid = np.stack([res[name][:k] for name in ("real", "recon", "generated", "random")],
                        axis=1)
        write_grid(grid, own.png)
        print(f"rows: real | reconstruction | generated | random codes -> {own.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
