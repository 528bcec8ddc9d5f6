"""Training: contrastive pairs -> frozen preference direction -> losses -> trainer -> sign calibration."""

from innerpissa.train.config import DataConfig, DirectionConfig, TrainConfig, preset
from innerpissa.train.losses import LossConfig
from innerpissa.train.trainer import TrainingDiverged, TrainResult, train

__all__ = ["DataConfig", "DirectionConfig", "LossConfig", "TrainConfig", "TrainResult", "TrainingDiverged",
           "preset", "train"]
