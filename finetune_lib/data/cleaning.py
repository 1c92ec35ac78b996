"""Text cleaning: small, named, composable steps, each a pure function ``str -> str``.

Pick steps by name (see ``STEPS``) or pass your own callables, in order, to :func:`compose`::

    >>> from finetune_lib.data.cleaning import compose
    >>> clean = compose(["html", "urls", "whitespace", str.strip])
    >>> clean("<p>See   https://example.com &amp; more</p>")
    'See <url> & more'

Why the defaults are ``DEFAULT_STEPS = ["unicode", "html", "whitespace"]``
-------------------------------------------------------------------------
Fine-tuning starts from a pretrained model whose subword tokenizer and weights were trained on
natural, running text: cased, with punctuation, stop words and inflections. The default steps only
undo damage that the model never saw during pre-training, and keep everything else:

* ``unicode`` (NFKC) folds compatibility forms (full-width letters, ligatures, non-breaking spaces)
  into the characters the tokenizer's vocabulary was built from;
* ``html`` removes markup and decodes entities (``&amp;`` -> ``&``), which scraped data often carries;
* ``whitespace`` collapses runs of spaces, tabs and newlines, which otherwise waste tokens.

The classic bag-of-words steps are available but **off by default**, because they remove signal a
pretrained model uses and move the inputs away from its pre-training distribution:

* ``lowercase`` hurts cased models (``bert-base-cased``, GPT-2, T5, Llama: "US" and "us" differ);
  uncased tokenizers lowercase by themselves anyway;
* ``stopwords`` removes words that carry meaning for a contextual model ("not good" -> "good");
* ``stem`` produces non-words ("battery" -> "batteri") that split into odd subwords;
* ``punctuation`` / ``special_chars`` remove cues (``!``, ``?``, emoticons) that models read.

Use them for classical (TF-IDF) baselines or when you know they help. The masking steps ``urls``,
``emails`` and ``numbers`` replace matches with a placeholder (``<url>``, ``<email>``, ``<num>``); pass
another with ``functools.partial(urls, placeholder="[URL]")`` or :func:`mask`.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from html.parser import HTMLParser
from typing import Any

__all__ = ["DEFAULT_STEPS", "STEPS", "Cleaner", "compose", "emails", "html", "lowercase", "mask", "numbers",
           "punctuation", "register_step", "special_chars", "stem", "stopwords", "unicode", "urls", "whitespace"]

Step = Callable[[str], str]

URL_PLACEHOLDER = "<url>"
EMAIL_PLACEHOLDER = "<email>"
NUMBER_PLACEHOLDER = "<num>"

# --------------------------------------------------------------------------- normalization


def unicode(text: str) -> str:
    """Normalize to Unicode NFKC (full-width letters, ligatures, NBSP -> their plain forms).

    >>> unicode("ｆｕｌｌ\u00a0ﬁx")
    'full fix'
    """
    return unicodedata.normalize("NFKC", text)


def whitespace(text: str) -> str:
    """Collapse runs of whitespace (spaces, tabs, newlines) to one space and strip both ends.

    >>> whitespace("  a \\t b\\n\\nc ")
    'a b c'
    """
    return " ".join(text.split())


# Tags after which words must not run together ("<p>a</p><p>b</p>" -> "a b", not "ab").
_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table tbody td tfoot th thead tr ul".split()
)
_SKIP_TAGS = frozenset({"script", "style", "template", "noscript"})


class _TextExtractor(HTMLParser):
    """Collects the text content of an HTML fragment; entities are decoded by the parser."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html(text: str) -> str:
    """Strip HTML tags (dropping ``<script>``/``<style>`` content) and decode entities.

    Uses the standard library's ``html.parser``, so a bare ``<`` in text ("a < b") is kept.
    Block tags (``<p>``, ``<br>``, ``<li>``...) become a space so that words do not merge.

    >>> html("<p>Fish &amp; chips</p><br>for <b>two</b>")
    ' Fish & chips  for two'
    """
    if "<" not in text and "&" not in text:
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


# --------------------------------------------------------------------------- masking

_URL_RE = re.compile(r"""(?:\b[a-z][a-z0-9+.\-]*://|\bwww\d{0,3}\.)[^\s<>"']+""", re.IGNORECASE)
_EMAIL_RE = re.compile(r"\b[\w.+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b")
_NUMBER_RE = re.compile(r"(?<![\w.])[+\-]?\d+(?:[.,]\d+)*(?:[eE][+\-]?\d+)?%?(?![\w])")
_TRAILING_PUNCT = ".,;:!?)]}'\""


