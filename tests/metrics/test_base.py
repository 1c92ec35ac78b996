"""The Metric base: state registration, reset, clone, merge, sync (one process and two)."""

from __future__ import annotations

import multiprocessing as mp
import traceback

import pytest
import torch
import torch.distributed as dist

from finetune_lib.metrics import (
    BLEU,
    F1,
    Accuracy,
    ConfusionMatrix,
    EvalBatch,
    Metric,
    MetricSuite,
    NoDataError,
    Perplexity,
)


class Extremes(Metric):
    """Exercises every reduction: sum (growing), cat (tensor and list), max, min."""

    name = "extremes"
    input = "classes"

    def __init__(self) -> None:
        super().__init__()
        self.add_state("hist", torch.zeros(0, dtype=torch.int64), reduce="sum")
        self.add_state("seen", torch.zeros(0, dtype=torch.int64), reduce="cat")
        self.add_state("tags", [], reduce="cat")
        self.add_state("top", torch.tensor(-1), reduce="max")
        self.add_state("bottom", torch.tensor(10**9), reduce="min")

    def update(self, preds, target) -> None:
        preds = torch.as_tensor(preds)
        size = max(self.hist.numel(), int(preds.max()) + 1)
        self.hist = torch.nn.functional.pad(self.hist, (0, size - self.hist.numel())) + torch.bincount(
            preds, minlength=size
        )
        self.seen = torch.cat([self.seen, preds])
        self.tags.extend(str(int(p)) for p in preds)
        self.top = torch.maximum(self.top, preds.max())
        self.bottom = torch.minimum(self.bottom, preds.min())

    def compute(self) -> dict:
        return {
            "hist": self.hist.tolist(),
            "seen": self.seen.tolist(),
            "tags": self.tags,
            "top": int(self.top),
            "bottom": int(self.bottom),
        }


def test_add_state_defaults_reset_and_validation():
    m = Extremes()
    assert set(m.states) == {"_updates", "hist", "seen", "tags", "top", "bottom"}
    m.update([2, 0], [0, 0])
    assert m.compute()["hist"] == [1, 0, 1]
    m.reset()
    assert m.hist.numel() == 0 and m.tags == [] and int(m.top) == -1
    with pytest.raises(NoDataError):
        m.compute()
    with pytest.raises(ValueError, match="reduce must be one of"):
        m.add_state("x", 0, reduce="mean")
    with pytest.raises(ValueError, match="reduce='cat'"):
        m.add_state("x", [], reduce="sum")
    m.add_state("f", 0.5)
    assert m.f.dtype == torch.float64


def test_merge_every_reduction_and_growing_shapes():
    a, b, whole = Extremes(), Extremes(), Extremes()
    a.update([0, 1], [0, 0])
    b.update([4, 2, 2], [0, 0, 0])
    whole.update([0, 1], [0, 0])
    whole.update([4, 2, 2], [0, 0, 0])
    assert a.merge(b).compute() == whole.compute()
    with pytest.raises(TypeError, match="same class only"):
        Accuracy().merge(F1())


def test_clone_is_fresh_and_does_not_share_state():
    m = ConfusionMatrix()
    m.update([0, 3], [1, 3])
    c = m.clone()
    assert c.matrix.numel() == 0
    c.update([0], [0])
    assert m.compute()[1][0] == 1 and c.compute() == [[1]]


def test_sync_is_a_no_op_without_distributed():
    m = Accuracy()
    m.update([1, 1], [1, 0])
    m.sync()
    assert m.compute() == 0.5


def test_subclass_that_forgets_super_init_still_works():
    class Count(Metric):
        name = "count"

        def __init__(self) -> None:  # no super().__init__()
            self.add_state("n", 0)

        def update(self, preds, target) -> None:
            self.n += len(preds)

        def compute(self) -> float:
            return float(self.n)

    m = Count()
    with pytest.raises(NoDataError):
        m.compute()
    m.update([1, 2], [1, 2])
    assert m.compute() == 2.0
    with pytest.raises(ValueError, match="input must be one of"):
        type("Bad", (Metric,), {"input": "images"})()


# ---- two processes (gloo) ------------------------------------------------------------------------
def shard(rank: int) -> dict:
    g = torch.Generator().manual_seed(rank)
    classes = 3 if rank == 0 else 5  # the ranks see different numbers of classes
    n = 10 + 3 * rank
    return {
        "preds": torch.randint(0, classes, (n,), generator=g),
        "target": torch.randint(0, classes, (n,), generator=g),
        "logits": torch.randn(2, 4, 6, generator=g, dtype=torch.float64),
        "labels": torch.randint(0, 6, (2, 4), generator=g),
        "hyps": [f"the cat {rank}", "a dog"],
        "refs": [["the cat 1", "the cat"], "a dog ran"],
        "records": [{"lang": f"l{(i + rank) % 3}" if rank else "l0"} for i in range(n)],
    }


def fed(parts: list[dict]) -> tuple[list[Metric], list[EvalBatch]]:
    metrics = [Extremes(), F1(average="macro"), ConfusionMatrix(), Perplexity(), BLEU()]
    batches = []
    for p in parts:
        for m in metrics[:3]:
            m.update(p["preds"], p["target"])
        metrics[3].update(p["logits"], p["labels"])
        metrics[4].update(p["hyps"], p["refs"])
        batches.append(
            EvalBatch(
                "classification",
                torch.nn.functional.one_hot(p["preds"], 5).float(),
                p["target"],
                p["records"],
            )
        )
    return metrics, batches


def run_suite(batches: list[EvalBatch]) -> dict:
    suite = MetricSuite([F1(average="macro"), Accuracy()])
    return suite.run(batches, slices="lang", confidence=0.9, n_bootstrap=50)


def _worker(rank: int, init: str, queue) -> None:
    try:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
        metrics, batches = fed([shard(rank)])
        for m in metrics:
            m.sync()
        queue.put((rank, [m.compute() for m in metrics], run_suite(batches)))
        dist.destroy_process_group()
    except Exception:  # pragma: no cover - reported to the parent
        queue.put((rank, traceback.format_exc(), None))


@pytest.mark.timeout(120)
def test_sync_and_suite_over_two_processes_equal_one_process(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=_worker, args=(rank, init, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=100) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    metrics, batches = fed([shard(0), shard(1)])
    expected_values = [m.compute() for m in metrics]
    expected_suite = run_suite(batches)
    for _rank, values, results in got:
        assert not isinstance(values, str), values
        assert values[:3] == expected_values[:3]
        assert values[3] == pytest.approx(expected_values[3], rel=1e-12)
        assert values[4] == pytest.approx(expected_values[4], abs=1e-9)
        assert results.keys() == expected_suite.keys()
        assert results == pytest.approx(expected_suite, rel=1e-12)
