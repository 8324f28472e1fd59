"""Evaluation metrics on text (ROUGE-L and its lead-sentence baseline).

Not to be confused with :mod:`plug_jax.trainer.metrics` (the trainer's metric logging).
"""
from plug_jax.metrics.rouge import corpus_rouge_l, lcs_length, lead_baseline, rouge_l, tokenize

__all__ = ["corpus_rouge_l", "lcs_length", "lead_baseline", "rouge_l", "tokenize"]
