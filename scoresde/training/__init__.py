"""Training: `train(config, out, data=, loss=)`, its config, checkpoints and trained models.

    config.py      TrainConfig (saved as JSON in every checkpoint)
    loop.py        train(): the loop (warm-up, clipping, EMA, resume, DistributedDataParallel, bf16 autocast)
    checkpoint.py  atomic, exactly resumable checkpoints; Model and load_model (a trained network as a ScoreFn)

Losses are objects (scoresde.losses): train() takes one, or builds DSM / cross-entropy from the config.
"""

from .checkpoint import (Model, RunLock, RunLockedError, latest_checkpoint, load_checkpoint, load_model, resume_config,
                         save_checkpoint)
from .config import IMAGE_DEFAULTS, TrainConfig, config_from_options
from .loop import NonFiniteLossError, TrainingInterrupted, TrainResult, train

__all__ = [
    "TrainConfig",
    "config_from_options",
    "IMAGE_DEFAULTS",
    "TrainResult",
    "train",
    "Model",
    "load_model",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "RunLock",
    "RunLockedError",
    "resume_config",
]
