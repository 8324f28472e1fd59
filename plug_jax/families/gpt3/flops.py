"""Training FLOPs of the Chinese GPT-3 family (used for MFU).

Per token, training costs ``6 * N_matmul`` for the weight matmuls (2 FLOPs per
multiply-add, x3 for forward + backward), where ``N_matmul`` is every weight
that takes part in a matmul: the attention and MLP kernels of each layer plus
the output projection (``vocab x d``; tied or not). Embedding gathers, norms and
biases are not matmuls and are excluded. In an MoE model each token meets the router and
``moe_top_k`` experts of each MoE layer, so only those count (active parameters).

Attention adds ``QK^T`` and ``AV``: ``2 * 2 * S * heads * head_dim`` forward
FLOPs per token per layer for full attention. With a causal mask only half of
the score matrix is needed, so the causal term (counted once, the headline
number) is ``6 * L * S * heads * head_dim``; ``causal=False`` gives the PaLM /
Megatron convention of ``12 * L * S * heads * head_dim``.
"""
from __future__ import annotations

from plug_jax.families.gpt3.config import GPT3Config


def matmul_params(cfg: GPT3Config) -> int:
    """Weights that take part in matmuls, per token (biases and gathers excluded).

    For a mixture of experts only the weights a token actually meets count (the *active*
    parameters): in each MoE layer the router and ``moe_top_k`` experts' FFNs.
    """
    d, h, kvh, hd, f = cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.kv_dim, cfg.mlp_dim
    attn = d * h * hd + 2 * d * kvh * hd + h * hd * d
    mlp = 2 * d * f
    n_moe = cfg.num_moe_layers
    moe = d * cfg.num_experts + cfg.moe_top_k * 2 * d * cfg.moe_mlp_dim
    return (cfg.num_layers * attn + (cfg.num_layers - n_moe) * mlp + n_moe * moe
            + cfg.vocab_size * d)


def training_flops_per_token(cfg: GPT3Config, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs per token at sequence length ``seq_len``."""
    attn_factor = 6 if causal else 12
    attention = attn_factor * cfg.num_layers * seq_len * cfg.num_heads * cfg.kv_dim
    return 6.0 * matmul_params(cfg) + attention


def training_flops(cfg: GPT3Config, batch: int, seq_len: int, causal: bool = True) -> float:
    """Training FLOPs of one step over ``batch`` sequences of ``seq_len`` tokens."""
    return batch * seq_len * training_flops_per_token(cfg, seq_len, causal)
