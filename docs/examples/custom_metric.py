"""A custom streaming metric: expected calibration error (ECE) of a classifier."""
# ruff: noqa: E402  (the code shown on the page imports at the start of its section)

# --8<-- [start:metric]
import torch

from finetune_lib.metrics import Metric


class CalibrationError(Metric):
    """Expected calibration error: the gap between confidence and accuracy, averaged over
    `bins` equal-width confidence bins and weighted by how many examples fall in each.

    Streaming: the state is three vectors of `bins` numbers, whatever the size of the eval set.
    """

    name = "ece"               # the result key
    input = "logits"           # MetricSuite passes update(logits [B, C], target [B])
    higher_is_better = False

    def __init__(self, bins: int = 10, name: str | None = None) -> None:
        super().__init__(name)
        self.bins = bins
        self.add_state("count", torch.zeros(bins, dtype=torch.float64))        # reduce="sum" by default
        self.add_state("confidence", torch.zeros(bins, dtype=torch.float64))
        self.add_state("correct", torch.zeros(bins, dtype=torch.float64))

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        probs = logits.detach().float().softmax(-1).cpu()
        confidence, predicted = probs.max(-1)
        index = (confidence * self.bins).long().clamp(max=self.bins - 1)
        ones = torch.ones_like(confidence, dtype=torch.float64)
        self.count.index_add_(0, index, ones)
        self.confidence.index_add_(0, index, confidence.double())
        self.correct.index_add_(0, index, (predicted == target.cpu()).double())

    def compute(self) -> float:
        filled = self.count > 0
        gap = (self.confidence[filled] - self.correct[filled]).abs()  # per bin: |sum conf - sum correct|
        return float(gap.sum() / self.count.sum())
# --8<-- [end:metric]

# --8<-- [start:check]
m = CalibrationError(bins=5)
m.update(torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 0]))   # one right, one wrong, both ~98%
m.update(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))                  # 50% sure and right
print(round(m.compute(), 4))
assert abs(m.compute() - (abs(2 * 0.982 - 1) + abs(0.5 - 1)) / 3) < 1e-3
# --8<-- [end:check]

# --8<-- [start:use]
from finetune_lib import FineTuner, MetricSuite
from finetune_lib.metrics import Accuracy
from finetune_lib.testing import sample_texts, tiny_model, tiny_tokenizer

records = [{"text": t, "label": "great" in t} for t in sample_texts(64, seed=0)]
tokenizer = tiny_tokenizer(kind="encoder")
model = tiny_model("bert", task="classification", vocab_size=len(tokenizer))
tuner = FineTuner(model, task="classification", tokenizer=tokenizer, epochs=1, batch_size=16,
                  metrics=MetricSuite([Accuracy(), CalibrationError(bins=10)]))
tuner.fit(records[:48])
results = tuner.evaluate(records[48:], confidence=None)
print(results)                                   # {'loss': ..., 'accuracy': ..., 'ece': ...}
# --8<-- [end:use]
assert 0.0 <= results["ece"] <= 1.0

# merging and distributed sync come with the base class
a, b = CalibrationError(), CalibrationError()
a.update(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
b.update(torch.tensor([[0.0, 2.0]]), torch.tensor([0]))
both = CalibrationError()
both.update(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
assert abs(a.merge(b).compute() - both.compute()) < 1e-12