def _url_sub(placeholder: str) -> Callable[[re.Match[str]], str]:
    def sub(match: re.Match[str]) -> str:
        url = match.group(0)
        stripped = url.rstrip(_TRAILING_PUNCT)  # "see http://x.org." keeps its full stop
        return placeholder + url[len(stripped) :]

    return sub


def urls(text: str, placeholder: str = URL_PLACEHOLDER) -> str:
    """Replace URLs (``scheme://...`` or ``www....``) with ``placeholder``.

    >>> urls("see https://example.com/a?b=1.")
    'see <url>.'
    """
    return _URL_RE.sub(_url_sub(placeholder), text)


def emails(text: str, placeholder: str = EMAIL_PLACEHOLDER) -> str:
    """Replace e-mail addresses with ``placeholder``.

    >>> emails("write to jane.doe+x@mail.example.org today")
    'write to <email> today'
    """
    return _EMAIL_RE.sub(lambda _m: placeholder, text)


def numbers(text: str, placeholder: str = NUMBER_PLACEHOLDER) -> str:
    """Replace numbers (``42``, ``-3.5``, ``1,000``, ``1e-3``, ``20%``) with ``placeholder``.

    Digits inside words ("mp3", "4G") are kept.

    >>> numbers("paid 1,299.99 for 2 mp3 players")
    'paid <num> for <num> mp3 players'
    """
    return _NUMBER_RE.sub(lambda _m: placeholder, text)


_MASKERS: dict[str, Callable[..., str]] = {"urls": urls, "emails": emails, "numbers": numbers}


def mask(kind: str, placeholder: str) -> Step:
    """A masking step (``"urls"``, ``"emails"`` or ``"numbers"``) with a custom placeholder.

    >>> compose([mask("urls", "[LINK]")])("go to www.example.com")
    'go to [LINK]'
    """
    if kind not in _MASKERS:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {sorted(_MASKERS)}")
    step = functools.partial(_MASKERS[kind], placeholder=placeholder)
    functools.update_wrapper(step, _MASKERS[kind])
    return step


# --------------------------------------------------------------------------- bag-of-words steps

# Placeholders such as <url> survive punctuation / special-character removal.
_PLACEHOLDER_RE = re.compile(r"(<[A-Za-z_]+>)")


def lowercase(text: str) -> str:
    """Lowercase the text (do not use with cased models; see the module docstring).

    >>> lowercase("The USA")
    'the usa'
    """
    return text.lower()


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def _outside_placeholders(text: str, fn: Step) -> str:
    parts = _PLACEHOLDER_RE.split(text)
    # split() with one capturing group: even indices are plain text, odd are placeholders
    return "".join(part if i % 2 else fn(part) for i, part in enumerate(parts))


def punctuation(text: str) -> str:
    """Remove punctuation characters (Unicode category P*: ``.,;:!?'"-()`` ...).

    Placeholders such as ``<url>`` are kept.

    >>> punctuation("Hello, world! It's <url>.")
    'Hello world Its <url>'
    """
    return _outside_placeholders(text, lambda s: "".join(ch for ch in s if not _is_punct(ch)))


def _is_special(ch: str) -> bool:
    if ch.isspace():
        return False
    if "\ufe00" <= ch <= "\ufe0f" or "\U000e0100" <= ch <= "\U000e01ef":
        return True  # emoji variation selectors
    return unicodedata.category(ch)[0] in "SC"  # symbols (emoji, math, currency) and control/format


def special_chars(text: str) -> str:
    """Remove symbols and control characters (emoji, ``©``, ``$``, zero-width spaces, ...).

    Letters, digits, punctuation, whitespace and placeholders such as ``<num>`` are kept.

    >>> special_chars("Great \u2764\ufe0f phone\u200b ©2020 <num>$")
    'Great  phone 2020 <num>'
    """
    return _outside_placeholders(text, lambda s: "".join(ch for ch in s if not _is_special(ch)))


@functools.lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


_STRIP_CHARS = string.punctuation + "\u2018\u2019\u201c\u201d"


