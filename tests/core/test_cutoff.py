"""stop / max_tokens emulated for backends that cannot honour them (core/cutoff.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rtxrelay.core.cutoff import Cut, Cutoff, FinishReason, estimate_tokens

TEXT = "The answer is forty-two. ### Next question: why? 答案是四十二。" * 3


def grow(cutoff: Cutoff, text: str, steps: list[int]) -> list[Cut]:
    """Apply to growing prefixes of ``text``, then to the whole as final."""
    ends = sorted({s % (len(text) + 1) for s in steps})
    cuts = [cutoff.apply(text[:end], final=False) for end in ends]
    return [*cuts, cutoff.apply(text, final=True)]


def test_a_stop_string_ends_the_text_before_it() -> None:
    assert Cutoff(["###"]).apply(TEXT, final=True) == Cut("The answer is forty-two. ",
                                                            FinishReason.STOP)
    assert Cutoff(["nowhere"]).apply(TEXT, final=True) == Cut(TEXT)


def test_max_tokens_cuts_by_the_estimate() -> None:
    cut = Cutoff(max_tokens=5).apply(TEXT, final=True)
    assert cut.ended is FinishReason.LENGTH and estimate_tokens(cut.text) <= 5
    assert TEXT.startswith(cut.text) and len(cut.text) == 20
    assert Cutoff(max_tokens=10_000).apply(TEXT, final=True) == Cut(TEXT)


@given(st.lists(st.integers(min_value=0, max_value=500), max_size=20))
def test_growing_text_never_shows_part_of_a_stop_string(steps: list[int]) -> None:
    for stops in (["###"], ["question: why", "四十"], ["zzz"]):
        cutoff = Cutoff(stops, max_tokens=30)
        cuts = grow(cutoff, TEXT, steps)
        once = Cutoff(stops, max_tokens=30).apply(TEXT, final=True)
        finals = [c for c in cuts if c.ended is not None] or cuts[-1:]
        assert finals[0] == once  # the first end seen is the one a whole look gives
        for cut in cuts:
            assert not any(stop in cut.text for stop in stops)
            assert once.text.startswith(cut.text) or cut.text.startswith(once.text)


def test_a_text_that_changed_earlier_is_looked_at_anew() -> None:
    cutoff = Cutoff(["STOP"], max_tokens=100)
    assert cutoff.apply("abc def", final=False).text == "abc def"
    assert cutoff.apply("xyz STOP more", final=False) == Cut("xyz ", FinishReason.STOP)
