"""The Shop World image-code corpus M6 text-to-image learns from: every ``products_64`` picture
as the VQGAN codes of a trained tokenizer, with its title (zh, en), category and colour.

A directory (default ``$PLUG_JAX_M6_CODES``, else ``$PLUG_JAX_DATA_DIR/m6_shop_codes``, else
``~/.cache/plug_jax/data/m6_shop_codes``) holding

* ``{train,validation,test}.npz``: ``codes`` int16 ``[N, grid * grid]`` (row-major),
  ``title_en`` / ``title_zh`` / ``category`` / ``colour`` / ``product_id`` (unicode arrays,
  read with ``allow_pickle=False``), row ``i`` being example ``i`` of the split;
* ``tokenizer/``: the tokenizer's parameters as a plug_jax params checkpoint
  (``config.json`` is its :class:`~plug_jax.layers.vqgan.VQGANConfig`), so the corpus carries
  the decoder that turns generated codes back into pictures;
* ``codes.json``: the grid, the codebook size, where the tokenizer came from and at which step.

Written by (the tokenizer experiment's gin flags and ``MODEL_DIR``, as ``plug-eval`` takes
them)::

    python -m plug_jax.families.m6.image_codes \\
        --gin_file=experiments/m6/shop_tokenizer_f4.gin --gin.MODEL_DIR=/tmp/m6_vq_f4 \\
        [--out DIR]

Each split is written to a temporary file and renamed when complete, so an interrupted run
leaves no half-written split; ``tokenizer/`` and ``codes.json`` come last (a directory without
``codes.json`` is incomplete and is refused by the tasks).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CORPUS = "m6_shop_codes"
ENV = "PLUG_JAX_M6_CODES"
SPLITS = ("train", "validation", "test")
META_FILE = "codes.json"
TOKENIZER_DIR = "tokenizer"
LABELS = ("title_en", "title_zh", "category", "colour", "product_id")


class ImageCodesError(ValueError):
    """A missing or incomplete image-code corpus (one line naming the fix)."""


def default_dir() -> Path:
    """``$PLUG_JAX_M6_CODES`` if set, else ``<$PLUG_JAX_DATA_DIR>/m6_shop_codes`` (read when
    called, so a variable set after import is honoured)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    from plug_jax.data.corpora import default_data_dir
    return default_data_dir(CORPUS)


def _how_to_write(path) -> str:
    return (f"fix: write it with python -m plug_jax.families.m6.image_codes "
            f"--gin_file=experiments/m6/shop_tokenizer_f4.gin --gin.MODEL_DIR=<trained "
            f"tokenizer> --out {path} (or point ${ENV} at an existing one)")


def read_meta(directory=None) -> dict:
    path = Path(directory) if directory is not None else default_dir()
    meta = path / META_FILE
    if not meta.is_file():
        raise ImageCodesError(f"no image-code corpus at {path} ({META_FILE} missing); "
                              + _how_to_write(path))
    return json.loads(meta.read_text())


def read_split(split: str, directory=None) -> dict[str, np.ndarray]:
    """The arrays of ``split`` (``codes`` and the :data:`LABELS`)."""
    if split not in SPLITS:
        raise ImageCodesError(f"image codes have splits {SPLITS}, not {split!r}")
    path = Path(directory) if directory is not None else default_dir()
    read_meta(path)
    with np.load(path / f"{split}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclasses.dataclass(frozen=True)
class Tokenizer:
    """A corpus's tokenizer: its config and network (``module``), what encoding and decoding
    need (``models.ImageTokenizer`` has the same two attributes; this module does not import
    the models, which read corpora)."""

    config: Any

    @property
    def module(self):
        from plug_jax.layers.vq_compact import build
        return build(self.config)


def load_tokenizer(directory=None):
    """``(Tokenizer, params)`` of the corpus's ``tokenizer/`` checkpoint (a VQGAN or a
    compact VQ-VAE, as its ``config.json`` says)."""
    from plug_jax.layers.vq_compact import config_from_dict
    from plug_jax.trainer.checkpointing import load_params
    path = Path(directory) if directory is not None else default_dir()
    read_meta(path)
    config_dict, params, _ = load_params(path / TOKENIZER_DIR)
    return Tokenizer(config_from_dict(config_dict)), params


def encode_pictures(tokenizer, params, pictures: np.ndarray, batch_size: int = 64):
    """uint8 ``[N, H, W, 3]`` pictures -> int ``[N, grid * grid]`` codes."""
    import jax
    import jax.numpy as jnp
    fn = jax.jit(lambda p, x: tokenizer.module.apply({"params": p}, x, method="encode")[1])
    out = []
    for i in range(0, len(pictures), batch_size):
        x = jnp.asarray(pictures[i:i + batch_size], jnp.float32) / 127.5 - 1.0
        out.append(np.asarray(fn(params, x)).reshape(len(x), -1))
    return np.concatenate(out, axis=0)


def decode_codes(tokenizer, params, codes, batch_size: int = 64) -> np.ndarray:
    """int ``[N, grid * grid]`` codes -> uint8 ``[N, H, W, 3]`` pictures."""
    import jax
    import jax.numpy as jnp
    codes = np.asarray(codes)
    grid = int(round(np.sqrt(codes.shape[1])))
    if grid * grid != codes.shape[1]:
        raise ImageCodesError(f"{codes.shape[1]} codes per picture is not a square grid")
    fn = jax.jit(lambda p, c: tokenizer.module.apply({"params": p}, c, method="decode_codes"))
    out = []
    for i in range(0, len(codes), batch_size):
        c = jnp.asarray(codes[i:i + batch_size].reshape(-1, grid, grid), jnp.int32)
        x = np.asarray(fn(params, c), np.float32)
        out.append(np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8))
    return np.concatenate(out, axis=0)


