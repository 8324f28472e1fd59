"""Shared Flax Linen components used by every family."""
from plug_jax.layers.attention import (MultiHeadAttention, causal_mask, combine_masks,
                                       dot_product_attention, padding_mask, prefix_mask,
                                       segment_mask)
from plug_jax.layers.dense import DenseGeneral
from plug_jax.layers.embeddings import Embed
from plug_jax.layers.mlp import MLP, get_activation
from plug_jax.layers.norms import LayerNorm, RMSNorm
from plug_jax.layers.scan import LayerStack, stack_layers, unstack_layers
from plug_jax.layers.vision import (ClassToken, PatchEmbed, PositionEmbedding, TubeletEmbed,
                                    resize_positions)
