import functools
import importlib.util
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_lib.data import cleaning
from finetune_lib.data.cleaning import DEFAULT_STEPS, STEPS, Cleaner, compose, mask


def test_unicode_nfkc():
    assert cleaning.unicode("ｆｕｌｌ\u00a0width ﬁne ①") == "full width fine 1"
    assert cleaning.unicode("cafe\u0301") == "café"


def test_whitespace():
    assert cleaning.whitespace("  a \t b\n\n c\u00a0 ") == "a b c"
    assert cleaning.whitespace("") == ""


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<p>Fish &amp; chips</p>", "Fish & chips"),
        ("<div>one</div><div>two</div>", "one two"),
        ("line<br>break<br/>again", "line break again"),
        ("a < b and c > d", "a < b and c > d"),  # a bare < is text, not a tag
        ("x<3 love", "x<3 love"),
        ("<script>alert('x')</script>safe<style>p{}</style>", "safe"),
        ("AT&T &copy; 2020 &lt;tag&gt; &#39;q&#39;", "AT&T © 2020 <tag> 'q'"),
        ('<a href="http://x.org">link</a> text', "link text"),
        ("no markup at all", "no markup at all"),
    ],
)
def test_html(raw, expected):
    assert cleaning.whitespace(cleaning.html(raw)) == expected


def test_urls_default_and_custom_placeholder():
    text = "see https://example.com/a?b=1. or www.test.org, ftp://files.net/x"
    assert cleaning.urls(text) == "see <url>. or <url>, <url>"
    assert cleaning.urls(text, placeholder="[URL]") == "see [URL]. or [URL], [URL]"
    assert compose([mask("urls", "LINK")])("go to http://a.b/c") == "go to LINK"
    assert compose([functools.partial(cleaning.urls, placeholder="U")])("http://a.bc") == "U"


def test_emails():
    assert cleaning.emails("mail jane.doe+x@mail.example.org now") == "mail <email> now"
    assert cleaning.emails("a@b.co, c@d.io", placeholder="@") == "@, @"
    assert cleaning.emails("not an email: a@b") == "not an email: a@b"


def test_numbers():
    assert cleaning.numbers("paid 1,299.99 for 2 mp3 players, -3 and 20% off") == (
        "paid <num> for <num> mp3 players, <num> and <num> off"
    )
    assert cleaning.numbers("4G phone", placeholder="#") == "4G phone"
    assert cleaning.numbers("version 2 of 3", placeholder="N") == "version N of N"


def test_mask_unknown_kind():
    with pytest.raises(ValueError, match="urls"):
        mask("phones", "<p>")


def test_lowercase():
    assert cleaning.lowercase("The USA Ünïcode") == "the usa ünïcode"


def test_punctuation_keeps_placeholders():
    assert cleaning.punctuation("Hello, world! It's <url>.") == "Hello world Its <url>"
    assert cleaning.punctuation("«quoted» — dash") == "quoted  dash"


def test_special_chars():
    assert cleaning.special_chars("Great \u2764\ufe0f phone\u200b ©2020 <num>$") == "Great  phone 2020 <num>"
    assert cleaning.special_chars("plain, text!") == "plain, text!"


def test_stopwords():
    assert cleaning.stopwords("This is NOT the phone I wanted") == "phone wanted"
    assert cleaning.stopwords("The, battery") == "battery"


def test_stem():
    if importlib.util.find_spec("nltk") is None:
        with pytest.raises(ImportError, match=r"pip install \"finetune_lib\[nlp\]\""):
            cleaning.stem("running batteries")
    else:
        assert cleaning.stem("running batteries") == "run batteri"


def test_registry_has_all_steps():
    expected = {"unicode", "whitespace", "html", "urls", "emails", "numbers", "lowercase", "punctuation",
                "special_chars", "stopwords", "stem"}
    assert expected <= set(STEPS)
    assert DEFAULT_STEPS == ["unicode", "html", "whitespace"]
    assert "subword" in cleaning.__doc__ and "lowercas" in cleaning.__doc__


def test_compose_names_and_callables_in_order():
    clean = compose(["html", "whitespace", str.upper, lambda s: s + "!"])
    assert isinstance(clean, Cleaner)
    assert clean("<b>hi</b>   there") == "HI THERE!"
    # order matters: masking before lowercasing keeps placeholders lower case either way
    assert compose(["lowercase", "urls"])("See HTTP://X.ORG") == "see <url>"
    assert compose(["punctuation", "whitespace"])("a , b") == "a b"
    assert compose("whitespace")("  x  ") == "x"
    assert compose(None)("  same  ") == "  same  "
    assert compose([])("x") == "x"
    assert compose([compose(["html"]), "whitespace"]).names == ["html", "whitespace"]


def test_compose_default_steps():
    clean = compose(DEFAULT_STEPS)
    assert clean("<p>Ｈｅｌｌｏ&nbsp;&amp;\n\n world</p>") == "Hello & world"
    assert clean("Keep Case and the stop words.") == "Keep Case and the stop words."


def test_compose_unknown_name_lists_known():
    with pytest.raises(ValueError) as info:
        compose(["html", "nope"])
    message = str(info.value)
    assert "'nope'" in message
    for name in ("html", "whitespace", "stopwords"):
        assert name in message


def test_compose_rejects_non_callable():
    with pytest.raises(TypeError, match="callables"):
        compose([42])


def test_register_step():
    @cleaning.register_step("_test_no_digits")
    def no_digits(text: str) -> str:
        return "".join(c for c in text if not c.isdigit())

    try:
        assert compose(["_test_no_digits"])("a1b2") == "ab"
        with pytest.raises(ValueError, match="already registered"):
            cleaning.register_step("_test_no_digits", str.lower)
    finally:
        del STEPS["_test_no_digits"]


def test_cleaner_pickles():
    clean = compose(["unicode", "html", mask("numbers", "#"), "whitespace"])
    again = pickle.loads(pickle.dumps(clean))
    assert again("<i>call 555</i>  now") == clean("<i>call 555</i>  now") == "call # now"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_default_steps_properties(text):
    out = compose(DEFAULT_STEPS)(text)
    assert out == out.strip()
    assert "  " not in out
    assert cleaning.whitespace(out) == out
    assert cleaning.unicode(cleaning.unicode(text)) == cleaning.unicode(text)


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_every_step_returns_str(text):
    for name, step in STEPS.items():
        if name == "stem" and importlib.util.find_spec("nltk") is None:
            continue
        assert isinstance(step(text), str)
