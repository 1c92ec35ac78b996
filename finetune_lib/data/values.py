"""The data package's error type and the value tests its loaders and records share.

Example:
    >>> is_number(" 3.5e2 ")
    True
"""

from __future__ import annotations

import re

__all__ = ["DataError", "is_number"]

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class DataError(ValueError):
    """A data file or record that cannot be used as it is; the message says where and how to fix it."""


def is_number(value: str) -> bool:
    """True when the text `value` (surrounding whitespace ignored) is a decimal number."""
    return bool(_NUMBER.match(value.strip()))
