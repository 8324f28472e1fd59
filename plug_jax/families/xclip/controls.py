"""Learning results with their controls: does a trained X-CLIP use the video, and its order?

``retrieval_with_controls`` scores one checkpoint on an eval split (the task's examples
through the trainer's pipeline, every video against every caption of the split) with:

* **model**: the real videos;
* **shuffled frames**: every video's frames in a fixed random order (one permutation per
  video, never the identity). Shop World captions state the order of the events, so a
  model that reads the order must lose on the *order-sensitive* captions;
* **one frame repeated**: the middle frame, ``T`` times (no motion, no events);
* **blank video**: zeros after normalisation (a uniform grey clip). All blank videos tie;
  ties are broken at random (the mean over ``tie_breaks`` draws), so this is chance.

Reported, text->video and video->text: R@1/5/10 with identical captions as positives of
each other (the trainer's whole-set metric) and the chance level of each; median rank;
and text->video R@1 on the **order-sensitive subset**: the captions for which another
video of the split shows the same product with the same events in another order (so only
the order tells them apart; read from the caption text). The **duplicate ceiling**: if a
caption counted only its own video as the positive, a model could not tell apart videos
with identical captions, and text->video R@1 could reach at most the mean of ``1 / k``
(``k`` videos sharing the caption); the one-to-one R@1 is printed next to it.

Run it as a module (the experiment's gin, its MODEL_DIR, ``--split``)::

    python -m plug_jax.families.xclip.controls --gin_file=experiments/xclip/shop_xl.gin \\
        --gin.MODEL_DIR=/tmp/xclip_xl --split=test
"""
from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np

from plug_jax.metrics import retrieval

CONTROLS = ("model", "shuffled_frames", "one_frame", "blank")
_EVENTS = re.compile(r"^In the video, (.+?) first (.+?)(?:, then (.+?), and finally (.+?)"
                     r"| and then (.+?))\.$")


def caption_events(text: str):
    """``(subject, (event, ...))`` of an English Shop World video caption, or ``None``."""
    m = _EVENTS.match(text.strip())
    if not m:
        return None
    events = tuple(e for e in m.groups()[1:] if e)
    return m.group(1), events


def order_sensitive(captions) -> np.ndarray:
    """``[N]`` bool: another caption has the same subject and events in another order."""
    parsed = [caption_events(c) for c in captions]
    out = np.zeros(len(captions), bool)
    for i, p in enumerate(parsed):
        if p is None:
            continue
        out[i] = any(q is not None and q[0] == p[0] and sorted(q[1]) == sorted(p[1])
                     and q[1] != p[1] for q in parsed)
    return out


def chance_recall(positives: np.ndarray, k: int) -> float:
    """Expected R@k of a random ranking: 1 - C(N - p, k) / C(N, k), averaged over queries."""
    n = positives.shape[1]
    vals = [1.0 - math.comb(n - int(p), k) / math.comb(n, k) if n - int(p) >= k else 1.0
            for p in positives.sum(axis=1)]
    return float(np.mean(vals))


