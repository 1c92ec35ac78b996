"""RowSparseAdamW: torch's AdamW results on every row, computed only on rows a gradient has reached."""

import pytest
import torch

from finetune_lib import Callback, FineTuner
from finetune_lib.testing import tiny_model, tiny_tokenizer
from finetune_lib.training import finetuner as finetuner_module
from finetune_lib.training.optim import parameter_groups
from finetune_lib.training.row_adamw import RowSparseAdamW, mark_row_sparse

from .helpers import classification_records


class Tiny(torch.nn.Module):
    def __init__(self, rows=3000, width=16):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(rows, width)
        self.out = torch.nn.Linear(width, 3)

    def forward(self, ids):
        return self.out(self.emb(ids).mean(1))


def train(optimizer_cls, steps, weight_decay, state=None, start=0):
    model = Tiny()
    if state is not None:
        model.load_state_dict(state["model"])
    groups = [{"params": [model.emb.weight], "weight_decay": weight_decay, "row_sparse": True},
              {"params": [model.out.weight, model.out.bias], "weight_decay": weight_decay}]
    opt = optimizer_cls(groups, lr=1e-2, fused=True)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 400 + 40 * s, (4, 6), generator=g), torch.randint(0, 3, (4,), generator=g))
               for s in range(steps)]  # the vocabulary reached grows over the steps
    for ids, y in batches[start:]:
        torch.nn.functional.cross_entropy(model(ids), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, opt


def test_equals_torch_adamw_bit_for_bit_without_weight_decay():
    ours, opt = train(RowSparseAdamW, 30, 0.0)
    ref, ref_opt = train(torch.optim.AdamW, 30, 0.0)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    st, ref_st = opt.state[ours.emb.weight], ref_opt.state[ref.emb.weight]
    assert torch.equal(st["exp_avg"], ref_st["exp_avg"]) and torch.equal(st["exp_avg_sq"], ref_st["exp_avg_sq"])
    assert float(st["step"]) == float(ref_st["step"]) == 30
    touched = st["touched_rows"]
    assert 400 < int(touched.sum()) < 3000 - 1000  # rows beyond the reached vocabulary were skipped
    untouched = ~touched
    assert torch.equal(ours.emb.weight[untouched], Tiny().emb.weight[untouched])  # and left exactly as they were


def test_equals_torch_adamw_with_weight_decay():
    ours, _ = train(RowSparseAdamW, 30, 0.05)
    ref, _ = train(torch.optim.AdamW, 30, 0.05)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(ours.emb.weight[2999], Tiny().emb.weight[2999])  # untouched rows still decay


def test_resume_through_state_dict_continues_exactly():
    full, _ = train(RowSparseAdamW, 20, 0.0)
    half, opt = train(RowSparseAdamW, 10, 0.0)
    state = {"model": half.state_dict(), "optimizer": opt.state_dict()}
    resumed, ropt = train(RowSparseAdamW, 20, 0.0, state=state, start=10)
    assert ropt.state[resumed.emb.weight]["touched_rows"].dtype == torch.bool
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_mark_row_sparse_only_for_an_untied_trainable_input_embedding():
    bert = tiny_model("bert", "classification", vocab_size=2048, num_labels=2)
    groups = mark_row_sparse(parameter_groups(bert, 1e-3, 0.01), bert)
    marked = [g for g in groups if g.get("row_sparse")]
    assert len(marked) == 1 and marked[0]["names"] == ["bert.embeddings.word_embeddings.weight"]
    assert marked[0]["weight_decay"] == 0.01 and marked[0]["lr"] == 1e-3
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in bert.parameters() if p.requires_grad)
    gpt2 = tiny_model("gpt2", "causal_lm", vocab_size=2048)  # tied to the LM head: every row has a gradient
    assert not any(g.get("row_sparse") for g in mark_row_sparse(parameter_groups(gpt2, 1e-3, 0.0), gpt2))
    small = tiny_model("bert", "classification", vocab_size=400, num_labels=2)
    assert not any(g.get("row_sparse") for g in mark_row_sparse(parameter_groups(small, 1e-3, 0.0), small))
    bert.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    assert not any(g.get("row_sparse") for g in mark_row_sparse(parameter_groups(bert, 1e-3, 0.0), bert))


class Weights(Callback):
    def on_fit_end(self, state):
        self.optimizer = type(state.optimizer).__name__


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_finetuner_gives_the_weights_of_plain_adamw(monkeypatch, weight_decay):
    def run():
        tok = tiny_tokenizer(kind="encoder")  # ids < 400 in a 2048-row embedding: most rows never reached
        model = tiny_model("bert", "classification", vocab_size=2048, num_labels=2, hidden_dropout_prob=0.1)
        seen = Weights()
        tuner = FineTuner(model, "classification", tokenizer=tok, epochs=2, batch_size=8, learning_rate=2e-3,
                          weight_decay=weight_decay, precision="fp32", progress=False, callbacks=[seen])
        tuner.fit(classification_records(48))
        return tuner.model, seen.optimizer

    ours, name = run()
    monkeypatch.setattr(finetuner_module, "mark_row_sparse", lambda groups, model: groups)
    ref, ref_name = run()
    assert (name, ref_name) == ("RowSparseAdamW", "AdamW")
    for (n, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        if weight_decay:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
        else:
            assert torch.equal(a, b), n
