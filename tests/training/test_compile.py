"""compile=True: torch.compile for the training forward gives the eager run's losses and weights, keeps
state_dict keys, checkpoints, resume and save() as they are, skips the CPU patches, and fails clearly.

A tiny GPT-2 (1 block) on rows of one length, so TorchInductor compiles once per process: about 25 s
for the first fit and 20 s for the 2-process DDP test on 2 CPU cores with an empty compile cache
(TORCHINDUCTOR_CACHE_DIR), about 5 s and 15 s with a warm one; the other fits reuse the compiled code."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetune_lib import Callback, FineTuner
from finetune_lib.testing import sample_texts, tiny_model, tiny_tokenizer
from finetune_lib.training import compiling
from finetune_lib.training.compiling import CompileError, check_compile, compile_failure

LENGTH = 12  # tokens per training text: one shape, one compilation


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_optimizer_step(self, state):
        if state.step == self.step:
            state.should_stop = True


class PatchedForwards(Callback):
    """Records the modules that run an instance-level (patched) forward during training."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def on_batch_start(self, state):
        self.seen |= {type(m).__name__ for m in state.model.modules() if "forward" in vars(m)}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def fixed_length_records(tok) -> list[dict[str, str]]:
    texts = [t for t in sample_texts(600, seed=3, min_words=6, max_words=10) if len(tok(t)["input_ids"]) == LENGTH]
    assert len(texts) >= 16
    return [{"text": t} for t in texts[:16]]


@pytest.fixture(scope="module")
def records(tok):
    return fixed_length_records(tok)


def make(tok, compile: bool, output_dir=None, callbacks=(), **kw) -> FineTuner:
    model = tiny_model("gpt2", "causal_lm", vocab_size=len(tok), layers=1, resid_pdrop=0.0, embd_pdrop=0.0,
                       attn_pdrop=0.0)
    settings = dict(precision="fp32", max_steps=4, batch_size=4, learning_rate=1e-3, log_every=1, save_every=2,
                    seed=0, progress=False)
    settings.update(kw)
    return FineTuner(model, "causal_lm", tokenizer=tok, compile=compile, output_dir=output_dir,
                     callbacks=list(callbacks), **settings)


def losses(tuner: FineTuner) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in tuner.history if "train/loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tok, records):
    folder = tmp_path_factory.mktemp("compile")
    patched = {"compiled": PatchedForwards(), "eager": PatchedForwards()}
    # cpu_speedups=True: its model patches run eagerly (dropout is 0 here, so the math is the same)
    compiled = make(tok, True, folder / "full", callbacks=[patched["compiled"]], cpu_speedups=True)
    compiled.fit(records)
    eager = make(tok, False, callbacks=[patched["eager"]], cpu_speedups=True)
    eager.fit(records)
    return {"compiled": compiled, "eager": eager, "patched": patched, "folder": folder}


def test_compiled_fit_matches_eager(runs, tok):
    compiled, eager = runs["compiled"], runs["eager"]
    assert isinstance(compiled._train_model, torch._dynamo.eval_frame.OptimizedModule)  # it did compile
    assert type(compiled.model) is type(eager.model)  # the model itself is not replaced
    got, want = losses(compiled), losses(eager)
    assert [s for s, _ in got] == [s for s, _ in want] == [1, 2, 3, 4]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-4)
    a, b = compiled.model.state_dict(), eager.model.state_dict()
    assert list(a) == list(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    initial = make(tok, False).model_source.state_dict()
    assert not torch.equal(a["transformer.h.0.mlp.c_fc.weight"], initial["transformer.h.0.mlp.c_fc.weight"])


def test_cpu_patches_are_skipped_when_compiled(runs):
    assert "Dropout" in runs["patched"]["eager"].seen  # cpu_speedups' fast dropout, on a CPU without compile
    assert runs["patched"]["compiled"].seen == set(), "a CPU patch of fit must be off with compile=True"


def test_saved_model_loads_with_auto_class(runs, tmp_path):
    compiled = runs["compiled"]
    path = compiled.save(tmp_path / "final")
    loaded = AutoModelForCausalLM.from_pretrained(path)
    want = compiled.model.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, want[name]), name


def test_compiled_checkpoint_resumes(runs, tok, records):
    """A compiled run stopped at step 2 resumes from its checkpoint to the uninterrupted run's result."""
    folder = runs["folder"] / "cut"
    first = make(tok, True, folder, callbacks=[StopAt(2)])
    first.fit(records)
    assert first.state.step == 2 and (folder / "checkpoints").is_dir()
    second = make(tok, True, folder)
    second.fit(records, resume=True)
    full = runs["compiled"]
    assert [s for s, _ in losses(second)] == [1, 2, 3, 4]
    assert [v for _, v in losses(second)] == pytest.approx([v for _, v in losses(full)], rel=1e-6)
    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    # the compiled run's checkpoint also resumes without compile
    checkpoint = sorted((runs["folder"] / "full" / "checkpoints").glob("checkpoint-*"))[0]
    assert checkpoint.name.endswith("2")
    eager = make(tok, False, runs["folder"] / "resumed-eager")
    eager.fit(records, resume=checkpoint)
    assert [s for s, _ in losses(eager)] == [1, 2, 3, 4]  # the first two from the checkpoint's log
    assert [v for _, v in losses(eager)] == pytest.approx([v for _, v in losses(full)], rel=1e-4)
    torch.testing.assert_close(eager.model.state_dict(), full.model.state_dict(), rtol=1e-4, atol=1e-5)


def test_compiled_under_ddp_matches_one_process(runs, tmp_path):
    """2 CPU processes (gloo), the model compiled before DDP wraps it: the one-process eager result."""
    from tests.integration.launch import run_two_processes

    run_two_processes("tests.integration.compile_worker", str(tmp_path / "ddp"))
    result = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert result["wrapped"] == "OptimizedModule"
    assert result["losses"] == pytest.approx([v for _, v in losses(runs["eager"])], rel=1e-4)
    torch.testing.assert_close(result["weights"], runs["eager"].model.state_dict(), rtol=1e-4, atol=1e-5)


def test_compile_failure_at_the_first_step_says_how_to_fix(tok, records, monkeypatch):
    def failing_backend(graph, inputs):
        raise RuntimeError("no working C++ compiler (simulated)")

    monkeypatch.setattr(compiling, "BACKEND", failing_backend)
    tuner = make(tok, True, max_steps=1)
    with pytest.raises(CompileError, match="compile=False") as info:
        tuner.fit(records)
    assert "simulated" in str(info.value.__cause__)


def test_compile_failure_ignores_other_errors():
    assert compile_failure(ValueError("a bug in the model")) is None
    assert compile_failure(RuntimeError("out of memory")) is None


def test_missing_cpp_compiler_is_found_up_front(tok, monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-c++-compiler",))
    with pytest.raises(CompileError, match="C\\+\\+ compiler.*compile=False"):
        make(tok, True, device="cpu")


def test_refused_with_fsdp_and_prefix_cache():
    with pytest.raises(ValueError, match="distributed='ddp'"):
        check_compile(torch.device("cpu"), fsdp=True)

    class CachingFreezer:
        cache_prefix = True

    with pytest.raises(ValueError, match="cache_prefix=False"):
        check_compile(torch.device("cpu"), freezer=CachingFreezer())


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_compile_must_be_a_bool(value):
    with pytest.raises(ValueError, match="compile must be True or False"):
        FineTuner(tiny_model(), "causal_lm", compile=value)
