"""Does an answer follow the context demo's rule? A deterministic check, and the rate over answers.

The context demo (`make context-demo`, docs/teacher-context.md) gives the teacher
a system prompt holding a rule the student never sees, "answer in French", and
asks how often a student trained on the labels made behind it follows the rule
without being told. `is_french` is the judge: an answer is French when it holds
more French function words than English ones (and at least one). Function words,
not vocabulary, because they occur in every sentence of either language, are
never names or numbers, and the two lists share no word ("a", "on", "en" and the
like, common to both, are left out). `RULES` names the checks a command line may
ask for; `follow_rate` counts the answers a check passes.

    >>> from pipeline.student.rule_check import follow_rate, is_french
    >>> is_french("La capitale de l'Australie est Canberra."), is_french("The capital is Canberra.")
    (True, False)
    >>> r = follow_rate(["Le ciel est bleu.", "The sky is blue.", "42"], is_french)
    >>> r.followed, r.total, round(r.rate, 3)
    (1, 3, 0.333)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable

# Words frequent in any French or English sentence, and in one language only.
FRENCH_WORDS = frozenset(
    "le la les des du de est et un une au aux avec pour dans sur qui que ne pas sont il elle "
    "nous vous ce cette ces se sa son ses leur plus mais ou où comme être été très je tu".split())
ENGLISH_WORDS = frozenset(
    "the is and of to in that it for are with as be this was by from or not you your can "
    "which have has will they their what how".split())

_WORD = re.compile(r"[a-zà-ÿœæ]+")

Check = Callable[[str], bool]


def language_votes(text: str) -> tuple[int, int]:
    """(French function words, English function words) among the words of `text`, lower-cased."""
    words = _WORD.findall(text.lower())
    return sum(w in FRENCH_WORDS for w in words), sum(w in ENGLISH_WORDS for w in words)


def is_french(text: str) -> bool:
    """More French function words than English ones, and at least one."""
    french, english = language_votes(text)
    return french > english


RULES: dict[str, Check] = {"french": is_french}
"""Rule name (the command-line choice) -> its check."""


@dataclass(frozen=True)
class RuleRate:
    """How many of `total` answers followed the rule."""

    followed: int
    total: int

    @property
    def rate(self) -> float:
        return self.followed / self.total if self.total else 0.0

    @property
    def stderr(self) -> float:
        """Binomial standard error of `rate` (the noise of one run over `total` prompts)."""
        return math.sqrt(self.rate * (1 - self.rate) / self.total) if self.total else 0.0

    def to_json(self) -> dict[str, float | int]:
        return {"followed": self.followed, "total": self.total, "rate": self.rate,
                "stderr": self.stderr}


def follow_rate(answers: Iterable[str], check: Check) -> RuleRate:
    """The answers `check` passes, out of all of them."""
    verdicts = [bool(check(a)) for a in answers]
    return RuleRate(followed=sum(verdicts), total=len(verdicts))


def rule_check(name: str) -> Check:
    """The check registered as `name`; a ValueError naming the known rules otherwise."""
    if name not in RULES:
        raise ValueError(f"--rule: unknown rule {name!r} (known: {', '.join(sorted(RULES))})")
    return RULES[name]
