"""Canonical logical axis names (single source of truth).

Weight axes name the dimensions of parameters; activation axes (prefix ``act_``)
name the dimensions of intermediate values. Keeping the two apart lets FSDP shard
a weight's ``embed`` dimension while the activation's embedding stays unsharded.
"""

# Mesh axes, always all four (unused ones have size 1).
MESH_AXES = ("data", "fsdp", "expert", "model")
# Mesh axes the global batch is split over.
BATCH_MESH_AXES = ("data", "fsdp", "expert")

# Weight axes.
VOCAB = "vocab"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV_HEADS = "kv_heads"
KV = "kv"  # per-head feature dimension
JOINED_KV = "joined_kv"
NORM = "norm"
LAYERS = "layers"
RELPOS_BUCKETS = "relpos_buckets"
EXPERT = "expert"
EXPERT_EMBED = "expert_embed"
EXPERT_MLP = "expert_mlp"
PATCH = "patch"
CHANNELS = "channels"
FRAMES = "frames"

WEIGHT_AXES = (
    VOCAB, EMBED, MLP, HEADS, KV_HEADS, KV, JOINED_KV, NORM, LAYERS,
    RELPOS_BUCKETS, EXPERT, EXPERT_EMBED, EXPERT_MLP, PATCH, CHANNELS, FRAMES,
)

# Activation axes.
ACT_BATCH = "act_batch"
ACT_LENGTH = "act_length"
ACT_KV_LENGTH = "act_kv_length"
ACT_EMBED = "act_embed"
ACT_MLP = "act_mlp"
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_KV = "act_kv"
ACT_VOCAB = "act_vocab"
ACT_EXPERT = "act_expert"
ACT_EXPERT_GROUP = "act_expert_group"
ACT_CAPACITY = "act_capacity"
ACT_IMAGE_TOKENS = "act_image_tokens"
ACT_FRAMES = "act_frames"

ACTIVATION_AXES = (
    ACT_BATCH, ACT_LENGTH, ACT_KV_LENGTH, ACT_EMBED, ACT_MLP, ACT_HEADS,
    ACT_KV_HEADS, ACT_KV, ACT_VOCAB, ACT_EXPERT, ACT_EXPERT_GROUP, ACT_CAPACITY,
    ACT_IMAGE_TOKENS, ACT_FRAMES,
)

ALL_AXES = WEIGHT_AXES + ACTIVATION_AXES
