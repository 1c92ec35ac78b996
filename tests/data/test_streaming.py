"""Streaming records and their order: mapping and row checks as read, a deterministic order that covers
every example once per epoch, length grouping within a buffer, resumable from a saved position."""

from __future__ import annotations

import json

import pytest

from finetune_lib import DatasetBuilder
from finetune_lib.data.streaming import StreamingRecords, StreamOrder, StreamPosition
from finetune_lib.data.values import DataError


def rows(n: int) -> list[dict]:
    return [{"review": "w " * (1 + (i * 7) % 13), "y": "pos" if i % 3 else "neg", "i": i} for i in range(n)]


def encode(records, base):
    """A stand-in for Preprocessor.encode: one feature per record, its length from the text."""
    return [{"input_ids": [1] * len(r["text"].split()), "i": r["i"]} for r in records]


def length(feature):
    return len(feature["input_ids"])


def order(n=103, batch=4, buffer=20, seed=0, group=True, data=None):
    stream = StreamingRecords(data if data is not None else rows(n), text="review", label="y")
    return StreamOrder(stream, encode, length, batch, buffer_size=buffer, seed=seed, group_by_length=group)


def seen(batches):
    return [mb.features[i]["i"] for mb in batches for i in mb.ids]


def test_records_are_mapped_checked_and_counted_as_read():
    data = rows(5) + [{"review": "  ", "y": "pos", "i": 5}, {"review": "ok", "y": None, "i": 6}]
    stream = StreamingRecords(data, text="review", label="y")
    out = list(stream)
    assert [r["i"] for r in out] == [0, 1, 2, 3, 4] and set(out[0]) == {"text", "label", "i"}
    assert stream.dropped == {"empty_text": 1, "empty_label": 1}
    list(stream)  # read again (a second epoch): not counted twice
    assert stream.dropped == {"empty_text": 1, "empty_label": 1}
    with pytest.raises(DataError, match=r"row 5: empty value for text="):
        list(StreamingRecords(data, text="review", label="y", strict=True))
    with pytest.raises(DataError, match=r"column 'body' \(for text=\) not found in row 0"):
        list(StreamingRecords(data, text="body"))
    assert [r["i"] for r in stream.skip(3)] == [3, 4] and [r["i"] for r in stream.take(3)] == [0, 1, 2]


def test_a_source_that_cannot_be_read_again_is_refused():
    with pytest.raises(TypeError, match="read again"):
        StreamingRecords(iter(rows(3)))
    with pytest.raises(TypeError, match="iterable of dicts"):
        StreamingRecords("data.jsonl")
    gen = StreamingRecords(lambda: iter(rows(4)), text="review")  # a function returning a fresh generator: fine
    assert [r["i"] for r in gen] == [0, 1, 2, 3] == [r["i"] for r in gen]


@pytest.mark.parametrize("group", [True, False])
def test_every_example_once_per_epoch_in_an_order_fixed_by_seed_and_epoch(group):
    o = order(group=group)
    assert o.buffer_size == 20
    for epoch in (0, 1):
        got = seen(o.micro_batches(epoch, 0))
        assert sorted(got) == list(range(103))
        assert got == seen(order(group=group).micro_batches(epoch, 0))  # the same in a fresh run
    assert seen(o.micro_batches(0, 0)) != seen(o.micro_batches(1, 0))  # each epoch its own order
    assert seen(o.micro_batches(0, 0)) != seen(order(seed=1, group=group).micro_batches(0, 0))


def test_buffers_hold_their_own_source_rows_and_group_lengths_within():
    o = order(n=100, buffer=18, batch=4)  # rounded up to 20 (a multiple of the micro-batch)
    assert o.buffer_size == 20
    for mb in o.micro_batches(0, 0):
        members = [mb.features[i]["i"] for i in mb.ids]
        assert {i // 20 for i in members} == {mb.position.chunk}  # a batch never mixes buffers
        assert mb.ids == [mb.position.chunk * 20 + (i % 20) for i in members]  # ids: source positions
    # length grouping: batches hold similar lengths, so less padding than plain shuffling
    padding = {g: sum(len(mb.ids) * max(map(length, mb.features.values())) - sum(map(length, mb.features.values()))
                      for mb in order(n=400, buffer=200, batch=4, group=g).micro_batches(0, 0)) for g in (True, False)}
    assert padding[True] < padding[False] / 2


def test_resume_from_a_saved_position_gives_the_rest_of_the_epoch():
    o = order(n=103, buffer=20, batch=4)
    full = list(o.micro_batches(1, 0))
    for start in (0, 3, 5, 11, len(full) - 1, len(full)):
        reference = seen(full[start:])
        assert seen(o.micro_batches(1, start)) == reference  # from the epoch's first buffer
        if start:
            at = full[start - 1].position  # the position saved after micro-batch start - 1
            assert seen(o.micro_batches(1, start, at)) == reference, start
    assert [mb.position.chunk for mb in full][-1] == 5  # 103 rows: 5 full buffers and 3 rows


def test_resume_reads_only_from_the_saved_buffer():
    reads = []

    def source():
        for r in rows(100):
            reads.append(r["i"])
            yield r

    o = StreamOrder(StreamingRecords(source, text="review"), encode, length, 4, buffer_size=20)
    list(o.micro_batches(0, 12, StreamPosition(0, 2, 10)))
    assert reads[0] == 0 and len(reads) == 100  # a generator source is read through (skip is not free)...
    assert len(list(o.micro_batches(0, 12, StreamPosition(0, 2, 10)))) == 25 - 12  # ...but only from buffer 2 on


def test_dropped_rows_leave_buffers_aligned_to_source_rows():
    data = rows(60)
    for i in (3, 4, 25):
        data[i] = {**data[i], "review": ""}
    o = order(data=data, buffer=20, batch=4)
    got = list(o.micro_batches(0, 0))
    assert sorted(seen(got)) == [i for i in range(60) if i not in (3, 4, 25)]
    for start in range(1, len(got)):
        assert seen(o.micro_batches(0, start, got[start - 1].position)) == seen(got[start:])


def test_streaming_builder_from_jsonl(tmp_path):
    datasets = pytest.importorskip("datasets")  # noqa: F841
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(30)))
    builder = DatasetBuilder.from_hf(path, text="review", label="y", streaming=True)
    assert builder.streaming and "streaming" in repr(builder)
    assert [r["i"] for r in builder.records] == list(range(30))
    assert [r["i"] for r in builder.skip(25).records] == [25, 26, 27, 28, 29]  # IterableDataset.skip
    held_out = builder.take(5)
    assert not held_out.streaming and [r["i"] for r in held_out] == [0, 1, 2, 3, 4]
    assert held_out.split(validation=1, test=1).sizes == {"train": 3, "validation": 1, "test": 1}
    with pytest.raises(DataError, match=r"cannot be stratified.*split='validation'.*builder.take\(n\)"):
        builder.split(stratify=True)
    with pytest.raises(DataError, match="cannot be deduplicated"):
        builder.deduplicate()
    with pytest.raises(TypeError, match="length is unknown"):
        len(builder)


def test_class_label_names_come_from_the_stream(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, -1]}, features=features)
    ds.save_to_disk(tmp_path / "saved")
    stream = DatasetBuilder.from_hf(tmp_path / "saved", streaming=True).records
    assert stream.label_names == ["neg", "pos"]
    assert [r["label"] for r in stream] == ["pos", "neg"] and stream.dropped == {"empty_label": 1}
