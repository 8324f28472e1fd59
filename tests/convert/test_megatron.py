"""PLUG Megatron tensor-parallel shards -> one state dict: exact merge, layouts, errors.

The 8 rank files are produced here by an independent splitter that copies what
Megatron's ``_initialize_affine_weight`` (AliceMind ``PLUG/mpu/layers.py``) does
with each layer's ``partition_dim`` and ``stride`` -- split the master weight into
``stride * world`` chunks and give rank r the chunks ``r, r + world, ...`` -- with the
(dim, stride) of every published PLUG tensor written out by hand below. The merge
is also checked against a tensor-parallel attention forward pass computed per rank.
"""
import argparse
import os

import numpy as np
import pytest
import torch

from plug_jax.convert import io as cio
from plug_jax.convert.megatron import (MegatronMergeError, load_megatron_shards,
                                       merge_plug_checkpoint, merge_megatron_shards,
                                       split_tensor_parallel)

WORLD = 8
D, HEADS, FFN, VOCAB, MAXPOS, TYPES = 64, 8, 256, 128, 32, 3  # vocab 100 padded to 128
ENC, DEC = 2, 1
HD = D // HEADS


def plug_layout():
    """{name: (shape, partition_dim or None, stride)} of a tiny PLUG (pre-LN) state dict."""
    rep = lambda *shape: (shape, None, 1)  # noqa: E731
    t = {
        "bert.embeddings.word_embeddings.weight": ((VOCAB, D), 0, 1),
        "bert.embeddings.position_embeddings.weight": rep(MAXPOS, D),
        "bert.embeddings.token_type_embeddings.weight": rep(TYPES, D),
        "bert.embeddings.LayerNorm.weight": rep(D), "bert.embeddings.LayerNorm.bias": rep(D),
    }
    for i in range(ENC):
        p = f"bert.encoder.layer.{i}."
        t.update({
            p + "attention.LayerNorm.weight": rep(D), p + "attention.LayerNorm.bias": rep(D),
            p + "attention.self.query_key_value.weight": ((3 * D, D), 0, 3),
            p + "attention.self.query_key_value.bias": ((3 * D,), 0, 3),
            p + "attention.output.dense.weight": ((D, D), 1, 1),
            p + "attention.output.dense.bias": rep(D),
            p + "LayerNorm.weight": rep(D), p + "LayerNorm.bias": rep(D),
            p + "intermediate.dense.weight": ((FFN, D), 0, 1),
            p + "intermediate.dense.bias": ((FFN,), 0, 1),
            p + "output.dense.weight": ((D, FFN), 1, 1),
            p + "output.dense.bias": rep(D),
        })
    t.update({
        "bert.encoder.LayerNorm.weight": rep(D), "bert.encoder.LayerNorm.bias": rep(D),
        "bert.pooler.dense.weight": rep(D, D), "bert.pooler.dense.bias": rep(D),
        "cls.predictions.bias": ((VOCAB,), 0, 1),
        "cls.predictions.transform.dense.weight": rep(D, D),
        "cls.predictions.transform.dense.bias": rep(D),
        "cls.predictions.transform.LayerNorm.weight": rep(D),
        "cls.predictions.transform.LayerNorm.bias": rep(D),
        "cls.seq_relationship.weight": rep(3, D), "cls.seq_relationship.bias": rep(3),
    })
    for j in range(DEC):
        p = f"decoder.decoder.layer.{j}."
        t.update({
            p + "attention.query_key_value.weight": ((3 * D, D), 0, 3),
            p + "attention.query_key_value.bias": ((3 * D,), 0, 3),
            p + "attention.dense.weight": ((D, D), 1, 1), p + "attention.dense.bias": rep(D),
            p + "cross_attention.query.weight": ((D, D), 0, 1),
            p + "cross_attention.query.bias": ((D,), 0, 1),
            p + "cross_attention.key_value.weight": ((2 * D, D), 0, 2),
            p + "cross_attention.key_value.bias": ((2 * D,), 0, 2),
            p + "cross_attention.dense.weight": ((D, D), 1, 1),
            p + "cross_attention.dense.bias": rep(D),
            p + "input_layernorm.weight": rep(D), p + "input_layernorm.bias": rep(D),
            p + "post_attention_layernorm.weight": rep(D),
            p + "post_attention_layernorm.bias": rep(D),
            p + "post_cross_attention_layernorm.weight": rep(D),
            p + "post_cross_attention_layernorm.bias": rep(D),
            p + "intermediate.weight": ((FFN, D), 0, 1), p + "intermediate.bias": ((FFN,), 0, 1),
            p + "output.weight": ((D, FFN), 1, 1), p + "output.bias": rep(D),
        })
    t["decoder.decoder.final_layernorm.weight"] = rep(D)
    t["decoder.decoder.final_layernorm.bias"] = rep(D)
    return t


