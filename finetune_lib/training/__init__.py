"""The training core: `FineTuner`, its events and callbacks, precision, optimizer and checkpoints."""

from .events import Callback, TrainState
from .finetuner import FineTuner, TrainingArgs

__all__ = ["Callback", "FineTuner", "TrainState", "TrainingArgs"]
