"""Composite family configs (PALM, PLUG) hold the configs of their parts.

* ``encoder`` is a StructBERTConfig, ``decoder`` a TransformerDecoderConfig; the flat names
  are still constructor / ``from_preset`` / ``replace`` keywords (routed into the parts) and
  properties; the networks read the parts (a nested config whose parts differ builds what
  they say).
* ``dataclasses.asdict`` is nested and round-trips through JSON; the flat form recorded by
  checkpoints written before the nesting still reads (``from_dict``, the constructor,
  ``plug-convert``'s config.json loader) and such a training checkpoint still passes the
  identity check and restores.
* The decoder layer lives in ``plug_jax/layers/transformer_decoder.py``; PALM no longer
  imports PLUG.
"""
import ast
import dataclasses
import glob
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from plug_jax.families.palm import PalmConfig
from plug_jax.families.plug import PlugConfig
from plug_jax.families.structbert.config import StructBERTConfig
from plug_jax.layers.transformer_decoder import (TransformerDecoderConfig,
                                                 TransformerDecoderLayer)

# dataclasses.asdict of PalmConfig.from_preset('tiny') and PlugConfig.from_preset('tiny-moe')
# as written before the parts were nested (the flat form of older checkpoints' metadata).
OLD_PALM_TINY = {
    "num_experts": 0, "moe_every_n": 2, "moe_top_k": 1, "moe_router": "topk",
    "moe_impl": "capacity", "moe_train_capacity_factor": 1.0, "moe_eval_capacity_factor": 1.0,
    "moe_min_capacity": 1, "moe_group_size": None, "moe_jitter_noise": 0.0,
    "moe_ffn_size": None, "vocab_size": 1152, "num_encoder_layers": 2, "num_heads": 4,
    "hidden_size": 64, "ffn_size": 256, "max_position_embeddings": 128, "position_offset": 0,
    "type_vocab_size": 2, "layer_norm_epsilon": 1e-12, "activation": "gelu",
    "norm_placement": "post", "dropout_rate": 0.0, "attention_dropout_rate": 0.0,
    "use_pooler": True, "num_decoder_layers": 2, "num_decoder_heads": 4,
    "decoder_ffn_size": 256, "decoder_layer_norm_epsilon": 1e-06,
    "decoder_activation": "gelu_tanh", "decoder_dropout_rate": 0.0, "share_embeddings": False,
    "copy": True, "copy_gate_uses_input": True, "copy_softmax": False,
    "initializer_range": 0.02, "dtype": "float32", "param_dtype": "float32",
    "scan_layers": True, "remat_policy": "none", "preset": "tiny"}
OLD_PLUG_TINY_MOE = {
    "num_experts": 4, "moe_every_n": 2, "moe_top_k": 2, "moe_router": "prototype",
    "moe_impl": "capacity", "moe_train_capacity_factor": 1.25, "moe_eval_capacity_factor": 2.0,
    "moe_min_capacity": 4, "moe_group_size": None, "moe_jitter_noise": 0.0,
    "moe_ffn_size": None, "vocab_size": 1024, "original_vocab_size": None,
    "num_encoder_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "hidden_size": 64,
    "ffn_size": 256, "max_position_embeddings": 128, "type_vocab_size": 3,
    "layer_norm_epsilon": 1e-05, "activation": "gelu", "norm_placement": "pre",
    "embedding_norm": True, "num_sentence_classes": 3, "dropout_rate": 0.0,
    "attention_dropout_rate": 0.0, "initializer_range": 0.02, "dtype": "float32",
    "param_dtype": "float32", "scan_layers": True, "remat_policy": "none",
    "preset": "tiny-moe"}

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "..", "plug_jax")


def _leaf_shapes(tree):
    return {jax.tree_util.keystr(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]}


def test_parts_are_nested_configs_with_flat_views():
    palm = PalmConfig.from_preset("tiny")
    assert type(palm.encoder) is StructBERTConfig
    assert type(palm.decoder) is TransformerDecoderConfig
    assert (palm.vocab_size, palm.num_encoder_layers, palm.num_heads) == (
        palm.encoder.vocab_size, palm.encoder.num_layers, palm.encoder.num_heads)
    assert (palm.num_decoder_layers, palm.num_decoder_heads, palm.decoder_ffn_size,
            palm.decoder_layer_norm_epsilon, palm.decoder_dropout_rate) == (
        palm.decoder.num_layers, palm.decoder.num_heads, palm.decoder.ffn_size,
        palm.decoder.layer_norm_epsilon, palm.decoder.dropout_rate)
    assert palm.encoder_config is palm.encoder and palm.decoder_config is palm.decoder

    # A flat keyword goes to every part it names: a shared size to both.
    wide = PalmConfig.from_preset("tiny", hidden_size=128, decoder_dropout_rate=0.3)
    assert wide.encoder.hidden_size == wide.decoder.hidden_size == 128
    assert wide.decoder.dropout_rate == wide.decoder.attention_dropout_rate == 0.3
    assert wide.encoder.dropout_rate == 0.0
    assert palm.replace(scan_layers=False).decoder.scan_layers is False
    assert dataclasses.replace(palm, num_decoder_layers=3).decoder.num_layers == 3

    plug = PlugConfig.from_preset("tiny-moe")
    assert plug.encoder.num_experts == plug.decoder.num_experts == 4
    assert plug.encoder.embedding_norm is True and plug.decoder.pre_norm
    # FamilySpec.encoder_config (PLUG stage 1) is the nested StructBERT config itself.
    from plug_jax.families.plug import FAMILY
    assert FAMILY.encoder_config(plug) is plug.encoder


