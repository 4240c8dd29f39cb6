"""DreamZero world-action model in JAX / Flax NNX."""