def stopwords(text: str) -> str:
    """Remove English stop words (scikit-learn's ``ENGLISH_STOP_WORDS``), case-insensitively.

    Splits on whitespace and joins with single spaces.

    >>> stopwords("This is NOT the phone I wanted")
    'phone wanted'
    """
    words = _stop_words()
    return " ".join(tok for tok in text.split() if tok.strip(_STRIP_CHARS).lower() not in words)


@functools.lru_cache(maxsize=1)
def _porter() -> Any:
    try:
        from nltk.stem import PorterStemmer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            'the "stem" cleaning step needs nltk: pip install "finetune_lib[nlp]" (or pip install nltk)'
        ) from err
    return PorterStemmer()


def stem(text: str) -> str:
    """Porter-stem each whitespace-separated word (needs the optional ``nltk`` package).

    >>> stem("batteries running")  # doctest: +SKIP
    'batteri run'
    """
    stemmer = _porter()
    return " ".join(stemmer.stem(tok) for tok in text.split())


# --------------------------------------------------------------------------- registry and compose

STEPS: dict[str, Step] = {
    "unicode": unicode,
    "html": html,
    "whitespace": whitespace,
    "urls": urls,
    "emails": emails,
    "numbers": numbers,
    "lowercase": lowercase,
    "punctuation": punctuation,
    "special_chars": special_chars,
    "stopwords": stopwords,
    "stem": stem,
}
"""Registered cleaning steps by name. Add your own with :func:`register_step`."""

DEFAULT_STEPS: list[str] = ["unicode", "html", "whitespace"]
"""Safe for pretrained subword models: see the module docstring."""


def register_step(name: str, fn: Step | None = None, *, overwrite: bool = False) -> Any:
    """Register ``fn`` under ``name`` so that ``compose([name])`` finds it; usable as a decorator.

    >>> @register_step("no_digits")  # doctest: +SKIP
    ... def no_digits(text: str) -> str:
    ...     return "".join(c for c in text if not c.isdigit())
    """

    def deco(f: Step) -> Step:
        if not callable(f):
            raise TypeError(f"cleaning step {name!r} must be callable str -> str, got {type(f).__name__}")
        if name in STEPS and not overwrite and STEPS[name] is not f:
            raise ValueError(f"cleaning step {name!r} is already registered; pass overwrite=True to replace it")
        STEPS[name] = f
        return f

    return deco(fn) if fn is not None else deco


def _step_name(step: Step) -> str:
    for name, fn in STEPS.items():
        if fn is step:
            return name
    return getattr(step, "__name__", None) or repr(step)


class Cleaner:
    """The result of :func:`compose`: applies its steps in order. Picklable when its steps are
    (module-level functions and ``functools.partial`` of them are), so it works in DataLoader workers.
    """

    __slots__ = ("steps",)

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps: tuple[Step, ...] = tuple(steps)

    def __call__(self, text: str) -> str:
        for step in self.steps:
            text = step(text)
        return text

    @property
    def names(self) -> list[str]:
        """The step names (registered name, else the callable's ``__name__``)."""
        return [_step_name(s) for s in self.steps]

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"Cleaner({self.names})"


def compose(steps: str | Step | Iterable[str | Step] | None) -> Cleaner:
    """Build one cleaning function from step names (see ``STEPS``) and/or callables, applied in order.

    Args:
        steps: a list of registered names and/or callables ``str -> str``; a single name or
            callable is accepted too; ``None`` or ``[]`` gives the identity.

    Raises:
        ValueError: an unknown step name (the message lists the known ones).
        TypeError: an item that is neither a name nor a callable.

    >>> compose(["lowercase", lambda s: s.replace("!", ".")])("WOW!")
    'wow.'
    """
    if steps is None:
        return Cleaner([])
    if isinstance(steps, str) or callable(steps):
        steps = [steps]
    resolved: list[Step] = []
    for item in steps:
        if isinstance(item, str):
            if item not in STEPS:
                raise ValueError(
                    f"unknown cleaning step {item!r}; known steps: {', '.join(sorted(STEPS))} "
                    "(or pass a callable str -> str)"
                )
            resolved.append(STEPS[item])
        elif isinstance(item, Cleaner):
            resolved.extend(item.steps)
        elif callable(item):
            resolved.append(item)
        else:
            raise TypeError(
                f"cleaning steps must be names or callables str -> str, got {type(item).__name__}: {item!r}"
            )
    return Cleaner(resolved)
