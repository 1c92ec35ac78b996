"""The model card: Hub metadata through huggingface_hub (valid YAML, model-index), its sections, metrics with
intervals, and claims that match what the run really did (weight decay, early stopping, the step of the saved
weights, max_length, no absolute paths of this machine)."""

import contextlib
import io
import math

import pytest
import yaml
from huggingface_hub import ModelCard

from finetune_lib import FineTuner, Preprocessor
from finetune_lib.reporting import RunInfo, write_model_card
from finetune_lib.reporting.model_card import front_matter, hub_id, usage_snippet
from finetune_lib.reporting.sections import fmt
from finetune_lib.testing import save_tiny_pretrained

from ..training.helpers import classification_records, generation_records
from .conftest import early_stopped

SECTIONS = ("## Model description", "## Intended uses & limitations", "## Training data", "## Training procedure",
            "### Layer freezing", "### Hyperparameters", "## Validation metrics during training",
            "## Evaluation results", "## How to use", "## Framework versions")


def parse(text):
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def snippet(card):
    return card.split("## How to use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def run_snippet(code, folder, placeholder, long_input):
    """Run the card's code on the saved model with `long_input` in place of `placeholder`; its printout."""
    assert "path/to/this/folder" in code and placeholder in code
    code = code.replace("path/to/this/folder", str(folder)).replace(placeholder, repr(long_input))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "card-snippet", "exec"), {})
    return out.getvalue()


def test_card_written_by_save(tmp_path, fitted, base_folder):
    tuner, _, _ = fitted
    text = (tuner.save(tmp_path / "final") / "README.md").read_text()
    meta, body = parse(text)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert "finetune_lib" in meta["tags"] and "base_model" not in meta  # a local folder, not a hub id
    for section in SECTIONS:
        assert section in body
    assert 'pipeline("text-classification"' in body
    assert "LayerFreezer(train_last=2)" in body and "trainable:" in body
    assert "`negative`, `positive`" in body
    # the local base model shows as its folder name, never with the folders above it
    assert str(base_folder.parent) not in text and "base model: `tiny-bert`" in body
    # the max_length the Preprocessor settled on (the tiny model's 128 positions) is the one recorded
    assert tuner.preprocessor.max_length == 128 and "max input length: 128 tokens" in body


def test_card_with_results_intervals_and_data(tmp_path, fitted):
    tuner, results, data_report = fitted
    path = write_model_card(tuner, tmp_path / "m", results, confidence=0.95, data_report=data_report,
                            base_model="org/tiny-bert")
    meta, body = parse(path.read_text())
    assert meta["base_model"] == "org/tiny-bert"
    assert "| metric | value | 95% interval (low – high) |" in body
    f1 = f"| f1 | {fmt(results['f1'])} | {fmt(results['f1_low'])} – {fmt(results['f1_high'])} |"
    assert f1 in body
    assert "| train | 48 |" in body and "negative:" in body
    assert "| step | epoch | train loss | validation loss | accuracy | f1 |" in body
    for package in ("finetune_lib", "transformers", "torch"):
        assert f"- {package} " in body


def test_model_index_holds_the_results(tmp_path, fitted):
    tuner, results, _ = fitted
    path = write_model_card(tuner, tmp_path / "m", results, confidence=0.95, dataset="org/reviews")
    card = ModelCard.load(path)  # huggingface_hub reads it back
    got = {r.metric_type: r.metric_value for r in card.data.eval_results}
    expected = {k: results[k] for k in ("loss", "accuracy", "f1")}
    assert got.keys() == expected.keys()  # no intervals, slices or artifacts among them
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6)
    first = card.data.eval_results[0]
    assert (first.task_type, first.dataset_type, first.dataset_split) == ("text-classification", "org/reviews", "test")
    assert card.data.model_name == "tiny-bert-finetuned-classification" and card.data.datasets == ["org/reviews"]
    meta, _ = parse(path.read_text())
    assert meta["model-index"][0]["results"][0]["task"]["type"] == "text-classification"


def test_card_reads_results_the_tuner_keeps(tmp_path, fitted, monkeypatch):
    tuner, results, _ = fitted
    monkeypatch.setattr(tuner, "last_results", results, raising=False)
    monkeypatch.setattr(tuner, "last_confidence", 0.9, raising=False)
    body = parse(write_model_card(tuner, tmp_path).read_text())[1]
    assert "90% interval" in body and fmt(results["accuracy_high"]) in body


def test_card_tells_the_weight_decay_used_and_that_early_stopping_ended_training(tmp_path, stopped):
    text = (stopped.save(tmp_path / "final") / "README.md").read_text()
    _, body = parse(text)
    assert stopped.weight_decay == 0.01 and "| weight_decay | 0.01 |" in body
    assert "training: 8 optimizer steps" in body
    assert "early stopping ended training at step 8" in body
    assert "the saved weights are those of step 4 (best `validation/planted`)" in body
    assert "| 4 (saved weights) |" in body  # the validation table marks the row of the saved weights
    # readable regularizer descriptions, whole, not reprs cut mid-word
    assert ("regularizers: " + "; ".join([
        "Planted",  # a callback without describe() or a repr of its own: its class name
        "weight decay 0.01 (not on biases and normalization weights)",
        "dropout 0.1 (hidden, attention and classifier)",
        "early stopping on validation/planted (higher is better), patience 2, best weights restored",
    ])) in body
    assert "EarlyStopping(" not in body and " ...)" not in body
    assert str(stopped.output_dir.parent) not in text


