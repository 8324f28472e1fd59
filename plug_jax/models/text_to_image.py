"""Text-to-image as sequence generation (M6, DALL-E style): a title -> the VQGAN codes of a
picture, decoded to pixels by the tokenizer that made them.

:class:`TextToImageLM` is :class:`~plug_jax.models.encdec_lm.EncoderDecoderLM` over a prefix-LM
network whose vocabulary is the text vocabulary followed by the ``num_codes`` image codes
(code ``c`` is id ``code_offset + c``, ``code_offset = config.vocab_size - num_codes``; the
task ``m6_shop_t2i_<lang>_v1`` writes its targets so). Batches are the ``encdec`` converter's:
``encoder_input_tokens`` (the title and EOS) and ``grid * grid`` target codes, one picture per
row (the experiment binds ``pack = False``; a packed row's titles are dropped together).

Training: the codes' cross-entropy. With ``cond_drop > 0`` each training row's title is
replaced, with that probability, by the empty title (EOS alone): the unconditional model that
classifier-free guidance needs, in the same weights (Ho & Salimans 2022; the "classifier-free
style" guidance the issue asks for).

Sampling (:meth:`sample_codes`): the title is encoded once, codes are drawn one per step over a
KV cache (``plug_jax.decoding.generate``); the logits outside the code range are masked, so
every generated id is a code. ``top_k`` and ``temperature`` as in text sampling. With
``guidance = s != 1`` each row is decoded twice in one batch, with its title and with the
empty one, both fed the same sampled codes, and the next code is drawn from
``log p(.|empty) + s * (log p(.|title) - log p(.|empty))`` (``s = 1``: plain conditional
sampling).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from plug_jax import decoding, losses
from plug_jax.models.encdec_lm import EncoderDecoderLM

EOS_ID = 1
NEG = -1e9


@dataclasses.dataclass(frozen=True)
class CodeStep:
    """``step_fn`` wrapper: logits restricted to ``[lo, hi)`` and, with ``guidance != 1``,
    classifier-free guidance between the batch's first half (titles) and second half (empty
    titles). The second half is always fed the first half's tokens."""

    inner: Any
    lo: int
    hi: int
    guidance: float = 1.0

    @property
    def guided(self) -> bool:
        return float(self.guidance) != 1.0

    def prepare_params(self, params):
        prepare = getattr(self.inner, "prepare_params", None)
        return params if prepare is None else prepare(params)

    def __call__(self, params, cache, token_ids, positions, token_mask):
        if self.guided:
            half = token_ids.shape[0] // 2
            token_ids = jnp.concatenate([token_ids[:half], token_ids[:half]], axis=0)
        logits, cache = self.inner(params, cache, token_ids, positions, token_mask)
        v = jnp.arange(logits.shape[-1])
        keep = (v >= self.lo) & (v < self.hi)
        logp = jax.nn.log_softmax(jnp.where(keep, logits.astype(jnp.float32), NEG), axis=-1)
        if self.guided:
            half = logp.shape[0] // 2
            cond, uncond = logp[:half], logp[half:]
            g = uncond + float(self.guidance) * (cond - uncond)
            logp = jnp.concatenate([g, g], axis=0)
        return jnp.where(keep, logp, NEG), cache


