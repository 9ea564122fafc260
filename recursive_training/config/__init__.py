"""The one validated configuration object of a training run."""

from __future__ import annotations

from recursive_training.config.training_config import TrainingConfig, load_config_file

__all__ = ["TrainingConfig", "load_config_file"]