LAYOUT = plug_layout()


def megatron_split(full, world=WORLD):
    """Independent splitter: Megatron's _initialize_affine_weight chunk assignment."""
    ranks = [{} for _ in range(world)]
    for name, (_, dim, stride) in LAYOUT.items():
        master = torch.from_numpy(full[name])
        for r in range(world):
            if dim is None:
                ranks[r][name] = master.clone()
                continue
            per_partition = master.shape[dim] // world
            chunks = torch.split(master, per_partition // stride, dim=dim)
            ranks[r][name] = torch.cat(chunks[r::world], dim=dim).clone()
    return ranks


@pytest.fixture(scope="module")
def full():
    """Unsplit state dict; values are float16-exact (the published files are fp16)."""
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(shape).astype(np.float16).astype(np.float32)
            for k, (shape, _, _) in LAYOUT.items()}


def save_ranks(directory, ranks, wrap=lambda sd: {"module": sd}, dtype=torch.float16):
    os.makedirs(directory, exist_ok=True)
    for r, sd in enumerate(ranks):
        torch.save(wrap({k: v.to(dtype) for k, v in sd.items()}),
                   os.path.join(directory, f"mp_rank_{r:02d}_model_states.pt"))


@pytest.fixture()
def model_dir(tmp_path, full):
    """ModelScope layout: <model_dir>/model/mp_rank_0X_model_states.pt, {'module': sd}."""
    save_ranks(tmp_path / "model", megatron_split(full))
    return tmp_path


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.float32, k
        assert np.array_equal(got[k], want[k]), k


