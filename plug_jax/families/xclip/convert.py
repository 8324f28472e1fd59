"""X-CLIP checkpoints <-> :class:`plug_jax.families.xclip.network.XCLIPDualEncoder` params.

The release's checkpoint is ``torch.save(model.state_dict())`` of its ``XCLIP`` class
(``pytorch_model.bin.<epoch>``): ``clip.*`` (the OpenAI CLIP layout,
:mod:`plug_jax.families.clip.convert_openai`), ``frame_position_embeddings.weight``
``[context, P]``, ``transformerClip.resblocks.N.*`` (OpenAI blocks: the ``seqTransf``
temporal transformer) and the eight matrices (:data:`plug_jax.families.xclip.network.MATRICES`),
whose shapes tie the checkpoint to its words and frames.

A plain OpenAI CLIP state dict imported as X-CLIP starts X-CLIP as the release does: the
frame positions copy the text positions, the temporal blocks copy the first
``temporal_layers`` text blocks, and the matrices are the identity.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from plug_jax.convert import io as cio
from plug_jax.families.clip import convert_hf as hf_clip
from plug_jax.families.clip.convert_openai import (_count_blocks, _ignored, _np, block_from_hf,
                                                   block_to_hf, clip_from_openai, clip_to_openai,
                                                   openai_clip_config, read_state_dict)

__all__ = ["xclip_config_from_state_dict", "xclip_from_state_dict", "xclip_to_state_dict",
           "read_state_dict"]


# --------------------------------------------------------------------- X-CLIP
def _temporal_from_openai(blocks: list[dict], cfg, api: str) -> dict:
    tf = hf_clip._transforms(cfg.width, cfg.heads)
    layers = []
    for i, block in enumerate(blocks):
        hf = block_to_hf(block, cfg.width, api, f"transformerClip.resblocks.{i}.")
        layers.append(cio.unflatten_tree({path: hf_clip._contiguous(tf[kind][0](hf[key]))
                                          for key, path, kind in hf_clip._LAYER}))
    return cio.assemble_decoder(layers, cfg.scan_layers)


def _temporal_to_openai(stack: Mapping, cfg, api: str) -> dict:
    tf = hf_clip._transforms(cfg.width, cfg.heads)
    out = {}
    for i, layer in enumerate(cio.split_layers(stack, cfg.layers, api)):
        lf = cio.flatten_tree(layer)
        hf = {key: tf[kind][1](np.asarray(lf[path], np.float32))
              for key, path, kind in hf_clip._LAYER}
        out.update({f"transformerClip.resblocks.{i}.{k}": v
                    for k, v in block_from_hf(hf).items()})
    return out


def xclip_config_from_state_dict(state_dict: Mapping[str, Any], base=None, **tower_overrides):
    """The :class:`XClipConfig` of an X-CLIP (or plain OpenAI CLIP) state dict.

    ``base`` (an ``XClipConfig``, e.g. a preset): the frames, words and temporal depth to use
    where the state dict does not fix them (a plain CLIP state dict); where it does, they
    must agree, or one line names the shapes."""
    from plug_jax.families.xclip.config import XClipConfig
    api = "X-CLIP import"
    clip_sd = {k[5:]: v for k, v in state_dict.items() if k.startswith("clip.")}
    is_xclip = bool(clip_sd)
    clip = openai_clip_config(clip_sd if is_xclip else state_dict, **tower_overrides)
    given = base is not None
    base = base if given else XClipConfig.from_preset("ViT-B/32-msrvtt")
    if given:  # what the layout does not store comes from the config given
        keep = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_dropout_rate")
        tower = lambda got, want, *more: got.replace(  # noqa: E731
            **{f: getattr(want, f) for f in keep + more})
        clip = clip.replace(vision=tower(clip.vision, base.clip.vision),
                            text=tower(clip.text, base.clip.text, "eos_token_id", "pooling"),
                            logit_scale_init=base.clip.logit_scale_init)
    fields = dict(num_frames=base.num_frames, num_words=base.num_words,
                  temporal_layers=base.temporal_layers, frame_positions=clip.text.max_len,
                  temperature=base.temperature)
    if not is_xclip and not given:  # the release copies its 4 blocks from 12 text blocks
        fields["temporal_layers"] = min(base.temporal_layers, clip.text.layers)
    if is_xclip:
        shape = lambda k: tuple(np.shape(state_dict[k])) if k in state_dict else None  # noqa
        words, frames = shape("word_logit_weight"), shape("frame_logit_weight")
        if words is None or frames is None or shape("frame_position_embeddings.weight") is None:
            raise ValueError(f"{api}: the state dict has clip.* but lacks X-CLIP's "
                             f"word_logit_weight / frame_logit_weight / "
                             f"frame_position_embeddings.weight; is it a seqTransf X-CLIP "
                             f"checkpoint?")
        if given and (words[0], frames[0]) != (base.num_words, base.num_frames):
            raise ValueError(f"{api}: the checkpoint's word matrices are {words[0]}x{words[1]} "
                             f"and frame matrices {frames[0]}x{frames[1]}, but preset "
                             f"{base.preset!r} has {base.num_words} words and "
                             f"{base.num_frames} frames; pass a preset with "
                             f"num_words={words[0]}, num_frames={frames[0]} (or none)")
        fields.update(num_words=words[0], num_frames=frames[0],
                      frame_positions=shape("frame_position_embeddings.weight")[0],
                      temporal_layers=_count_blocks(
                          [k.replace("transformerClip.", "transformer.") for k in state_dict
                           if k.startswith("transformerClip.")], "transformer.resblocks."))
    return XClipConfig(clip=clip, temporal_heads=max(clip.projection_dim // 64, 1),
                       preset=base.preset if given else "custom", **fields)


def xclip_from_state_dict(state_dict: Mapping[str, Any], config=None, *, strict: bool = True):
    """``(XClipConfig, params)`` from an X-CLIP state dict, or from a plain OpenAI CLIP one
    (then initialised as the release does; ``config`` gives frames / words)."""
    from plug_jax.families.xclip.network import MATRICES, matrix_sizes
    api = "X-CLIP import"
    over = {}
    if config is not None:
        over = {"scan_layers": config.clip.vision.scan_layers}
    cfg = xclip_config_from_state_dict(state_dict, config, **over)
    clip_sd = {k[5:]: v for k, v in state_dict.items() if k.startswith("clip.")}
    is_xclip = bool(clip_sd)
    _, clip_params = clip_from_openai(clip_sd if is_xclip else state_dict, cfg.clip,
                                      strict=strict)
    tcfg = cfg.temporal
    sizes = matrix_sizes(cfg)
    params: dict[str, Any] = {"clip": clip_params}
    if is_xclip:
        used = {"frame_position_embeddings.weight", *(n for n, _ in MATRICES)}
        blocks = [{k[len(f"transformerClip.resblocks.{i}."):]: v for k, v in state_dict.items()
                   if k.startswith(f"transformerClip.resblocks.{i}.")}
                  for i in range(cfg.temporal_layers)]
        pos = _np(state_dict["frame_position_embeddings.weight"])
        for name, n in sizes.items():
            got = tuple(np.shape(state_dict[name])) if name in state_dict else None
            if got != (n, n):
                raise ValueError(f"{api}: {name} has shape {got}, expected ({n}, {n}) for "
                                 f"{cfg.num_words} words, {cfg.num_frames} frames and "
                                 f"{cfg.clip.projection_dim}-d features")
            params[name] = np.require(_np(state_dict[name]).astype(np.float32),
                                      requirements="C")
        leftover = sorted(k for k in state_dict if not k.startswith(("clip.", "transformerClip."))
                          and k not in used and not _ignored(k))
        if strict and leftover:
            raise ValueError(f"{api}: unexpected tensor {leftover[0]!r} is not part of a "
                             f"seqTransf X-CLIP model; pass strict=False to ignore it")
    else:  # the release's initialisation from CLIP
        if cfg.temporal_layers > cfg.clip.text.layers:
            raise ValueError(f"{api}: temporal_layers {cfg.temporal_layers} exceeds the "
                             f"{cfg.clip.text.layers} text blocks they are copied from")
        if tcfg.width != cfg.clip.text.width:
            raise ValueError(f"{api}: the text width {cfg.clip.text.width} differs from the "
                             f"projection dim {tcfg.width}; the temporal blocks cannot start "
                             f"from the text blocks")
        blocks = [{k[len(f"transformer.resblocks.{i}."):]: v for k, v in state_dict.items()
                   if k.startswith(f"transformer.resblocks.{i}.")}
                  for i in range(cfg.temporal_layers)]
        pos = _np(state_dict["positional_embedding"])
        params.update({name: np.eye(n, dtype=np.float32) for name, n in sizes.items()})
    params["temporal"] = {"frame_pos_embed": {"embedding": np.require(
        pos.astype(np.float32), requirements="C")},
        "stack": _temporal_from_openai(blocks, tcfg, api)}
    _check_shapes(cfg, params, api)
    return cfg, params


def xclip_to_state_dict(params: Mapping, config) -> dict:
    """The release's ``XCLIP`` state dict (float32 numpy) of :class:`XCLIPDualEncoder` params."""
    from plug_jax.families.xclip.network import MATRICES
    api = "X-CLIP export"
    p = cio.unbox_params(params)
    for k in ("clip", "temporal", *(n for n, _ in MATRICES)):
        if k not in p:
            raise ValueError(f"{api}: params lack {k!r}; expected XCLIPDualEncoder params")
    out = {f"clip.{k}": v for k, v in clip_to_openai(p["clip"], config.clip).items()}
    out["frame_position_embeddings.weight"] = np.asarray(
        p["temporal"]["frame_pos_embed"]["embedding"], np.float32)
    out.update(_temporal_to_openai(p["temporal"]["stack"], config.temporal, api))
    out.update({n: np.asarray(p[n], np.float32) for n, _ in MATRICES})
    return {k: np.require(v, requirements="C") for k, v in out.items()}


def _check_shapes(config, params: Mapping, api: str) -> None:
    from flax import linen as nn

    from plug_jax.families.xclip.network import abstract_params
    want = {k: tuple(v.shape)
            for k, v in cio.flatten_tree(nn.unbox(abstract_params(config))).items()}
    got = {k: tuple(np.shape(v)) for k, v in cio.flatten_tree(params).items()}
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            raise ValueError(f"{api}: {k} has shape {got.get(k)}, XCLIPDualEncoder(config) "
                             f"expects {want.get(k)}; does the config match the checkpoint?")


