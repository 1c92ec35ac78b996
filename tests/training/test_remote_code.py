"""Models are loaded without trust_remote_code: no code shipped with a model runs unless the user loads the
model themselves (docs/guide/finetuner.md, "Loading models")."""

import pytest
import transformers

from finetune_lib import FineTuner
from finetune_lib.testing import save_tiny_pretrained

from .helpers import classification_records, generation_records

LOADERS = ("AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification", "AutoModelForCausalLM",
           "AutoModelForSeq2SeqLM")


@pytest.mark.parametrize("arch,task", [("bert", "classification"), ("gpt2", "causal_lm")])
def test_from_pretrained_never_trusts_remote_code(tmp_path, monkeypatch, arch, task):
    calls = []
    for name in LOADERS:
        cls = getattr(transformers, name)
        original = cls.from_pretrained

        def spy(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    folder = save_tiny_pretrained(tmp_path / "base", arch=arch, task=task)
    records = classification_records(8) if task == "classification" else generation_records(8)
    FineTuner(str(folder), task, max_steps=1, batch_size=4, progress=False, loggers=()).fit(records)
    loaded = {name for name, _ in calls}
    assert "AutoTokenizer" in loaded and len(loaded) >= 2  # the tokenizer and the model went through the spies
    assert all(not kwargs.get("trust_remote_code", False) for _, kwargs in calls), calls