def products(split: str, limit: int | None = None) -> dict[str, np.ndarray]:
    """The ``products_64`` records of ``split`` in index order: ``image`` uint8 and the
    :data:`LABELS` as unicode arrays."""
    from plug_jax.data import configure_tensorflow
    configure_tensorflow()
    from plug_jax.data.shop_world_tfds import ShopWorldTfdsSource
    src = ShopWorldTfdsSource("products_64", features=["image", *LABELS])
    ds = src.get_dataset(split=split, shuffle=False)
    if limit is not None:
        ds = ds.take(int(limit))
    cols: dict[str, list] = {k: [] for k in ("image", *LABELS)}
    for ex in ds.as_numpy_iterator():
        cols["image"].append(ex["image"])
        for k in LABELS:
            cols[k].append(ex[k].decode("utf-8"))
    return {"image": np.stack(cols["image"]),
            **{k: np.asarray(cols[k], dtype=str) for k in LABELS}}


def write(tokenizer, params, out_dir, *, source: str = "", step=None,
          limit: int | None = None, log=print) -> Path:
    """Encodes every split's pictures with ``tokenizer`` and writes the corpus to
    ``out_dir`` (see the module docstring); ``limit`` caps each split (tests)."""
    from plug_jax.trainer.checkpointing import save_params
    strip = getattr(tokenizer, "tokenizer_params", None)  # drops a GAN discriminator's params
    params = strip(params) if strip is not None else params
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / META_FILE).exists():
        (out / META_FILE).unlink()  # incomplete until rewritten last
    grid = n = None
    for split in SPLITS:
        t0 = time.time()
        rec = products(split, limit)
        codes = encode_pictures(tokenizer, params, rec.pop("image"))
        grid, n = int(round(np.sqrt(codes.shape[1]))), tokenizer.config.n_embed
        tmp = out / f".{split}.tmp.npz"
        np.savez(tmp, codes=codes.astype(np.int16), **rec)
        os.replace(tmp, out / f"{split}.npz")
        used = len(np.unique(codes))
        log(f"{split}: {len(codes)} pictures -> {grid}x{grid} codes ({used} of {n} codes "
            f"used) in {time.time() - t0:.1f}s", flush=True)
    save_params(out / TOKENIZER_DIR, params,
                config_dict=dataclasses.asdict(tokenizer.config),
                metadata={"family": getattr(tokenizer, "family", "m6"),
                          "kind": getattr(tokenizer, "kind", "image_tokenizer"),
                          "source": source, "step": step}, overwrite=True)
    meta = {"grid": grid, "n_embed": n, "resolution": tokenizer.config.resolution,
            "tokenizer_source": source, "tokenizer_step": step, "limit": limit}
    tmp = out / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / META_FILE)
    log(f"image codes written to {out}", flush=True)
    return out


def main(argv=None) -> int:
    import argparse

    from plug_jax.metrics.controls import load_checkpoint
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--out", default=None, help=f"output directory (default: ${ENV}, else "
                    f"$PLUG_JAX_DATA_DIR/{CORPUS})")
    ap.add_argument("--limit", type=int, default=None, help="pictures per split (tests)")
    own, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    model, params, _, _, step = load_checkpoint(
        rest, "Encode the products_64 pictures with a trained image tokenizer.", with_step=True)
    if getattr(model, "kind", None) != "image_tokenizer":
        raise SystemExit(f"image_codes: the gin config's MODEL is a {type(model).__name__}, "
                         f"not an image tokenizer; fix: pass the tokenizer experiment "
                         f"(experiments/m6/shop_tokenizer_f4.gin)")
    import gin
    write(model, params, own.out or default_dir(), source=str(gin.query_parameter("%MODEL_DIR")),
          step=None if step is None else int(step), limit=own.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