def _videos(frames: np.ndarray, control: str, rng: np.random.Generator) -> np.ndarray:
    if control == "model":
        return frames
    if control == "blank":
        return np.zeros_like(frames)
    t = frames.shape[1]
    if control == "one_frame":
        return np.repeat(frames[:, t // 2:t // 2 + 1], t, axis=1)
    out = np.empty_like(frames)
    for i in range(len(frames)):  # a random order, never the identity
        perm = rng.permutation(t)
        while t > 1 and np.all(perm == np.arange(t)):
            perm = rng.permutation(t)
        out[i] = frames[i, perm]
    return out


def retrieval_with_controls(model, params, dataset_cfg, *, split: str = "validation",
                            max_examples: int | None = None, tie_breaks: int = 10,
                            seed: int = 0, vocabulary=None) -> dict[str, Any]:
    """Scores per control (see the module docstring); ``vocabulary`` decodes the captions
    for the order-sensitive subset (default: the task's)."""
    from plug_jax.data.pipeline import task_vocabulary
    from plug_jax.metrics.controls import batches
    vocabulary = vocabulary or task_vocabulary(dataset_cfg.mixture_or_task_name)
    fn = jax.jit(model.eval_outputs)
    rng = np.random.default_rng(seed)
    parts: dict[str, list] = {c: [] for c in CONTROLS}
    for b in batches(dataset_cfg, split, max_examples):
        for c in CONTROLS:
            parts[c].append(jax.device_get(fn(params, {**b, "frames": _videos(
                b["frames"], c, rng)})))

    def cat(ps):
        out = jax.tree_util.tree_map(lambda *x: np.concatenate(x), *ps)
        keep = np.asarray(out["valid"]) > 0
        if max_examples:
            keep &= np.arange(len(keep)) < max_examples
        return jax.tree_util.tree_map(lambda x: np.asarray(x)[keep], out)

    outs = {c: cat(p) for c, p in parts.items()}
    keys = outs["model"]["match_key"]
    eos = getattr(vocabulary, "eos_id", 1)
    captions = []
    for row in keys:
        ids = [int(t) for t in row if t > 0]
        captions.append(vocabulary.decode(ids[:ids.index(eos)] if eos in ids else ids))
    positives = retrieval.pair_positives(keys, keys)  # [videos, texts]
    sensitive = order_sensitive(captions)
    sim = jax.jit(model.similarity)
    a, b = model.side_names
    names = (f"{a}2{b}", f"{b}2{a}")
    res: dict[str, Any] = {"examples": len(captions), "order_sensitive": int(sensitive.sum())}
    for c in CONTROLS:
        scores = np.asarray(jax.device_get(sim(params, outs[c]["rows"], outs[c]["cols"])),
                            np.float64)
        # Blank videos are identical inputs: their scores tie up to float rounding, which
        # is dropped (5 decimals) before a random tie-break (a 1e-9 jitter reorders ties only).
        draws = [scores] if c != "blank" else [
            np.round(scores, 5) + 1e-9 * np.random.default_rng(seed + 1 + s).random(
                scores.shape) for s in range(tie_breaks)]
        runs = []
        for s in draws:
            m = retrieval.two_way_recall(s, positives, (1, 5, 10), names=names)
            for name, (q, p) in zip(names, ((s, positives), (s.T, positives.T))):
                m[f"{name}_median_rank"] = retrieval.rank_summary(q, p)["median_rank"]
            t2v = s.T[sensitive]
            m["order_sensitive_r@1"] = (retrieval.recall_at_k(t2v, positives.T[sensitive],
                                                              (1,))[1]
                                        if sensitive.any() else float("nan"))
            m["one_to_one_r@1"] = retrieval.recall_at_k(s.T, np.eye(len(s), dtype=bool),
                                                        (1,))[1]
            runs.append(m)
        res[c] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    res["chance"] = {f"{name}_r@{k}": chance_recall(p, k)
                     for name, p in zip(names, (positives, positives.T)) for k in (1, 5, 10)}
    if sensitive.any():
        res["chance"]["order_sensitive_r@1"] = chance_recall(positives.T[sensitive], 1)
    share = positives.T.sum(axis=1)  # videos per caption
    res["duplicate_ceiling"] = float(np.mean(1.0 / share))
    return res


def format_controls(res: dict, split: str) -> str:
    a2b, b2a = "video2text", "text2video"
    lines = [f"X-CLIP retrieval on {split}: {res['examples']} videos x {res['examples']} "
             f"captions (identical captions are positives of each other); order-sensitive "
             f"captions: {res['order_sensitive']}"]
    head = f"  {'':16s}" + "".join(f"{h:>10s}" for h in (
        "t2v R@1", "t2v R@5", "t2v R@10", "v2t R@1", "v2t R@10", "t2v MdR", "order R@1"))
    lines.append(head)
    for c in CONTROLS + ("chance",):
        m = res[c]
        cells = [m.get(f"{b2a}_r@1"), m.get(f"{b2a}_r@5"), m.get(f"{b2a}_r@10"),
                 m.get(f"{a2b}_r@1"), m.get(f"{a2b}_r@10"), m.get(f"{b2a}_median_rank"),
                 m.get("order_sensitive_r@1")]
        lines.append(f"  {c.replace('_', ' '):16s}" + "".join(
            f"{'-':>10s}" if v is None else f"{v:10.3f}" for v in cells))
    lines.append(f"  duplicate ceiling (only a caption's own video counts): t2v R@1 <= "
                 f"{res['duplicate_ceiling']:.3f}; the model's one-to-one t2v R@1 "
                 f"{res['model']['one_to_one_r@1']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from plug_jax.metrics.controls import load_checkpoint
    model, params, data, split = load_checkpoint(argv, __doc__.split("\n\n")[0])
    res = retrieval_with_controls(model, params, data, split=split)
    print(format_controls(res, split), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
