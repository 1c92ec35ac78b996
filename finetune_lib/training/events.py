"""Kept for imports written before the plugin contract moved: see `finetune_lib.events`."""

from ..events import EVENTS, Callback, CallbackList, Event, TrainState

__all__ = ["EVENTS", "Callback", "CallbackList", "Event", "TrainState"]
