"""The context demo's rule check: exact verdicts on written examples, and the rate's arithmetic."""

from __future__ import annotations

import math

import pytest

from pipeline.student.rule_check import (ENGLISH_WORDS, FRENCH_WORDS, RULES, RuleRate, follow_rate,
                                         is_french, language_votes, rule_check)


def test_the_word_lists_share_no_word():
    assert FRENCH_WORDS & ENGLISH_WORDS == set()


@pytest.mark.parametrize("text, french", [
    ("La capitale de l'Australie est Canberra.", True),
    ("15% de 80 est 12.", True),
    ("Les listes et les tuples sont des structures de données.", True),
    ("LE CIEL EST BLEU.", True),  # case does not matter
    ("The capital of Australia is Canberra.", False),
    ("To find 15% of 80, multiply 80 by 0.15.", False),
    ("", False),  # no word at all: not French
    ("42", False),
    ("Canberra.", False),  # a name alone carries no vote
    ("Le ciel is blue and the sea is green", False),  # 1 French (le) against 3 English votes
    ("Le ciel et la mer, the sky", True),  # 3 against 1
    ("le the", False),  # a tie is not French
])
def test_is_french(text, french):
    assert is_french(text) is french


def test_votes_count_whole_words_only():
    # "lesson", "theme", "detest" contain French/English words but are not them
    assert language_votes("lesson theme detest") == (0, 0)
    assert language_votes("l'hiver est là, the end") == (1, 1)


def test_rate_counts_what_the_check_passes():
    answers = ["a", "bb", "ccc", "dddd", "eeeee"]
    r = follow_rate(answers, lambda t: len(t) % 2 == 1)
    assert (r.followed, r.total, r.rate) == (3, 5, 0.6)
    assert r.stderr == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    assert r.to_json() == {"followed": 3, "total": 5, "rate": 0.6, "stderr": r.stderr}


def test_rate_of_no_answers_is_zero_not_an_error():
    r = follow_rate([], is_french)
    assert (r.followed, r.total, r.rate, r.stderr) == (0, 0, 0.0, 0.0)


def test_rate_edges_have_no_noise():
    assert RuleRate(4, 4).stderr == 0.0 and RuleRate(0, 4).stderr == 0.0


def test_rule_names():
    assert rule_check("french") is is_french and set(RULES) == {"french"}
    with pytest.raises(ValueError, match="--rule: unknown rule 'pirate' .known: french"):
        rule_check("pirate")
