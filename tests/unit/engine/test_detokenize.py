"""Stop strings across token boundaries and UTF-8 split across tokens."""

import pytest

from lokal.engine.detokenize import Detokenizer, StopMatcher


def feed_all(det: Detokenizer, pieces: list[bytes]) -> tuple[str, bool]:
    out = []
    for p in pieces:
        text, hit = det.feed(p)
        out.append(text)
        if hit:
            return "".join(out), True
    out.append(det.flush())
    return "".join(out), False


def test_stop_string_spanning_three_tokens_is_cut_and_not_emitted():
    det = Detokenizer(stops=("###END",))
    text, hit = feed_all(det, [b"Hello ", b"wor", b"ld#", b"##E", b"ND and more"])
    assert hit
    assert text == "Hello world"


def test_partial_stop_prefix_is_released_when_it_turns_out_not_to_be_a_stop():
    det = Detokenizer(stops=("</s>",))
    emitted = [det.feed(b"a <")[0], det.feed(b"/x")[0]]
    assert emitted[0] == "a "  # "<" held back: it may start "</s>"
    assert emitted[1] == "</x"
    assert det.flush() == ""


def test_held_back_text_is_flushed_at_the_end():
    det = Detokenizer(stops=("STOP",))
    text, hit = feed_all(det, [b"almost ST"])
    assert not hit and text == "almost ST"


def test_earliest_of_several_stop_strings_wins():
    det = Detokenizer(stops=("world", "lo w"))
    text, hit = feed_all(det, [b"hello world"])
    assert hit and text == "hel"


@pytest.mark.parametrize("char", ["é", "日", "🙂", "𝄞"])
def test_multibyte_character_split_byte_by_byte_is_never_emitted_broken(char):
    data = f"a{char}b".encode()
    det = Detokenizer()
    outs = [det.feed(bytes([b]))[0] for b in data]
    for out in outs:
        out.encode("utf-8")  # no lone surrogates or partial characters
        assert "\ufffd" not in out
    assert "".join(outs) + det.flush() == f"a{char}b"


def test_incomplete_utf8_at_end_becomes_a_replacement_character():
    det = Detokenizer()
    assert det.feed("🙂".encode()[:2])[0] == ""
    assert det.flush() == "\ufffd"


def test_stop_string_with_multibyte_characters_split_across_tokens():
    det = Detokenizer(stops=("。終",))
    pieces = [b"x", "。".encode()[:1], "。".encode()[1:] + "終".encode()[:2], "終".encode()[2:]]
    text, hit = feed_all(det, pieces)
    assert hit and text == "x"


def test_stop_matcher_without_stops_passes_everything_through():
    m = StopMatcher(())
    assert m.feed("abc") == ("abc", None)
    assert m.flush() == ""


def test_the_stop_string_hit_is_named() -> None:
    # The one that starts first wins; of two starting at the same place, the longer one.
    det = Detokenizer(stops=("world", "lo w"))
    assert det.feed(b"hello world") == ("hel", "lo w")
    det = Detokenizer(stops=("ab", "abc"))
    assert det.feed(b"xx") == ("xx", None)
    assert det.feed(b"abcd") == ("", "abc")
