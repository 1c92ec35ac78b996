"""The training core: `FineTuner`, its events and callbacks, loggers, precision, optimizer and checkpoints."""

from .events import Callback, TrainState
from .finetuner import FineTuner, TrainingArgs
from .loggers import CSVLogger, JSONLLogger, LivePlot, TensorBoardLogger

__all__ = ["CSVLogger", "Callback", "FineTuner", "JSONLLogger", "LivePlot", "TensorBoardLogger", "TrainState",
           "TrainingArgs"]
