"""The plugin contract lives outside the trainer: events, TrainState's fields and methods, one way to set
each thing (weight decay, optimizer, schedule), and no import cycles in the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune_lib import Callback, FineTuner, TrainState
from finetune_lib.events import EVENTS, CallbackList, Event
from finetune_lib.regularizers import LabelSmoothing, WeightDecay

from .training.helpers import classification_records, model_and_tokenizer

PACKAGE = Path(__file__).resolve().parents[1] / "finetune_lib"


def _tuner(**kw):
    model, tok = model_and_tokenizer("bert", "classification", dropout=0.0)
    settings = {"epochs": 1, "batch_size": 8, "log_every": 1, "progress": False, "loggers": (), "precision": "fp32"}
    settings.update(kw)
    return FineTuner(model, "classification", tokenizer=tok, **settings)


@pytest.mark.parametrize("module", ["finetune_lib.regularizers", "finetune_lib.events", "finetune_lib.freezing",
                                    "finetune_lib.metrics", "finetune_lib.data", "finetune_lib.adapters"])
def test_plugin_modules_do_not_import_the_trainer(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.startswith('finetune_lib.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"{module} imported {out}"


def _imports(path: Path) -> set[str]:
    """Modules of the package that `path` imports anywhere (module level, functions, TYPE_CHECKING)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base) if node.level else (node.module or "")
            if target.startswith("finetune_lib"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("finetune_lib"))
    return found


def test_no_import_cycles_between_modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {name: {m for m in _imports(path) if m in modules and m != name and not name.startswith(m + ".")}
             for name, path in modules.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of theirs
    graph = {n: {m for m in deps if not (modules[m].name == "__init__.py" and n.startswith(m + "."))}
             for n, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_event_enum_matches_callback_methods_and_emit_accepts_names():
    assert EVENTS[0] == "setup" and EVENTS[-1] == "fit_end" and len(EVENTS) == 15
    for event in Event:
        assert hasattr(Callback, event.method)
    seen = []

    class Spy(Callback):
        def on_log(self, state):
            seen.append(state.step)

    state = TrainState(model=torch.nn.Linear(1, 1), step=3)
    CallbackList([Spy()]).emit(Event.LOG, state)
    CallbackList([Spy()]).emit("log", state)
    assert seen == [3, 3]
    with pytest.raises(ValueError):
        CallbackList([Spy()]).emit("no_such_event", state)


def test_train_state_has_no_trainer_back_door():
    assert "tuner" not in TrainState.__dataclass_fields__


def test_a_fit_hands_plugins_documented_fields_not_the_trainer():
    seen = {}

    class Look(Callback):
        def on_setup(self, state):
            seen["setup_optimizer"] = state.optimizer
            seen["args"], seen["task"], seen["tok"] = state.args, state.task, state.tokenizer

        def on_fit_end(self, state):
            seen["history"] = state.history
            seen["main"] = state.is_main_process

    tuner = _tuner(callbacks=[Look()], max_steps=2)
    tuner.fit(classification_records(16))
    assert seen["setup_optimizer"] is None  # setup comes before the optimizer exists
    assert seen["args"] is tuner.args and seen["task"] is tuner.task and seen["tok"] is tuner.tokenizer
    assert seen["history"] is tuner.history and len(seen["history"]) == 2 and seen["main"] is True


def test_weight_decay_is_set_one_way_and_reaches_the_optimizer():
    with pytest.raises(TypeError, match=r"WeightDecay\(0.01\)"):
        _tuner(weight_decay=0.01)
    with pytest.raises(ValueError, match="pass one"):
        _tuner(regularizers=[WeightDecay(0.01), WeightDecay(0.1)])
    assert _tuner().weight_decay == 0.0
    tuner = _tuner(regularizers=[WeightDecay(0.05), LabelSmoothing(0.1)], max_steps=1)
    assert tuner.weight_decay == 0.05
    tuner.fit(classification_records(16))
    decays = {g["weight_decay"] for g in tuner.optimizer.param_groups}
    assert decays == {0.0, 0.05}  # biases and norms 0, the rest the regularizer's value
    assert tuner.state.weight_decay == 0.05 and tuner.task.label_smoothing == 0.1


def test_a_plugin_sets_weight_decay_through_the_state():
    class Decay(Callback):
        def on_setup(self, state):
            state.set_weight_decay(0.2)

    tuner = _tuner(callbacks=[Decay()], max_steps=1)
    tuner.fit(classification_records(16))
    assert {g["weight_decay"] for g in tuner.optimizer.param_groups} == {0.0, 0.2}
    assert tuner.weight_decay == 0.2  # what the model card reads


def test_optimizer_factory_matches_a_hand_written_sgd_step():
    records = classification_records(8)
    tuner = _tuner(optimizer=lambda groups: torch.optim.SGD(groups, momentum=0.0), max_steps=1, batch_size=8,
                   learning_rate=0.1, max_grad_norm=None, schedule="constant")
    tuner._setup(records)
    before = {n: p.detach().clone() for n, p in tuner.model.named_parameters()}
    # the reference: one plain SGD step on the same batch
    reference = model_and_tokenizer("bert", "classification", dropout=0.0)[0]
    reference.load_state_dict(tuner.model.state_dict())
    tuner.fit(records)
    assert isinstance(tuner.optimizer, torch.optim.SGD)
    features = tuner.preprocessor.encode(records, "check")
    batch = tuner.preprocessor.collate(features)
    reference.train()
    loss = torch.nn.functional.cross_entropy(reference(input_ids=batch["input_ids"],
                                                       attention_mask=batch["attention_mask"]).logits, batch["labels"])
    loss.backward()
    changed = [n for n, p in tuner.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "SGD changed nothing"
    name = "classifier.weight"
    expected = before[name] - 0.1 * dict(reference.named_parameters())[name].grad
    assert torch.allclose(dict(tuner.model.named_parameters())[name], expected, atol=1e-5)


def test_optimizer_factory_must_return_an_optimizer_over_the_given_groups():
    with pytest.raises(TypeError, match="factory"):
        _tuner(optimizer="sgd")
    tuner = _tuner(optimizer=lambda groups: "not an optimizer", max_steps=1)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        tuner.fit(classification_records(8))
    extra = torch.nn.Parameter(torch.zeros(1))
    tuner = _tuner(optimizer=lambda groups: torch.optim.SGD([extra], lr=0.1), max_steps=1)
    with pytest.raises(ValueError, match="groups passed in"):
        tuner.fit(classification_records(8))


def test_callable_schedule_sets_each_steps_learning_rate():
    tuner = _tuner(schedule=lambda step, total: 1.0 / (step + 1), max_steps=3, learning_rate=0.3, batch_size=4)
    history = tuner.fit(classification_records(12))
    lrs = [r["train/lr"] for r in history if "train/lr" in r]
    # logged after each step: the rate the next step will use
    assert lrs == pytest.approx([0.3 / 2, 0.3 / 3, 0.3 / 4])


def test_callable_schedule_with_warmup_settings_is_refused():
    with pytest.raises(ValueError, match="warm up inside your function"):
        _tuner(schedule=lambda step, total: 1.0, warmup_steps=2)
    with pytest.raises(ValueError, match="Unknown schedule"):
        _tuner(schedule="linear_with_bumps")