def test_nested_parts_drive_the_networks():
    """Parts set apart (not through flat names) build what they say: a PLUG decoder with its
    own FFN width and a PALM decoder with its own heads and epsilon."""
    from plug_jax.families.palm import abstract_params as palm_params
    from plug_jax.families.plug import abstract_params as plug_params
    base = PlugConfig.from_preset("tiny")
    cfg = base.replace(decoder=base.decoder.replace(ffn_size=96, num_layers=2))
    shapes = _leaf_shapes(plug_params(cfg))
    assert shapes["['decoder']['layers']['mlp']['wi']['kernel']"] == (2, 64, 96)
    assert shapes["['structbert']['encoder']['stack']['layers']['mlp']['wi']['kernel']"] == (
        2, 64, 256)
    palm = PalmConfig.from_preset("tiny")
    palm = palm.replace(decoder=palm.decoder.replace(num_heads=2))
    shapes = _leaf_shapes(palm_params(palm))
    assert shapes["['decoder_last']['self_attn']['query']['kernel']"] == (64, 2, 32)
    with pytest.raises(ValueError, match="disagree on hidden_size"):
        base.replace(decoder=base.decoder.replace(hidden_size=32))
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['hidden_sise'\\]"):
        PalmConfig.from_preset("tiny", hidden_sise=32)


def test_asdict_is_nested_and_round_trips_through_json():
    for cfg in (PalmConfig.from_preset("tiny", copy_softmax=True),
                PlugConfig.from_preset("tiny-moe", vocab_size=96)):
        d = json.loads(json.dumps(dataclasses.asdict(cfg)))
        assert isinstance(d["encoder"], dict) and isinstance(d["decoder"], dict)
        assert "hidden_size" not in d and d["encoder"]["hidden_size"] == 64
        assert type(cfg)(**d) == cfg and type(cfg).from_dict(d) == cfg
        assert hash(type(cfg).from_dict(d)) == hash(cfg)


def test_old_flat_metadata_reads_as_the_same_config():
    """The migration: the flat form older checkpoints recorded gives the config they were
    written with (extra keys, e.g. of a later version, are ignored by from_dict)."""
    for cls, old, preset in ((PalmConfig, OLD_PALM_TINY, "tiny"),
                             (PlugConfig, OLD_PLUG_TINY_MOE, "tiny-moe")):
        want = cls.from_preset(preset)
        assert cls.from_dict(old) == want
        assert cls(**old) == want
        assert cls.from_dict(dict(old, some_later_field=1)) == want
        nested = dataclasses.asdict(want)
        nested["encoder"]["some_later_field"] = 1
        assert cls.from_dict(nested) == want


def test_plug_convert_reads_an_old_flat_config_json(tmp_path):
    """plug-convert's loader of our checkpoints (``--to ...``) on a config.json written
    before the nesting (flat) and after (nested)."""
    from plug_jax.convert.cli import _load_ours
    from plug_jax.families import registry
    from plug_jax.trainer import checkpointing
    params = {"output_bias": np.zeros((4,), np.float32)}
    want = PalmConfig.from_preset("tiny")
    for form, config_dict in (("flat", OLD_PALM_TINY), ("nested", dataclasses.asdict(want))):
        out = tmp_path / form
        checkpointing.save_params(out, params, config_dict=config_dict,
                                  metadata={"family": "palm", "preset": "tiny"})
        args = types.SimpleNamespace(input=str(out), family="palm")
        config, loaded = _load_ours(args, registry.get("palm"))
        assert config == want, form
        np.testing.assert_array_equal(loaded["output_bias"], params["output_bias"])


def test_training_checkpoint_with_old_flat_metadata_restores(tmp_path):
    """A MODEL_DIR step whose metadata holds the flat config (written before the nesting)
    passes the identity check of the same model today and its parameters restore."""
    from plug_jax import models
    from plug_jax.trainer import checkpointing
    model = models.EncoderDecoderLM(PalmConfig.from_preset("tiny"), family="palm")
    batch = {"encoder_input_tokens": jnp.ones((1, 6), jnp.int32),
             "decoder_input_tokens": jnp.ones((1, 4), jnp.int32)}
    params = nn.unbox(model.init_params(jax.random.PRNGKey(0), batch))
    old_meta = dict(model.metadata(), config=OLD_PALM_TINY)
    assert model.metadata()["config"] == dataclasses.asdict(model.config)  # nested today
    ckpt = checkpointing.TrainCheckpointer(str(tmp_path), async_save=False)
    ckpt.save(1, {"params": params}, {}, "", old_meta, force=True)
    ckpt.wait()
    saved = ckpt.check_identity(1, model.metadata())
    assert PalmConfig.from_dict(saved["config"]) == model.config
    device = jax.local_devices()[0]
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=jax.sharding.SingleDeviceSharding(device)),
        {"params": params})
    restored = ckpt.restore(1, abstract, items=("state",))["state"]["params"]
    ckpt.close()
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_decoder_layer_is_shared_and_palm_does_not_import_plug():
    from plug_jax.families.plug.network import PlugDecoderLayer
    assert PlugDecoderLayer is TransformerDecoderLayer
    cfg = PlugConfig.from_preset("tiny", num_decoder_layers=2)
    x = jnp.ones((1, 3, 64))
    enc = jnp.ones((1, 5, 64))

    def init(config):
        return _leaf_shapes(TransformerDecoderLayer(config).init(
            jax.random.PRNGKey(0), x, enc, None, None)["params"])

    assert init(cfg) == init(cfg.decoder)  # a whole PlugConfig: its decoder part is read
    for path in glob.glob(os.path.join(PACKAGE, "families", "palm", "*.py")):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            assert not any(n.startswith("plug_jax.families.plug") for n in names), path
