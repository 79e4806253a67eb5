from hypothesis import given
from hypothesis import strategies as st

from fusion.core.text import normalize_text


def test_examples():
    assert normalize_text("Hello, World!") == "hello world"
    assert normalize_text("It's 42 degrees.") == "it's forty two degrees"
    assert normalize_text("In 1813 the 3rd ball") == "in eighteen thirteen the third ball"
    assert normalize_text("2.5 and 1,000") == "two point five and one thousand"
    assert normalize_text("Café  déjà-vu") == "cafe deja vu"
    assert normalize_text("“Don’t,” she said; 'No.'") == "don't she said no"
    assert normalize_text("") == ""


@given(st.text())
def test_idempotent_and_in_alphabet(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert set(once) <= set("abcdefghijklmnopqrstuvwxyz' ")
    assert "  " not in once and once == once.strip()