@dataclasses.dataclass(frozen=True)
class TextToImageLM(EncoderDecoderLM):
    num_codes: int = 512
    cond_drop: float = 0.1
    family: str = "m6"
    codes_dir: str | None = None  # the image-code corpus (its tokenizer decodes); default
    #                               plug_jax.families.m6.image_codes.default_dir()

    kind: ClassVar[str] = "text_to_image"
    writes_images: ClassVar[bool] = True

    def __post_init__(self):
        vocab = int(getattr(self.config, "vocab_size", 0))
        if not 0 < int(self.num_codes) < vocab:
            raise ValueError(f"TextToImageLM: {self.num_codes} codes do not fit the network's "
                             f"vocabulary of {vocab}; fix: set vocab_size to the text "
                             f"vocabulary's size + num_codes")
        if not 0.0 <= float(self.cond_drop) < 1.0:
            raise ValueError(f"TextToImageLM: cond_drop must be in [0, 1), got {self.cond_drop}")

    def with_config(self, config) -> "TextToImageLM":
        """The same model on another network config (the contract test's ``tiny`` preset):
        ``num_codes`` kept where it fits the new vocabulary, else half of it."""
        n = self.num_codes if self.num_codes < config.vocab_size else config.vocab_size // 2
        return dataclasses.replace(self, config=config, num_codes=n)

    @property
    def code_offset(self) -> int:
        return int(self.config.vocab_size) - int(self.num_codes)

    def loss_sums(self, params, batch: dict, rng=None, deterministic: bool = False):
        batch = dict(batch)
        enc = jnp.asarray(batch["encoder_input_tokens"], jnp.int32)
        if self.cond_drop > 0 and rng is not None and not deterministic:
            drop = jax.random.bernoulli(jax.random.fold_in(rng, 0xC0DE), self.cond_drop,
                                        (enc.shape[0],))[:, None]
            first = jnp.zeros_like(enc).at[:, 0].set(1)
            batch["encoder_input_tokens"] = jnp.where(drop, first * EOS_ID, enc)
            if "encoder_segment_ids" in batch:  # packed: the row's one empty source
                batch["encoder_segment_ids"] = jnp.where(drop, first,
                                                         batch["encoder_segment_ids"])
            if "encoder_positions" in batch:
                batch["encoder_positions"] = jnp.where(drop, 0, batch["encoder_positions"])
        out = self.outputs(params, batch, rng, deterministic)
        return losses.cross_entropy_sums(out["logits"], batch["decoder_target_tokens"],
                                         batch.get("decoder_loss_weights"), self.z_loss)

    # -------------------------------------------------------------------- sampling
    def sample_codes(self, params, title_ids, rng, *, grid: int, top_k: int = 0,
                     temperature: float = 1.0, guidance: float = 1.0) -> np.ndarray:
        """``title_ids`` int ``[B, E]`` (each title and its EOS, zero-padded) -> codes
        ``[B, grid * grid]`` in ``[0, num_codes)``. ``temperature == 0`` is greedy."""
        title_ids = np.asarray(title_ids, np.int32)
        b = title_ids.shape[0]
        step_fn, init_cache = self.decode_fns()
        step = CodeStep(step_fn, self.code_offset, self.code_offset + int(self.num_codes),
                        float(guidance))
        enc = title_ids
        if step.guided:
            empty = np.zeros_like(title_ids)
            empty[:, 0] = EOS_ID
            enc = np.concatenate([title_ids, empty], axis=0)
        dec = {"model": params, "encoder_ids": jnp.asarray(enc)}
        prompt = jnp.zeros((enc.shape[0], 1), jnp.int32)
        method = "greedy" if float(temperature) == 0.0 else "sample"
        out = decoding.generate(step, init_cache, dec, prompt, None, int(grid) ** 2,
                                method=method, temperature=float(temperature) or 1.0,
                                top_k=int(top_k), rng=rng).tokens
        codes = np.asarray(out)[:b] - self.code_offset
        if codes.min() < 0 or codes.max() >= self.num_codes:  # the mask makes this impossible
            raise AssertionError("a generated id is outside the code range")
        return codes

    def infer_images(self, params, dataset_cfg, prompts, vocabulary, model_dir: str,
                     decode_kw: dict, step=None, samples: int = 4) -> list[dict]:
        """``plug-infer --prompt "<title>"``: ``samples`` pictures per title (top-k sampling
        with ``TOP_K`` (default 64 when 0), ``TEMPERATURE``, ``GUIDANCE``), decoded by the
        image-code corpus's tokenizer and written as one PNG grid (a row per title) to
        ``MODEL_DIR/infer/text_to_image.png``, each picture also alone as
        ``text_to_image_<row>_<sample>.png``."""
        from plug_jax.families.m6 import image_codes
        from plug_jax.trainer import loop  # noqa: PLC0415 (loop imports the models)
        if not prompts:
            raise loop.TrainError("text-to-image needs titles: pass --prompt \"<title>\"")
        tokenizer, vq_params = image_codes.load_tokenizer(self.codes_dir)
        meta = image_codes.read_meta(self.codes_dir)
        if int(meta["n_embed"]) != int(self.num_codes):
            raise loop.TrainError(f"the image-code corpus has {meta['n_embed']} codes, the "
                                  f"model {self.num_codes}; fix: point codes_dir at the "
                                  f"corpus the model was trained on")
        width = int(dict(dataset_cfg.task_feature_lengths).get("inputs", 32))
        eos = getattr(vocabulary, "eos_id", EOS_ID)
        ids = np.zeros((len(prompts) * samples, width), np.int32)
        for r, p in enumerate(prompts):
            row = list(vocabulary.encode(p))[:width - 1] + [eos]
            ids[r * samples:(r + 1) * samples, :len(row)] = row
        top_k = int(decode_kw.get("top_k") or 64)
        codes = self.sample_codes(params, ids, jax.random.PRNGKey(int(decode_kw.get("seed", 0))),
                                  grid=int(meta["grid"]), top_k=top_k,
                                  temperature=float(decode_kw.get("temperature", 1.0)),
                                  guidance=float(decode_kw.get("guidance", 1.0)))
        pictures = image_codes.decode_codes(tokenizer, vq_params, codes)
        out_dir = os.path.join(model_dir, "infer")
        os.makedirs(out_dir, exist_ok=True)
        grid_png = os.path.join(out_dir, "text_to_image.png")
        write_grid(pictures.reshape((len(prompts), samples) + pictures.shape[1:]), grid_png)
        results = []
        from PIL import Image
        for r, p in enumerate(prompts):
            for s in range(samples):
                png = os.path.join(out_dir, f"text_to_image_{r}_{s}.png")
                Image.fromarray(pictures[r * samples + s]).save(png)
                results.append({"prompt": p, "sample": s, "png": png,
                                "codes": codes[r * samples + s].tolist()})
        if jax.process_index() == 0:
            print(f"pictures from {model_dir}" + (f" @ step {step}" if step is not None else "")
                  + f" (top-k {top_k}, guidance {decode_kw.get('guidance', 1.0)}): {samples} "
                  f"per title -> {grid_png}", flush=True)
            for r, p in enumerate(prompts):
                print(f"[t2i] {p} ▸ {out_dir}/text_to_image_{r}_*.png", flush=True)
        return results


def write_grid(pictures, path: str, *, scale: int = 2, gap: int = 2) -> str:
    """uint8 ``[rows, cols, H, W, 3]`` -> one PNG, each picture enlarged ``scale`` x
    (nearest), ``gap`` white pixels between them."""
    from PIL import Image
    pictures = np.asarray(pictures, np.uint8)
    rows, cols, h, w, _ = pictures.shape
    hs, ws = h * scale, w * scale
    canvas = np.full((rows * (hs + gap) - gap, cols * (ws + gap) - gap, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            big = np.repeat(np.repeat(pictures[r, c], scale, axis=0), scale, axis=1)
            canvas[r * (hs + gap):r * (hs + gap) + hs, c * (ws + gap):c * (ws + gap) + ws] = big
    Image.fromarray(canvas).save(path)
    return path


__all__ = ["CodeStep", "TextToImageLM", "write_grid"]
