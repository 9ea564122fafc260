"""The stages of a training run and the pipeline that chains them."""

from __future__ import annotations

from recursive_training.stages.training_stages import TrainingPipeline, TrainingResult

__all__ = ["TrainingPipeline", "TrainingResult"]