def test_merge_plug_checkpoint_is_exact(model_dir, full):
    shards = megatron_split(full)
    assert shards[3]["bert.embeddings.word_embeddings.weight"].shape == (VOCAB // WORLD, D)
    # the fused QKV really is per-rank interleaved: rank 1 starts with q rows 8..15
    qkv = "bert.encoder.layer.0.attention.self.query_key_value.weight"
    assert np.array_equal(shards[1][qkv][:D // WORLD].numpy(), full[qkv][D // WORLD:2 * D // WORLD])
    merged = merge_plug_checkpoint(model_dir)
    assert_same(merged, full)
    assert merged["bert.embeddings.word_embeddings.weight"].shape == (VOCAB, D)
    # without de-interleaving, a plain concatenation would give a different matrix
    assert not np.array_equal(np.concatenate([s[qkv].numpy() for s in shards]), full[qkv])


@pytest.mark.parametrize("wrap", [
    lambda sd: {"module": sd, "mp_world_size": WORLD, "global_steps": 28000,
                "dp_world_size": 1, "csr_tensor_module_names": []},  # DeepSpeed extras
    lambda sd: {"model": sd},
    lambda sd: {"module": {"module." + k: v for k, v in sd.items()}},
    lambda sd: sd,
], ids=["deepspeed", "model", "module_prefix", "bare"])
def test_alicemind_tag_dir_and_wrappers(tmp_path, full, wrap):
    # AliceMind: plug_model/28000/mp_rank_0X_model_states.pt
    save_ranks(tmp_path / "plug_model" / "28000", megatron_split(full), wrap=wrap,
               dtype=torch.float32)
    assert_same(merge_plug_checkpoint(tmp_path / "plug_model"), full)


def test_file_list_in_any_order_and_megatron_lm_names(tmp_path, full):
    save_ranks(tmp_path, megatron_split(full))
    files = sorted((str(tmp_path / f) for f in os.listdir(tmp_path)), reverse=True)
    assert_same(merge_plug_checkpoint(files), full)
    # Megatron-LM naming: mp_rank_XX/model_optim_rng.pt with {'model': ...}
    for r, sd in enumerate(megatron_split(full)):
        os.makedirs(tmp_path / "lm" / f"mp_rank_{r:02d}")
        torch.save({"model": sd}, tmp_path / "lm" / f"mp_rank_{r:02d}" / "model_optim_rng.pt")
    assert_same(merge_plug_checkpoint(tmp_path / "lm"), full)


def _attention(x, qkv_w, qkv_b, dense_w, heads):
    """BertParallelSelfAttention on one rank (its local heads) + its row-parallel dense slice."""
    mixed = x @ qkv_w.T + qkv_b  # [s, 3 * hp]; then split_tensor_along_last_dim(mixed, 3)
    q, k, v = (m.reshape(len(x), heads, HD).transpose(1, 0, 2)
               for m in np.split(mixed, 3, axis=-1))
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(HD)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(1, 0, 2).reshape(len(x), heads * HD)
    return ctx @ dense_w.T


def test_merged_attention_matches_tensor_parallel_forward(full):
    """Merged weights, run on one device, reproduce the 8-rank computation."""
    shards = [{k: v.numpy().astype(np.float64) for k, v in s.items()}
              for s in megatron_split(full)]
    merged = merge_megatron_shards([{k: v.numpy() for k, v in s.items()}
                                    for s in megatron_split(full)])
    merged = {k: v.astype(np.float64) for k, v in merged.items()}
    p = "bert.encoder.layer.1.attention."
    x = np.random.default_rng(1).standard_normal((5, D))
    # 8 ranks: each uses its own shards; the row-parallel outputs are all-reduced (summed)
    want = sum(_attention(x, s[p + "self.query_key_value.weight"],
                          s[p + "self.query_key_value.bias"], s[p + "output.dense.weight"],
                          HEADS // WORLD) for s in shards) + shards[0][p + "output.dense.bias"]
    got = _attention(x, merged[p + "self.query_key_value.weight"],
                     merged[p + "self.query_key_value.bias"], merged[p + "output.dense.weight"],
                     HEADS) + merged[p + "output.dense.bias"]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)

    # cross-attention key_value (stride 2): merged [K; V] blocks hold the per-rank [k_r; v_r]
    kv = "decoder.decoder.layer.0.cross_attention.key_value.weight"
    big_k, big_v = np.split(merged[kv], 2)
    for r, s in enumerate(shards):
        k_r, v_r = np.split(s[kv], 2)
        rows = slice(r * D // WORLD, (r + 1) * D // WORLD)
        assert np.array_equal(big_k[rows], k_r) and np.array_equal(big_v[rows], v_r)


def test_split_tensor_parallel_matches_megatron(full):
    ours = split_tensor_parallel(full, WORLD)
    theirs = megatron_split(full)
    for r in range(WORLD):
        assert sorted(ours[r]) == sorted(theirs[r])
        for k in theirs[r]:
            assert np.array_equal(ours[r][k], theirs[r][k].numpy()), (r, k)
    assert_same(merge_megatron_shards(ours), full)


# ------------------------------------------------------------------------------ errors
def test_missing_rank(model_dir):
    os.remove(model_dir / "model" / "mp_rank_03_model_states.pt")
    with pytest.raises(cio.WeightsLoadError, match=r"^mp_rank_03 missing in .*model: a "
                                                     r"8-way tensor-parallel checkpoint"):
        merge_plug_checkpoint(model_dir)
    os.remove(model_dir / "model" / "mp_rank_07_model_states.pt")  # last rank: num_ranks=8
    with pytest.raises(cio.WeightsLoadError, match=r"^mp_rank_03, mp_rank_07 missing"):
        merge_plug_checkpoint(model_dir)


def test_missing_last_rank_caught_by_mp_world_size(tmp_path, full):
    save_ranks(tmp_path, megatron_split(full)[:7],
               wrap=lambda sd: {"module": sd, "mp_world_size": 8})
    with pytest.raises(cio.WeightsLoadError, match=r"records mp_world_size=8 but 7 rank files"):
        load_megatron_shards(tmp_path)


def test_unexpected_file(model_dir):
    (model_dir / "model" / "mp_rank_00_model_states.pt.bak").write_bytes(b"x")
    with pytest.raises(cio.WeightsLoadError, match=r"^unexpected file .*mp_rank_00_model_states"
                                                     r"\.pt\.bak: tensor-parallel shards must"):
        merge_plug_checkpoint(model_dir)
    os.remove(model_dir / "model" / "mp_rank_00_model_states.pt.bak")
    os.link(model_dir / "model" / "mp_rank_00_model_states.pt",
            model_dir / "model" / "mp_rank_08_model_states.pt")
    with pytest.raises(cio.WeightsLoadError, match=r"^unexpected file .*mp_rank_08.*rank 8 is "
                                                     r"beyond the 8 ranks expected"):
        merge_plug_checkpoint(model_dir)
    with pytest.raises(cio.WeightsLoadError, match=r"^unexpected file .*config\.json"):
        merge_plug_checkpoint([str(model_dir / "config.json")])


def test_replicated_tensor_differs(tmp_path, full):
    ranks = megatron_split(full)
    ranks[5]["bert.encoder.layer.1.LayerNorm.weight"][3] += 1.0
    save_ranks(tmp_path, ranks)
    with pytest.raises(MegatronMergeError, match=r"^replicated tensor 'bert\.encoder\.layer\.1\."
                                                   r"LayerNorm\.weight' differs between rank 0 "
                                                   r"and rank 5"):
        merge_plug_checkpoint(tmp_path)


def test_shape_mismatch(tmp_path, full):
    ranks = megatron_split(full)
    k = "decoder.decoder.layer.0.intermediate.weight"
    ranks[2][k] = ranks[2][k][:-1]
    save_ranks(tmp_path, ranks)
    with pytest.raises(MegatronMergeError, match=r"^column tensor 'decoder\.decoder\.layer\.0\."
                                                   r"intermediate\.weight' has shape \(31, 64\) "
                                                   r"on rank 2 but \(32, 64\) on rank 0$"):
        merge_plug_checkpoint(tmp_path)


def test_key_sets_differ(full):
    shards = [{k: v.numpy() for k, v in s.items()} for s in megatron_split(full)]
    del shards[4]["cls.seq_relationship.bias"]
    with pytest.raises(MegatronMergeError, match=r"^rank 4 lacks tensor 'cls\.seq_relationship"
                                                   r"\.bias' that rank 0 has"):
        merge_megatron_shards(shards)


def test_rules_are_data(full):
    shards = [{k: v.numpy() for k, v in s.items()} for s in megatron_split(full)]
    with pytest.raises(MegatronMergeError, match=r"^no tensor-parallel rule matches tensor"):
        merge_megatron_shards(shards, rules=[(r"word_embeddings", "vocab")])
    with pytest.raises(ValueError, match=r"unknown kind 'diagonal'"):
        merge_megatron_shards(shards, rules=[(r".", "diagonal")])
    # a split tensor wrongly called replicated is caught by the equality check
    with pytest.raises(MegatronMergeError, match=r"^replicated tensor 'bert\.embeddings\."
                                                   r"word_embeddings\.weight' differs"):
        merge_megatron_shards(shards, rules=[(r".", "replicated")])


# ------------------------------------------------------------------------------ no pickle
def _run_payload(path):  # would run on unpickling if pickle executed code
    open(path, "w").close()
    return "executed"


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_run_payload, (self.path,))


def test_refuses_pickled_objects(tmp_path, full):
    ranks = megatron_split(full)
    marker = tmp_path / "pwned"
    save_ranks(tmp_path / "ckpt", ranks,
               wrap=lambda sd: {"module": sd, "hook": Payload(str(marker))})
    with pytest.raises(cio.WeightsLoadError, match=r"^refusing to load .*mp_rank_00_model_states"
                                                     r"\.pt: it contains objects other than "
                                                     r"tensors"):
        merge_plug_checkpoint(tmp_path / "ckpt")
    assert not marker.exists()


def test_namespace_needs_explicit_allowlist(tmp_path, full):
    save_ranks(tmp_path, megatron_split(full),
               wrap=lambda sd: {"module": sd, "args": argparse.Namespace(load="x", fp16=True)})
    with pytest.raises(cio.WeightsLoadError, match=r"^refusing to load"):
        merge_plug_checkpoint(tmp_path)
    merged = merge_plug_checkpoint(tmp_path, allow_globals=[argparse.Namespace])
    assert_same(merged, full)
