from __future__ import annotations

from frozenlm.qa.pack import format_passages, pack


def words_fit(limit: int):
    return lambda context: len(context.split()) <= limit


def test_greedy_packing_stops_at_the_first_passage_that_does_not_fit() -> None:
    candidates = [(5, "a b c"), (2, "d e f g"), (9, "h"), (1, "i j")]
    # each passage costs its words + 1 ("Passage:")
    packed = pack(candidates, words_fit(9))
    assert packed.positions == (5, 2)
    assert packed.context == format_passages(["a b c", "d e f g"])
    assert not packed.cut
    assert pack(candidates, words_fit(100)).positions == (5, 2, 9, 1)
    assert pack(candidates, words_fit(100), max_passages=1).positions == (5,)


def test_when_no_passage_fits_whole_the_first_is_cut_to_the_longest_fitting_prefix() -> None:
    packed = pack([(3, "one two three four five six"), (4, "x")], words_fit(4))
    assert packed.positions == (3,)
    assert packed.cut
    assert packed.context == format_passages(["one two three"])


def test_nothing_fits_gives_an_empty_context() -> None:
    packed = pack([(3, "one two")], words_fit(0))
    assert packed.context == "" and packed.positions == ()
    assert pack([], words_fit(5)).positions == ()


def test_best_last_keeps_the_same_passages_and_puts_the_best_next_to_the_question() -> None:
    candidates = [(5, "a b c"), (2, "d e f g"), (9, "h"), (1, "i j")]
    first = pack(candidates, words_fit(9))
    last = pack(candidates, words_fit(9), best_last=True)
    assert last.positions == first.positions == (5, 2)  # ranking order, as packed
    assert last.context == "Passage: d e f g\nPassage: a b c\n"
    assert last.context == format_passages(["a b c", "d e f g"], best_last=True)
