"""Task wrappers in the t5x sense: a family network plus its loss, metrics and decoding.

A model object is what the trainer and ``plug-infer`` talk to. It is a frozen
dataclass (hashable, so it can be a static argument of jitted functions)::

    model.init_params(rng, batch)                      -> boxed params (use the partitioner)
    model.loss_sums(params, batch, rng, deterministic) -> dict of float32 sums
    model.flops_per_token(seq_len)                     -> training FLOPs per token
    model.decode_fns()                                 -> (step_fn, init_cache_fn) for decoding
    model.encode(params, encoder_features)             -> encoded (encoder-decoder models)
    model.family, model.config, model.metadata()

Batches use seqio's decoder feature names: ``decoder_input_tokens``,
``decoder_target_tokens``, ``decoder_loss_weights`` and, for packed batches,
``decoder_segment_ids`` and ``decoder_positions``.

The wrappers live in one module each: ``decoder_lm`` (:class:`DecoderOnlyLM`), ``encdec_lm``
(:class:`EncoderDecoderLM`), ``encoder`` (:class:`EncoderModel`), ``dual_encoder``
(:class:`DualEncoder`: contrastive, a whole-batch objective), ``image_text_lm``
(:class:`ImageTextLM`: generation from an encoded image), ``image_text_pretrain``
(:class:`ImageTextPretrain`: ITC + ITM + MLM + prefix LM, retrieval), ``grounding``
(:class:`GroundingLM`: a phrase -> a box as location tokens), ``image_tokenizer``
(:class:`ImageTokenizer`: a VQGAN trained to reconstruct pictures), ``text_to_image``
(:class:`TextToImageLM`: a title -> image codes, sampled with guidance); ``base`` has what they share. Gin files name them as ``models.DecoderOnlyLM`` etc. after
``import plug_jax.models as models``.
"""
from plug_jax.models.base import (SOWN_COLLECTIONS, add_moe_sums, collect_sown, count_params,
                                  encoder_families, family_spec, model_metadata, token_ce)
from plug_jax.models.decoder_lm import DecoderOnlyLM, gpt3
from plug_jax.models.dual_encoder import DualEncoder
from plug_jax.models.encdec_lm import EncoderDecoderLM
from plug_jax.models.encoder import ENCODER_OBJECTIVES, EncoderModel
from plug_jax.models.grounding import GroundingLM
from plug_jax.models.image_text_lm import ImageTextLM
from plug_jax.models.image_text_pretrain import ImageTextPretrain
from plug_jax.models.image_tokenizer import ImageTokenizer
from plug_jax.models.text_to_image import TextToImageLM

__all__ = ["DecoderOnlyLM", "DualEncoder", "ENCODER_OBJECTIVES", "EncoderDecoderLM", "EncoderModel",
           "GroundingLM", "ImageTextLM", "ImageTextPretrain", "ImageTokenizer",
           "SOWN_COLLECTIONS", "TextToImageLM", "add_moe_sums", "collect_sown", "count_params",
           "encoder_families", "family_spec", "gpt3", "model_metadata", "token_ce"]