def test_card_does_not_claim_early_stopping_when_the_run_reached_its_end(tmp_path, base_folder, data):
    # patience runs out at step 8, the last planned step: training ended because the plan did
    tuner, snaps = early_stopped(base_folder, data, [0.5, 0.9, 0.6, 0.6], max_steps=8)
    stopper = tuner.regularizers[-1]
    assert stopper.stopped_step is None and stopper.restored_step == 4
    body = parse(write_model_card(tuner, tmp_path).read_text())[1]
    assert "ended training" not in body.replace("did not end training", "")
    assert "early stopping did not end training" in body
    assert "the saved weights are those of step 4" in body


def test_card_without_early_stopping_says_the_last_step(tmp_path, fitted):
    tuner, _, _ = fitted
    body = parse(write_model_card(tuner, tmp_path).read_text())[1]
    steps = tuner.history[-1]["step"]
    assert f"the saved weights are those of the last step ({steps})" in body
    assert "early stopping ended" not in body and "early stopping did not" not in body
    assert "| weight_decay | 0.0 |" in body


@pytest.mark.parametrize("source,expected", [
    ("bert-base-uncased", "bert-base-uncased"), ("sentence-transformers/all-MiniLM-L6-v2",
                                                 "sentence-transformers/all-MiniLM-L6-v2"),
    ("./not/a hub id", None), (123, None),
])
def test_hub_id(source, expected):
    assert hub_id(source) == expected


def test_hub_id_of_an_existing_folder_is_none(tmp_path):
    (tmp_path / "model").mkdir()
    assert hub_id(str(tmp_path / "model")) is None


@pytest.mark.parametrize("task,tag", [("classification", "text-classification"), ("causal_lm", "text-generation"),
                                      ("seq2seq", "text2text-generation")])
def test_front_matter_per_task(task, tag):
    run = RunInfo(task=task, base_model="org/base-model", base_model_hub_id="org/base-model")
    meta = yaml.safe_load(front_matter(run).strip().strip("-"))
    assert meta == {"library_name": "transformers", "pipeline_tag": tag, "base_model": "org/base-model",
                    "tags": ["finetune_lib", "fine-tuned", tag]}


def test_classification_snippet_truncates_an_802_token_input(tmp_path):
    folder = save_tiny_pretrained(tmp_path / "base", arch="bert", task="classification")
    tuner = FineTuner(str(folder), "classification", preprocessor=Preprocessor(max_length=32), max_steps=1,
                      batch_size=8, progress=False, loggers=())
    tuner.fit(classification_records(16))
    saved = tuner.save(tmp_path / "final")
    card = (saved / "README.md").read_text()
    assert "max input length: 32 tokens" in card
    code = snippet(card)
    long_text = " ".join(["battery"] * 800)
    assert len(tuner.tokenizer(long_text)["input_ids"]) >= 802
    from transformers import pipeline

    with pytest.raises(RuntimeError):  # the plain call overflows the model's 128 positions
        pipeline("text-classification", model=str(saved))(long_text)
    out = run_snippet(code, saved, '"your text here"', long_text)
    assert "'label': 'negative'" in out or "'label': 'positive'" in out


@pytest.mark.parametrize("arch,task", [("gpt2", "causal_lm"), ("t5", "seq2seq")])
def test_generation_card_gives_the_prompt_format_and_a_snippet_that_truncates(tmp_path, arch, task):
    folder = save_tiny_pretrained(tmp_path / "base", arch=arch, task=task)
    template = "Q: {prompt}\nA: "
    tuner = FineTuner(str(folder), task, preprocessor=Preprocessor(max_length=40, prompt_template=template),
                      max_steps=1, batch_size=4, progress=False, loggers=())
    tuner.fit(generation_records(8))
    saved = tuner.save(tmp_path / "final")
    card = (saved / "README.md").read_text()
    body = parse(card)[1]
    assert f"prompt format: the {'input' if task == 'causal_lm' else 'encoder input'} is the record's `prompt` " \
           f"formatted with the template `{template!r}`" in body
    assert "max input length: 40 tokens" in body
    code = snippet(card)
    assert f"{template!r}.format(prompt=" in code  # prompts formatted as in training
    long_prompt = " ".join(["battery"] * 800)  # far past the tiny models' 128 positions
    if task == "causal_lm":
        from transformers import pipeline

        with pytest.raises(IndexError):  # GPT-2's 128 learned positions: the plain call overflows them
            pipeline("text-generation", model=str(saved))(long_prompt, max_new_tokens=4)
    out = run_snippet(code, saved, '"your prompt"', long_prompt)
    assert out.strip()


def test_usage_snippet_without_a_known_max_length_still_truncates():
    run = RunInfo(task="classification", base_model="m")
    assert "truncation=True" in usage_snippet(run)
    chat = RunInfo(task="causal_lm", base_model="m", max_length=100, use_chat_template=True,
                   prompt_template="{prompt}")
    code = usage_snippet(chat)
    assert '[{"role": "user", "content": prompt}]' in code and '"max_length": 50' in code  # 100 - 50 new


def test_non_finite_results_stay_out_of_model_index(tmp_path):
    run = RunInfo(task="causal_lm", base_model="m", results={"perplexity": math.inf, "loss": 2.5})
    card = ModelCard.load(write_model_card(run, tmp_path))
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("loss", 2.5)]
