"""The training data's order, for `FineTuner.fit`: in-memory features or a stream, one interface.

`fit` asks `windows(state)` for the optimizer steps of the current epoch from `state.batch_in_epoch` on,
each a `(window, features)` pair: the micro-batches' example ids and something `gather` reads them from.
In memory the order is `LengthGroupedBatches.epoch(epoch)` over all features (as it always was); for a
stream it is `finetune_lib.data.streaming.StreamOrder`, read, encoded and grouped a buffer at a time,
lazily, with the buffer holding the next micro-batch kept in `state.extra["stream_position"]` (saved in
checkpoints, so a resumed run reads from that buffer on).

Example:
    >>> data = training_order(pre, records, None, micro=8, args=args, model=model, task="classification")  # doctest: +SKIP
    >>> for window, features in data.windows(state): ...                                                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Any

from ..data.collate import LengthGroupedBatches, feature_lengths
from ..data.streaming import StreamingRecords, StreamOrder, StreamPosition, is_stream
from ..events import TrainState
from .loading import as_records, check_token_ids

__all__ = ["InMemoryOrder", "StreamingOrder", "stream_for_training", "training_order", "training_records"]

Window = tuple[list[list[int]], Any]


def stream_for_training(train: Any, max_steps: int | None) -> StreamingRecords | None:
    """The training data as a `StreamingRecords` when it is a stream (else None); a stream needs `max_steps`.

    Raises:
        ValueError: a stream without `max_steps` (its length is unknown, so epochs cannot set the length of
            the run).
    """
    if not is_stream(train):
        return None
    if not max_steps:
        raise ValueError("Training on a stream needs max_steps: its length is unknown until it has been read, so "
                         "epochs= cannot set the run's length. Pass FineTuner(..., max_steps=N); the stream "
                         "restarts (in a new order) whenever it runs out before that.")
    if isinstance(train, StreamingRecords):
        return train
    records = getattr(train, "records", None)
    return records if isinstance(records, StreamingRecords) else StreamingRecords(train, name="train")


def training_records(train: Any, max_steps: int | None, pre: Any, task: Any) -> tuple[Any, StreamingRecords | None]:
    """`(records, stream)`: the checked training records and None, or for a stream its first buffer
    (checked; the labels and class weights come from it unless `Preprocessor(labels=...)` or a
    ``ClassLabel`` column names them) and the stream.

    Raises:
        ValueError: a stream without `max_steps`, or with no record in its first buffer.
    """
    stream = stream_for_training(train, max_steps)
    if stream is None:
        return as_records(train, "train", task.name), None
    if stream.label_names and pre.label_names is None and task.has_classes:
        pre.label_names = list(stream.label_names)  # a ClassLabel column's names, in its id order
    sample = stream.take(stream.buffer_size)
    if not sample:
        raise ValueError(f"The training stream {stream.name!r} has no records in its first {stream.buffer_size} rows "
                         f"(dropped: {stream.dropped}); check the column mapping (text=, label=, ...).")
    return as_records(sample, "train (the stream's first rows)", task.name), stream


class InMemoryOrder:
    """All features encoded up front, in `LengthGroupedBatches` order (seed, epoch)."""

    def __init__(self, features: Any, batches: LengthGroupedBatches, accumulation: int):
        self.features, self.batches, self.accumulation = features, batches, accumulation
        self.epoch_length: int | None = len(batches)  # micro-batches per epoch
        self.size = len(features)

    def windows(self, state: TrainState) -> Iterator[Window] | None:
        """The steps of `state.epoch` from `state.batch_in_epoch` on; None when the epoch is done."""
        order = self.batches.epoch(state.epoch)
        if state.batch_in_epoch >= len(order):  # resumed right at an epoch boundary
            return None
        accum = self.accumulation
        windows = [order[i: i + accum] for i in range(0, len(order), accum)]
        return ((window, self.features) for window in windows[state.batch_in_epoch // accum:])

    def epoch_done(self, state: TrainState) -> bool:
        return state.batch_in_epoch >= len(self.batches)


class StreamingOrder:
    """A stream's steps, read lazily; the epoch's length is learnt when the stream runs out."""

    def __init__(self, order: StreamOrder, accumulation: int):
        self.order, self.accumulation = order, accumulation
        self.epoch_length: int | None = None
        self.size = None
        self._ends: dict[int, int] = {}  # epoch -> its micro-batches, once read to the end

    def windows(self, state: TrainState) -> Iterator[Window] | None:
        """The steps of `state.epoch` from `state.batch_in_epoch` on; None when the epoch is done."""
        saved = state.extra.get("stream_position")
        position = None
        if saved:
            if saved.get("buffer_size", self.order.buffer_size) != self.order.buffer_size:
                raise ValueError(f"the checkpoint was written with a stream buffer_size of {saved['buffer_size']} and "
                                 f"this run reads buffers of {self.order.buffer_size} rows: resume with "
                                 f"StreamingRecords(..., buffer_size={saved['buffer_size']}) (the data position "
                                 "counts in buffers)")
            position = StreamPosition(int(saved["epoch"]), int(saved["chunk"]), int(saved["first_batch"]))
        steps = self._steps(state, position)
        first = next(steps, None)
        return None if first is None else chain([first], steps)

    def _steps(self, state: TrainState, position: StreamPosition | None) -> Iterator[Window]:
        epoch, start = state.epoch, state.batch_in_epoch
        batches = self.order.micro_batches(epoch, start, position)
        pending = next(batches, None)
        done = start
        while pending is not None:
            group = []
            while pending is not None and len(group) < self.accumulation:
                group.append(pending)
                pending = next(batches, None)  # one micro-batch ahead: the last step knows it ends the epoch
            done += len(group)
            if pending is None:
                self._ends[epoch] = done
                self.epoch_length = state.extra["batches_per_epoch"] = done
            # the position after this step: the buffer of its last micro-batch (the next one is there or after)
            state.extra["stream_position"] = {**group[-1].position.to_dict(), "buffer_size": self.order.buffer_size}
            features = {i: f for mb in group for i, f in mb.features.items()}
            yield [mb.ids for mb in group], features
        if start == done:  # nothing left after `start`: the epoch has ended
            self._ends[epoch] = done

    def epoch_done(self, state: TrainState) -> bool:
        return state.epoch in self._ends and state.batch_in_epoch >= self._ends[state.epoch]


def training_order(pre: Any, records: Any, stream: StreamingRecords | None, micro: int, args: Any, model: Any,
                   task: str) -> InMemoryOrder | StreamingOrder:
    """The order of a run: `records` encoded now (in memory), or `stream` encoded a buffer at a time.

    Args:
        pre: the run's `Preprocessor` (set up).
        records: the checked training records (for a stream: its first buffer, used for the labels).
        stream: the stream, or None.
        micro: examples per micro-batch.
        args: the run's `TrainingArgs` (seed, group_by_length, gradient_accumulation).
        model: the model (token ids are checked against its embedding table).
        task: the task's name (each buffer is checked as `as_records` checks a split).
    """
    if stream is None:
        features = pre.encode(records, "train")
        check_token_ids(features, model, "train")
        batches = LengthGroupedBatches(feature_lengths(pre, features), micro, seed=args.seed,
                                       group_by_length=args.group_by_length)
        return InMemoryOrder(features, batches, args.gradient_accumulation)

    def encode(buffer: list[dict[str, Any]], base: int) -> list[dict[str, Any]]:
        checked = as_records(buffer, f"train (stream rows from {base})", task)
        try:
            features = list(pre.encode(checked, "train"))
        except ValueError as error:
            if "never seen in the training data" not in str(error):
                raise
            raise ValueError(f"{error} A stream's label names come from its first {stream.buffer_size} rows unless "
                             "given: pass Preprocessor(labels=[...]) listing every class.") from None
        check_token_ids(features, model, "train")
        return features

    order = StreamOrder(stream, encode, pre.length, micro, buffer_size=stream.buffer_size, seed=args.seed,
                        group_by_length=args.group_by_length)
    return StreamingOrder(order, args.gradient_accumulation)
