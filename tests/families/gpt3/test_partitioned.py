"""GPT-3 on 8 fake devices: every rule preset gives the single-device logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax.families.gpt3 import GPT3Config, GPT3LM
from plug_jax.partitioning.mesh import create_mesh
from plug_jax.partitioning.partitioner import Partitioner, PartitioningError

# Sizes divisible by 8 on every sharded axis; 3 layers to exercise the scan.
CFG = GPT3Config(vocab_size=256, num_layers=3, num_heads=8, hidden_size=64, ffn_size=128,
                 max_position_embeddings=32, dropout_rate=0.0, attention_dropout_rate=0.0)


@pytest.fixture(scope="module")
def reference():
    model = GPT3LM(CFG)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, CFG.vocab_size, (8, 16)), jnp.int32)
    mask = jnp.asarray(np.arange(16)[None, :] < rng.integers(8, 17, (8, 1)), jnp.int32)
    params = nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
    logits = jax.jit(lambda p, i, m: model.apply({"params": p}, i, attention_mask=m))(
        params, ids, mask)
    return model, params, ids, mask, np.asarray(logits)


MESHES = [
    ("dp", (8, 1, 1, 1)),
    ("fsdp", (1, 8, 1, 1)),
    ("tp", (1, 1, 1, 8)),
    ("fsdp_tp", (1, 8, 1, 1)),
    ("fsdp_tp", (1, 2, 1, 4)),  # mixed: fsdp 2 x model 4
    ("fsdp_tp", (2, 2, 1, 2)),
    ("tp", (2, 1, 2, 2)),  # batch over data x expert, heads over model
]


@pytest.mark.parametrize("preset,ici", MESHES, ids=[f"{p}-{'x'.join(map(str, m))}" for p, m in MESHES])
def test_preset_logits_equal_single_device(reference, preset, ici):
    model, params, ids, mask, want = reference
    part = Partitioner(create_mesh(ici=ici), preset)
    # Parameters created directly sharded from the same seed equal the single-device ones.
    sharded = part.init(model.init, jax.random.PRNGKey(0), ids)["params"]
    np.testing.assert_array_equal(sharded["decoder"]["layers"]["attn"]["query"]["kernel"],
                                  params["decoder"]["layers"]["attn"]["query"]["kernel"])
    shardings = part.param_shardings(part.abstract_init(model.init, jax.random.PRNGKey(0), ids))
    q_spec = shardings["params"]["decoder"]["layers"]["attn"]["query"]["kernel"].spec
    if preset in ("tp", "fsdp_tp") and ici[3] > 1:
        assert q_spec[2] == "model"  # heads sharded
    if preset in ("fsdp", "fsdp_tp") and ici[1] > 1:
        assert q_spec[1] == "fsdp"  # embed sharded
    if preset == "dp":
        assert all(s is None for s in q_spec)
    assert sharded["decoder"]["layers"]["attn"]["query"]["kernel"].sharding.spec == q_spec
    batch = part.shard_batch({"ids": ids, "mask": mask})
    fwd = part.jit(lambda p, b: model.apply({"params": p}, b["ids"], attention_mask=b["mask"]))
    got = fwd(sharded, batch)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=1e-5, rtol=1e-5)


def test_indivisible_mesh_gives_one_clear_line():
    cfg = GPT3Config.from_preset("tiny")  # 4 heads
    model = GPT3LM(cfg)
    part = Partitioner(create_mesh(ici=(1, 1, 1, 8)), "tp")
    with pytest.raises(PartitioningError) as err:
        part.init(model.init, jax.random.PRNGKey(0), jnp.zeros((8, 4), jnp.int32))
    msg = str(err.value)
    assert "\n" not in msg
    # Names the tensor, its shape, the logical axis and the mesh axis that does not divide it.
    assert msg.startswith("parameter params/decoder/layers/attn/")
    assert "has shape (2, " in msg and "heads'" in msg and "'model' of size 8" in msg
    print(msg)


def test_indivisible_batch_gives_one_clear_line():
    part = Partitioner(create_mesh(ici=(8, 1, 1, 1)), "dp")
    with pytest.raises(PartitioningError) as err:
        part.shard_batch({"input_ids": np.zeros((6, 16), np.int32)})
    msg = str(err.value)
    assert "\n" not in msg and "(6, 16)" in msg and "multiple of 8" in msg
