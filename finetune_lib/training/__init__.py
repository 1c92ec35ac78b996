"""The training core: `FineTuner`, its events and callbacks, loggers, precision, optimizer and checkpoints."""

from ..events import Callback, Event, TrainState
from .finetuner import FineTuner, TrainingArgs
from .loggers import CSVLogger, JSONLLogger, LivePlot, TensorBoardLogger
from .mlflow_logger import MLflowLogger
from .wandb_logger import WandbLogger

__all__ = ["CSVLogger", "Callback", "Event", "FineTuner", "JSONLLogger", "LivePlot", "MLflowLogger", "TensorBoardLogger",
           "TrainState", "TrainingArgs", "WandbLogger"]
