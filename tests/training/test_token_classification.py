"""task="token_classification" end to end: fit, evaluate (against seqeval), predict, save -> transformers."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from finetune_lib import FineTuner, Preprocessor
from finetune_lib.tasks import get_task
from finetune_lib.testing import tiny_model, tiny_wordpiece_tokenizer

seqeval = pytest.importorskip("seqeval.metrics")

PEOPLE = [["Angela", "Merkel"], ["Olaf", "Scholz"], ["Zyxwv"]]
PLACES = [["Paris"], ["Berlin"], ["Rome"], ["Madrid"]]


def records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        verb = rng.choice(["visited", "met in", "and"]).split()
        out.append({"tokens": person + verb + place + ["."],
                    "tags": ["B-PER"] + ["I-PER"] * (len(person) - 1) + ["O"] * len(verb) + ["B-LOC"] + ["O"]})
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bert-ner")
    tok = tiny_wordpiece_tokenizer()
    tiny_model("bert", "token_classification", vocab_size=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ner-run")
    tuner = FineTuner(str(folder), task="token_classification", epochs=4, batch_size=8, learning_rate=3e-3,
                      progress=False, output_dir=out, eval_every="epoch")
    history = tuner.fit(records(64, 0), records(16, 1))
    return tuner, history


def test_fit_lowers_the_loss_and_learns_entities(trained):
    tuner, history = trained
    losses = [h["validation/loss"] for h in history if "validation/loss" in h]
    assert losses[-1] < losses[0]
    assert tuner.model.config.id2label == {0: "O", 1: "B-LOC", 2: "I-LOC", 3: "B-PER", 4: "I-PER"}
    assert history[-1]["validation/f1"] > 0.5


def test_evaluate_equals_seqeval_on_predictions(trained):
    tuner, _ = trained
    test = records(20, 2)
    results = tuner.evaluate(test, slices={"short": lambda r: len(r["tokens"]) <= 4}, confidence=0.9)
    predicted = [p["tags"] for p in tuner.predict([r["tokens"] for r in test])]
    truth = [r["tags"] for r in test]
    assert results["f1"] == pytest.approx(seqeval.f1_score(truth, predicted))
    assert results["precision"] == pytest.approx(seqeval.precision_score(truth, predicted))
    assert results["recall"] == pytest.approx(seqeval.recall_score(truth, predicted))
    assert results["accuracy"] == pytest.approx(seqeval.accuracy_score(truth, predicted))
    assert results["f1_low"] <= results["f1"] <= results["f1_high"]
    assert "short/f1" in results and results["short/count"] == sum(len(r["tokens"]) <= 4 for r in test)
    assert set(tuner.last_artifacts["entities"]) >= {"PER", "LOC", "micro avg"}


def test_predict_texts_tokens_and_spans(trained):
    tuner, _ = trained
    text = "Angela Merkel visited Paris."
    out = tuner.predict([text, ["Olaf", "Scholz", "visited", "Rome", "."], {"tokens": ["Berlin"]}])
    first = out[0]
    assert first["tokens"] == ["Angela", "Merkel", "visited", "Paris", "."]
    assert len(first["tags"]) == len(first["scores"]) == 5
    for entity in first["entities"]:
        assert text[entity["start"]: entity["end"]] == entity["text"]
        assert entity["type"] in {"PER", "LOC"} and 0 < entity["score"] <= 1
    assert "start" not in (out[1]["entities"] or [{}])[0]
    with pytest.raises(TypeError, match="list of inputs"):
        tuner.predict("Angela Merkel")


def test_saved_model_loads_in_transformers_and_the_pipeline_agrees(trained, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    tuner, _ = trained
    path = tuner.save(tmp_path / "final")
    model = AutoModelForTokenClassification.from_pretrained(path)
    assert model.config.id2label[3] == "B-PER"
    card = (path / "README.md").read_text()
    assert "token classification" in card and "token-classification" in card
    tok = AutoTokenizer.from_pretrained(path)
    texts = ["Angela Merkel visited Paris .", "Olaf Scholz met in Rome .", "Zyxwv and Madrid ."]
    ours = tuner.predict([t.split() for t in texts])
    # per token: the pipeline's label at each word's first sub-token is our word's tag
    per_token = pipeline("token-classification", model=model, tokenizer=tok, ignore_labels=[])
    for text, mine in zip(texts, ours):
        enc = tok(text)
        starts = [i for i, w in enumerate(enc.word_ids()) if w is not None and (i == 0 or enc.word_ids()[i - 1] != w)]
        by_index = {row["index"]: row["entity"] for row in per_token(text)}
        assert [by_index[i] for i in starts] == mine["tags"]
    # grouped: "first" reads each word's first sub-token, as predict does
    first = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="first")
    for text, mine in zip(texts, ours):
        offsets = [(w, text.index(w)) for w in text.split()]  # words are unique within each text here
        expected = [(e["type"], offsets[e["first_word"]][1],
                     offsets[e["last_word"]][1] + len(offsets[e["last_word"]][0])) for e in mine["entities"]]
        assert [(g["entity_group"], g["start"], g["end"]) for g in first(text)] == expected
    simple = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="simple")
    assert {g["entity_group"] for g in simple(texts[0])} <= {"PER", "LOC"}


def test_loss_is_token_cross_entropy_over_labelled_subtokens(folder):
    tok = tiny_wordpiece_tokenizer()
    data = records(6, 3)
    task = get_task("token_classification")
    for all_subtokens in (False, True):
        pre = Preprocessor(label_all_subtokens=all_subtokens).setup(tok, "token_classification", data)
        batch = pre.collate(pre.encode(data))
        logits = torch.randn(*batch["input_ids"].shape, 5)
        labelled = int((batch["labels"] != -100).sum())
        assert task.count_targets(batch) == labelled
        expected = F.cross_entropy(logits.reshape(-1, 5), batch["labels"].reshape(-1), ignore_index=-100)
        loss = task.loss(type("Out", (), {"logits": logits})(), batch, labelled)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert labelled > sum(len(r["tokens"]) for r in data)  # all sub-tokens: more than one label per word


@pytest.mark.parametrize("bad, message", [
    ({"tokens": ["Angela", "Merkel"], "tags": ["B-PER"]}, "2 tokens but 1 tags"),
    ({"tokens": ["Angela"], "tags": ["I-"]}, "no entity type"),
    ({"tokens": [], "tags": []}, "non-empty list"),
    ({"text": "Angela Merkel", "spans": [{"start": 0, "end": 40, "label": "PER"}]}, "out of range"),
    ({"text": "Angela Merkel", "spans": [{"start": 0, "end": 8, "label": "PER"},
                                         {"start": 7, "end": 13, "label": "PER"}]}, "overlap"),
])
def test_bad_records_refused_before_loading_anything(bad, message, tmp_path):
    tuner = FineTuner(str(tmp_path / "no-model-here"), task="token_classification", progress=False)
    with pytest.raises(ValueError, match=message):
        tuner.fit(records(4, 0) + [bad])
    assert tuner.model is None


def test_span_records_train_and_the_cli_config_knows_the_task(folder):
    from finetune_lib.runconfig import TASKS

    assert "token_classification" in TASKS
    spans = [{"text": "Olaf Scholz visited Rome.", "spans": [{"start": 0, "end": 11, "label": "PER"},
                                                            {"start": 20, "end": 24, "label": "LOC"}]}] * 4
    tuner = FineTuner(str(folder), task="token_classification", epochs=1, batch_size=4, progress=False)
    tuner.fit(spans)
    assert tuner.preprocessor.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert set(tuner.evaluate(spans)) >= {"loss", "precision", "recall", "f1", "accuracy"}
