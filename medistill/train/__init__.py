"""Training: the shared custom loop and the supervised baseline."""

from medistill.train.config import TrainConfig
from medistill.train.loop import LoopSettings, NonFiniteLossError, TrainingLoop

__all__ = ["LoopSettings", "NonFiniteLossError", "TrainConfig", "TrainingLoop", "train_supervised"]


def train_supervised(config: TrainConfig):
    """Train the supervised baseline (see :mod:`medistill.train.supervised`)."""
    from medistill.train.supervised import train_supervised as _train

    return _train(config)
