"""From raw files to clean, leak-free, tokenized batches."""

from . import cleaning
from .builder import DatasetBuilder, Splits
from .cleaning import DEFAULT_STEPS, STEPS, compose
from .dedup import LeakageReport
from .loaders import DataError
from .preprocessor import Preprocessor
from .records import Records
from .report import DataReport

__all__ = ["DEFAULT_STEPS", "STEPS", "DataError", "DataReport", "DatasetBuilder", "LeakageReport", "Preprocessor",
           "Records", "Splits", "cleaning", "compose"]
