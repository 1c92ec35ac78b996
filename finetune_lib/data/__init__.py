"""From raw files to clean, leak-free, tokenized batches."""

from .preprocessor import Preprocessor

__all__ = ["Preprocessor"]
