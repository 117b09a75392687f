"""SequenceText: stop strings are never streamed, partial matches are held back, UTF-8 is whole."""

from __future__ import annotations

from modelyard.engine.generation.stopping import SequenceText


class CharTokenizer:
    """Token id i is the i-th byte of a small table; ids decode as UTF-8 bytes."""

    table = [b"x", b"a", b"b", b"c", "é".encode()[:1], "é".encode()[1:], b"<eos>"]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        raw = b"".join(self.table[i] for i in ids if not (skip_special_tokens and i == 6))
        return raw.decode("utf-8", errors="replace")


def seq(stop: tuple[str, ...] = (), stop_ids: tuple[tuple[int, ...], ...] = ()) -> SequenceText:
    return SequenceText(
        tokenizer=CharTokenizer(), prompt_ids=[0], stop_strings=stop,
        stop_token_sequences=stop_ids, eos_token_ids=frozenset({6}),
    )


def run(s: SequenceText, tokens: list[int], last: int | None = None) -> list[tuple[str, str | None]]:
    return [s.add(t, length_exhausted=(i == last)) for i, t in enumerate(tokens)]


def test_partial_stop_is_held_back_then_released_or_cut() -> None:
    assert run(seq(("ab",)), [0, 1, 2]) == [("x", None), ("", None), ("", "stop")]
    assert run(seq(("ab",)), [0, 1, 3]) == [("x", None), ("", None), ("ac", None)]
    # a held-back prefix is flushed when the length runs out
    assert run(seq(("ab",)), [0, 1], last=1) == [("x", None), ("a", "length")]


def test_incomplete_utf8_waits_for_its_second_byte() -> None:
    assert run(seq(), [4, 5, 0]) == [("", None), ("é", None), ("x", None)]


def test_eos_and_stop_token_sequences() -> None:
    s = seq(("zz",))
    assert run(s, [0, 1, 6]) == [("x", None), ("a", None), ("", "stop")]
    assert s.generated == [0, 1, 6]
    assert run(seq(stop_ids=((1, 2),)), [0, 1, 2]) == [("x", None), ("a", None), ("", "stop")]


def test_without_a_tokenizer_only_ids_count() -> None:
    s = SequenceText(
        tokenizer=None, prompt_ids=[1], stop_strings=(), stop_token_sequences=((3,),),
        eos_token_ids=frozenset(),
    )
    assert s.add(2, length_exhausted=False) == ("", None)
    assert s.add(3, length_exhausted=False) == ("", "stop")
