"""Set hidden, attention and classifier dropout on any architecture.

Where transformers models read dropout probabilities (checked on BERT, GPT-2, Llama, T5):

* `nn.Dropout` modules, whose `p` is read at every call: hidden/residual/embedding dropout everywhere,
  BERT's attention-probability dropout (`BertSelfAttention.dropout`, also read as `self.dropout.p` by the
  SDPA path), GPT-2's `attn.attn_dropout` (also `.p` for SDPA), classifier dropout (`model.dropout` of
  `BertForSequenceClassification`, `classification_head.dropout` of T5);
* float attributes of modules, read at every call by the attention functions: Llama/Mistral/Qwen
  `self_attn.attention_dropout`, T5's `T5Attention.dropout`, OPT/BART `dropout` and
  `activation_dropout` of their layers and attention modules;
* the config fields (`hidden_dropout_prob`, `attention_probs_dropout_prob`, `classifier_dropout`,
  `resid_pdrop`, `embd_pdrop`, `attn_pdrop`, `dropout_rate`, `attention_dropout`, ...), read when a model
  is built and saved with it, so a saved model keeps the setting.

Kinds: an `nn.Dropout` or float attribute is "attention" when its attribute name mentions attention
(`attn_dropout`, `attention_dropout`) or when it is the plain `dropout` of an attention module (a class
whose name contains "Attention"); it is "classifier" when it lives outside `model.base_model` (the task
head); everything else is "hidden".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..events import TrainState
from .base import Regularizer

__all__ = ["Dropout", "DropoutReport", "set_dropout"]

CONFIG_FIELDS = {
    "hidden": ("hidden_dropout_prob", "hidden_dropout", "dropout", "dropout_rate", "resid_pdrop", "embd_pdrop",
               "activation_dropout", "embed_dropout", "residual_dropout", "ffn_dropout"),
    "attention": ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop", "attn_dropout"),
    "classifier": ("classifier_dropout", "seq_classif_dropout", "summary_first_dropout"),
}
FLOAT_ATTRIBUTES = ("dropout", "dropout_rate", "dropout_p", "dropout_prob", "attention_dropout", "attn_dropout",
                    "attn_pdrop", "activation_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop")


@dataclass
class DropoutReport:
    """What `set_dropout` changed.

    Attributes:
        modules: module path of each `nn.Dropout` -> its kind ("hidden", "attention", "classifier").
        attributes: "path.attribute" of each float dropout attribute -> its kind.
        config: config field -> the value set.
    """

    modules: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    config: dict[str, float] = field(default_factory=dict)


def _kind(attr: str, owner: nn.Module | None, path: str, head_prefixes: list[str]) -> str:
    if any(path == h or path.startswith(h + ".") for h in head_prefixes):
        return "classifier"
    if "attn" in attr or "attention" in attr:
        return "attention"
    if owner is not None and "attention" in type(owner).__name__.lower() and attr.startswith("dropout"):
        return "attention"
    return "hidden"


def _head_prefixes(model: nn.Module) -> list[str]:
    base = getattr(model, "base_model", model)
    if base is model:
        return []
    return [name for name, child in model.named_children() if child is not base]


def set_dropout(model: nn.Module, p: float, attention: float | None = None,
                classifier: float | None = None) -> DropoutReport:
    """Set dropout probabilities everywhere in `model` (modules, float attributes, config).

    Args:
        model: the model.
        p: hidden dropout (embeddings, residual streams, feed-forward).
        attention: dropout of the attention probabilities (None: `p`).
        classifier: dropout in the task head (None: `p`).

    Returns:
        A `DropoutReport` of what was set.
    """
    values = {"hidden": float(p), "attention": float(p if attention is None else attention),
              "classifier": float(p if classifier is None else classifier)}
    for kind, value in values.items():
        if not (0.0 <= value < 1.0):
            raise ValueError(f"{kind} dropout must be in [0, 1), got {value!r}.")
    heads = _head_prefixes(model)
    report = DropoutReport()
    modules = dict(model.named_modules())
    for path, module in modules.items():
        parent_path, _, attr = path.rpartition(".")
        if isinstance(module, nn.Dropout) or isinstance(module, nn.modules.dropout._DropoutNd):
            kind = _kind(attr, modules.get(parent_path), path, heads)
            module.p = values[kind]
            report.modules[path] = kind
        for name in FLOAT_ATTRIBUTES:
            value = module.__dict__.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                kind = _kind(name, module, path, heads)
                setattr(module, name, values[kind])
                report.attributes[f"{path}.{name}" if path else name] = kind
    config = getattr(model, "config", None)
    if config is not None:
        for kind, fields in CONFIG_FIELDS.items():
            for name in fields:
                if hasattr(config, name) and (name == "classifier_dropout" or
                                              isinstance(getattr(config, name), (int, float))):
                    if isinstance(getattr(config, name), bool):
                        continue
                    setattr(config, name, values[kind])
                    report.config[name] = values[kind]
    return report


class Dropout(Regularizer):
    """Set hidden, attention and classifier dropout of the model in `on_setup` (see `set_dropout`).

    Args:
        p: hidden dropout probability.
        attention: attention-probability dropout (None: `p`).
        classifier: dropout before the classifier (None: `p`).

    Example:
        >>> FineTuner(..., regularizers=[Dropout(0.1, attention=0.0)])
    """

    def __init__(self, p: float = 0.1, attention: float | None = None, classifier: float | None = None):
        for label, value in (("p", p), ("attention", attention), ("classifier", classifier)):
            if value is not None and not (0.0 <= float(value) < 1.0):
                raise ValueError(f"Dropout {label} must be in [0, 1), got {value!r}.")
        self.p, self.attention, self.classifier = float(p), attention, classifier
        self.report: DropoutReport | None = None

    def describe(self) -> str:
        """E.g. "dropout 0.1 (attention 0, classifier 0.1)"."""
        attention = self.p if self.attention is None else float(self.attention)
        classifier = self.p if self.classifier is None else float(self.classifier)
        if attention == classifier == self.p:
            return f"dropout {self.p:g} (hidden, attention and classifier)"
        return f"dropout {self.p:g} (attention {attention:g}, classifier {classifier:g})"

    def on_setup(self, state: TrainState) -> None:
        self.report = set_dropout(state.model, self.p, self.attention, self.classifier)
