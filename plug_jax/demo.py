"""Core-library demo (``make demo``): what plug_jax can do before any training.

1. Builds a random tiny Chinese GPT-3 and shards it over the available devices with the
   ``fsdp_tp`` rule preset; checks the sharded logits against one device.
2. Converts a random ``transformers`` GPT-2 with ``plug_jax.convert.from_transformers``
   and checks logit parity and greedy-decoding parity with ``generate``.
3. Decodes from the KV cache with greedy, top-p sampling and beam search.

Run as ``python -m plug_jax.demo`` (``make demo`` sets 8 fake CPU devices).
"""
from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from plug_jax import decoding
from plug_jax.families.gpt3 import GPT3Config, GPT3LM, param_count
from plug_jax.partitioning import Partitioner, create_mesh


def _say(msg: str) -> None:
    print(msg, flush=True)


def shard_demo() -> None:
    n = len(jax.devices())
    cfg = GPT3Config(vocab_size=512, num_layers=4, num_heads=8, hidden_size=128, ffn_size=512,
                     max_position_embeddings=128, dropout_rate=0.0, attention_dropout_rate=0.0,
                     preset="demo")
    model = GPT3LM(cfg)
    model_degree = 4 if n % 4 == 0 else 1
    mesh = create_mesh(ici=(1, -1, 1, model_degree))
    part = Partitioner(mesh, "fsdp_tp")
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (n, 32)), jnp.int32)
    _say(f"[1/3] GPT-3 ({param_count(cfg):,} params) on {n} devices, mesh "
         f"{dict(mesh.shape)}, rules 'fsdp_tp'")
    params = part.init(model.init, jax.random.PRNGKey(0), ids)["params"]
    kernel = params["decoder"]["layers"]["mlp"]["wi"]["kernel"]
    _say(f"      mlp/wi/kernel {kernel.shape} sharded as {kernel.sharding.spec}, "
         f"shard {kernel.addressable_shards[0].data.shape} per device")
    fwd = part.jit(lambda p, x: model.apply({"params": p}, x))
    sharded = np.asarray(fwd(params, part.shard_batch(ids)))
    single = np.asarray(model.apply({"params": jax.device_get(params)}, ids))
    _say(f"      max |sharded - single-device| logits = {np.abs(sharded - single).max():.2e}")


def convert_demo() -> None:
    try:
        import torch
        import transformers
    except ImportError:
        _say("[2/3] skipped: install the 'convert' extra (torch, transformers) for this part")
        return
    from plug_jax.convert import from_transformers

    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()
    hf_cfg = transformers.GPT2Config(n_embd=96, n_head=6, n_layer=3, vocab_size=300,
                                     n_positions=128, initializer_range=0.2,
                                     bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    config, params = from_transformers(hf, family="gpt3")
    ids = np.random.default_rng(1).integers(0, 300, (2, 20))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(GPT3LM(config).apply({"params": params}, jnp.asarray(ids)))
    _say(f"[2/3] transformers GPT-2 (6 heads, {config.num_layers} layers) -> plug_jax: "
         f"max |logit diff| = {np.abs(ref - ours).max():.2e}")
    prompt = ids[:1, :8]
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor(prompt), attention_mask=torch.ones_like(torch.tensor(prompt)),
                             do_sample=False, max_new_tokens=16, pad_token_id=0)
    hf_new = hf_out[0, 8:].numpy()
    step, init_cache = decoding.flax_lm_adapter(GPT3LM(config))
    ours_new = np.asarray(decoding.generate(step, init_cache, params, jnp.asarray(prompt),
                                            max_new_tokens=16).tokens[0])
    _say(f"      greedy 16 tokens, transformers.generate: {hf_new.tolist()}")
    _say(f"      greedy 16 tokens, plug_jax.decoding    : {ours_new.tolist()}  "
         f"({'same' if np.array_equal(hf_new, ours_new) else 'DIFFERENT'})")


def decode_demo() -> None:
    cfg = GPT3Config.from_preset("tiny")
    model = GPT3LM(cfg)
    prompts = jnp.array([[0, 0, 5, 6, 7], [11, 12, 13, 14, 15]])
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    params = nn.unbox(model.init(jax.random.PRNGKey(3), prompts)["params"])
    step, init_cache = decoding.flax_lm_adapter(model)
    _say("[3/3] KV-cache decoding of two left-padded prompts (tiny GPT-3, random weights)")
    t = time.time()
    g = decoding.generate(step, init_cache, params, prompts, mask, max_new_tokens=12)
    _say(f"      greedy        : {np.asarray(g.tokens).tolist()}  ({time.time() - t:.1f}s incl. compile)")
    s = decoding.generate(step, init_cache, params, prompts, mask, max_new_tokens=12,
                          method="sample", temperature=0.9, top_p=0.9, rng=jax.random.PRNGKey(7))
    _say(f"      top-p sample  : {np.asarray(s.tokens).tolist()}")
    b = decoding.beam_search(step, init_cache, params, prompts, mask, max_new_tokens=12,
                             num_beams=4, length_penalty=0.95)
    _say(f"      beam search 4 : {np.asarray(b.sequences).tolist()}, scores "
         f"{np.round(np.asarray(b.scores), 3).tolist()}")


def main() -> int:
    t0 = time.time()
    shard_demo()
    convert_demo()
    decode_demo()
    _say(f"demo finished in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
