"""Custom regularizers: a loss term computed from the batch, and one computed from the weights."""
# ruff: noqa: E402  (the code shown on the page imports at the start of its section)

# --8<-- [start:confidence]
from finetune_lib import Regularizer
from finetune_lib.regularizers import micro_batch_share


class ConfidencePenalty(Regularizer):
    """Penalize over-confident predictions (Pereyra et al., 2017): `loss - beta * entropy`.

    A batch-dependent term: like the loss itself, sum it over this micro-batch and divide by the
    targets of the whole accumulated batch (`state.num_targets`), so that gradient accumulation
    gives the same gradient as one big batch.
    """

    def __init__(self, beta: float = 0.1):
        self.beta = beta

    def penalty(self, state):
        logits = state.outputs.logits.float()                 # classification: [B, C]
        logp = logits.log_softmax(-1)
        entropy = -(logp.exp() * logp).sum(-1)                # one value per example
        return -self.beta * entropy.sum() / state.num_targets
# --8<-- [end:confidence]


# --8<-- [start:l1]
class L1(Regularizer):
    """An L1 penalty on the trainable weights. A weight-only term: scale it by this micro-batch's
    share of the step, so it counts once per optimizer step under gradient accumulation."""

    def __init__(self, alpha: float = 1e-5):
        self.alpha = alpha

    def penalty(self, state):
        weights = [p for p in state.model.parameters() if p.requires_grad and p.dim() > 1]
        return self.alpha * sum(p.abs().sum() for p in weights) * micro_batch_share(state)
# --8<-- [end:l1]


# --8<-- [start:stateful]
class WarnOnPlateau(Regularizer):
    """Not a loss term: watch evaluations and stop after `patience` of them without a new best
    loss. Its counters go into checkpoints through state_dict(), so an exact resume keeps them."""

    def __init__(self, patience: int = 2):
        self.patience, self.best, self.bad = patience, float("inf"), 0

    def on_eval_end(self, state):
        loss = state.record["validation/loss"]
        self.best, self.bad = (loss, 0) if loss < self.best else (self.best, self.bad + 1)
        if self.bad >= self.patience:
            state.should_stop = True

    def state_dict(self):
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state):
        self.best, self.bad = state["best"], state["bad"]
# --8<-- [end:stateful]

# --8<-- [start:use]
from finetune_lib import FineTuner
from finetune_lib.testing import sample_texts, tiny_model, tiny_tokenizer

records = [{"text": t, "label": "great" in t} for t in sample_texts(64, seed=0)]
tokenizer = tiny_tokenizer(kind="encoder")
model = tiny_model("bert", task="classification", vocab_size=len(tokenizer))
tuner = FineTuner(model, task="classification", tokenizer=tokenizer, epochs=2, batch_size=16,
                  gradient_accumulation=2, log_every=1,
                  regularizers=[ConfidencePenalty(beta=0.1), L1(alpha=1e-6), WarnOnPlateau(patience=2)])
history = tuner.fit(records[:48], records[48:])
print(history[0])   # {'step': 1, ..., 'train/confidence_penalty': ..., 'train/l1': ...}
# --8<-- [end:use]
assert "train/confidence_penalty" in history[0] and "train/l1" in history[0]
assert ConfidencePenalty.name == "confidence_penalty" and L1.name == "l1"
assert history[0]["train/confidence_penalty"] < 0
