"""The OnePiece model in Flax (linen): config, embeddings, masks, attention, Transformer, model."""

from onepiece_jax.model.config import ModelConfig, baseline_overrides, from_config
from onepiece_jax.model.onepiece import OnePiece, param_summary

__all__ = ["ModelConfig", "OnePiece", "baseline_overrides", "from_config", "param_summary"]
