"""Every gin file parses; every tiny experiment builds its model; presets match the table."""
import glob
import os

import gin
import jax
import pytest

from plug_jax import gin_utils
from plug_jax.families.gpt3 import GPT3Config

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")
ALL = sorted(os.path.relpath(p, ROOT) for p in glob.glob(f"{ROOT}/**/*.gin", recursive=True))
EXPERIMENTS = [p for p in ALL if p.startswith("experiments/") and "/shop_" in p]  # tiny
PUBLISHED_SIZE = [p for p in ALL if p.startswith("experiments/") and "/pretrain_" in p]
FILL = ["MODEL_DIR='/tmp/unused'", "TRAIN_STEPS=1", "MIXTURE_OR_TASK_NAME='gpt3_shoplm_zh_v1'",
        "TASK_FEATURE_LENGTHS={'targets': 32}", "PROMPTS=['x']", "INIT_CHECKPOINT='/tmp/x'"]


def test_layout_is_complete():
    want = {f"models/gpt3/{s}.gin" for s in ("tiny", "base", "large", "1.3B", "2.7B", "13B",
                                               "30B", "175B")}
    want |= {f"runs/{r}.gin" for r in ("pretrain", "finetune", "eval", "infer")}
    want |= {f"partitioning/{p}.gin" for p in ("dp", "fsdp", "tp", "fsdp_tp")}
    want |= {f"hardware/{h}.gin" for h in ("cpu", "cpu8_fake", "gpu_8xh100", "tpu_v4_8")}
    want.add("experiments/gpt3/shop_tiny.gin")
    assert want <= set(ALL)


@pytest.mark.parametrize("path", ALL)
def test_every_gin_file_parses(path):
    files = [path]
    if path.startswith(("models/", "partitioning/", "hardware/")):
        files = ["runs/pretrain.gin", path]  # fragments are parsed as they are used
    if path.startswith("runs/") or path.startswith("partitioning/") or path.startswith("hardware/"):
        files = files + ["models/gpt3/tiny.gin"]
    gin_utils.parse_gin(files, FILL, [ROOT])
    assert gin.config_str()


@pytest.mark.parametrize("preset", ["tiny", "base", "large", "1.3B", "2.7B", "13B", "30B", "175B",
                                    "tiny-moe", "0.35B-MoE-64", "1.3B-MoE-32"])
def test_model_gin_equals_preset(preset):
    gin_utils.parse_gin([f"models/gpt3/{preset}.gin"], [], [ROOT])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert model.config == GPT3Config.from_preset(preset)
    assert model.family == "gpt3"


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_tiny_experiments_build_their_model(path):
    """Every experiment builds its model on the batch its converter makes, at tiny size."""
    import numpy as np
    from flax import linen as nn
    from plug_jax.trainer import loop
    gin_utils.parse_gin([path], ["MODEL_DIR='/tmp/unused'"], [ROOT])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    data = loop.DatasetConfig("unused", gin.query_parameter("%TASK_FEATURE_LENGTHS"),
                              batch_size=2, converter=gin.query_parameter("%FEATURE_CONVERTER"))
    batch = {k: jax.ShapeDtypeStruct(v.shape, "int32")
             for k, v in loop._dummy_batch(data).items()}
    shapes = nn.unbox(jax.eval_shape(model.init_params, jax.random.PRNGKey(0), batch))
    assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes)) < 5_000_000


@pytest.mark.parametrize("path, preset, devices", [
    ("experiments/structbert/pretrain_large_zh.gin", "large-zh", 8),
    ("experiments/plug/pretrain_27B.gin", "27B", 64),
    ("experiments/plug/pretrain_20B_moe.gin", "20B-MoE", 64)])
def test_published_size_experiments(path, preset, devices):
    """The published-size experiments use the published preset and a mesh for their pod:
    8 GPUs per host inside ('model' / 'expert' / 'data'), the rest across hosts."""
    import math
    from plug_jax.trainer import loop
    assert path in PUBLISHED_SIZE
    gin_utils.parse_gin([path], ["MODEL_DIR='/tmp/unused'"], [ROOT])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    assert model.config.preset == preset
    mesh = gin.query_parameter("%MESH").scoped_configurable_fn()
    assert isinstance(mesh, loop.MeshConfig)
    assert math.prod(d for d in mesh.ici if d != -1) == 8 or list(mesh.ici).count(-1) == 1
    hosts = devices // 8
    assert (-1 in mesh.dcn) == (hosts > 1)  # the host split is on the DCN degrees
    assert gin.query_parameter("%FEATURE_CONVERTER") in ("encoder", "encdec_mlm")
