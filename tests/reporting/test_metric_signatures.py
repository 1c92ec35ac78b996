"""sacrebleu's signatures reach the user: `FineTuner.evaluate` -> `tuner.last_artifacts`, the model
card (with the results, and with the metrics in the settings) and the training report."""

import sacrebleu

from finetune_lib import FineTuner, MetricSuite
from finetune_lib.metrics import BLEU, ChrF, Perplexity
from finetune_lib.reporting import write_model_card, write_report
from finetune_lib.testing import tiny_model, tiny_tokenizer

from ..training.helpers import generation_records


def test_bleu_and_chrf_signatures_reach_artifacts_model_card_and_report(tmp_path):
    tok = tiny_tokenizer()
    tuner = FineTuner(tiny_model("gpt2", "causal_lm", vocab_size=len(tok)), "causal_lm", tokenizer=tok,
                      metrics=MetricSuite([Perplexity(), BLEU(tokenize="intl", smooth_method="floor"), ChrF()]),
                      max_new_tokens=3, precision="fp32", progress=False)
    results = tuner.evaluate(generation_records(6))
    # sacrebleu's own signature for the same settings (one reference per hypothesis)
    bleu = sacrebleu.BLEU(tokenize="intl", smooth_method="floor")
    bleu.corpus_score(["a b"], [["a b"]])
    chrf = sacrebleu.CHRF()
    chrf.corpus_score(["a b"], [["a b"]])
    expected = {"bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}
    assert expected["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:intl|smooth:floor[0.10]|version:")
    assert {k: tuner.last_artifacts[k] for k in expected} == expected
    assert "perplexity_signature" not in tuner.last_artifacts

    card = write_model_card(tuner, tmp_path / "model", results).read_text()
    results_section = card.split("## Evaluation results", 1)[1].split("## How to use", 1)[0]
    assert f"`bleu`: `{expected['bleu_signature']}`" in results_section
    assert f"`chrf`: `{expected['chrf_signature']}`" in results_section
    assert f"`bleu` (signature `{expected['bleu_signature']}`)" in card  # with the metrics, in the settings
    report = write_report(tuner, results, tmp_path / "report.md").read_text()
    assert f"`bleu` (signature `{expected['bleu_signature']}`)" in report
    # results without BLEU: its signature is not attached to them
    card = write_model_card(tuner, tmp_path / "other", {"loss": 1.0}).read_text()
    assert "Signatures" not in card.split("## Evaluation results", 1)[1].split("## How to use", 1)[0]
