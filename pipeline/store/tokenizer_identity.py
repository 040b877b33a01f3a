"""A tokenizer's identity in two parts: its vocabulary, and its list of special tokens.

Soft labels are indexed by token id, so what decides whether a student reads
the teacher's labels correctly is the vocabulary: the byte string of every id
(`vocab_fingerprint`). Which of those tokens a library version lists as
special (transformers 5.17's GGUF conversion leaves `<|im_end|>` out, 5.19
lists it) changes no id, so it has its own fingerprint
(`special_tokens_fingerprint`) and a difference there is a warning naming the
tokens, never a refusal. `compare_identity` applies both rules.

    >>> class Tok:
    ...     all_special_tokens = ["</s>"]
    ...     def __init__(self, vocab): self.vocab = vocab
    ...     def get_vocab(self): return self.vocab
    >>> a = identity_of(Tok({"a": 0, "</s>": 1}))
    >>> b = Tok({"a": 0, "</s>": 1}); b.all_special_tokens = []
    >>> compare_identity(a, None, b, "student")
    "warning: the student's tokenizer lists other special tokens than the labels' (missing: '</s>' (id 1)); token ids agree, so training goes on"
    >>> compare_identity(a, ["a", "</s>"], Tok({"b": 0, "</s>": 1}), "student")
    Traceback (most recent call last):
    ...
    pipeline.store.tokenizer_identity.VocabularyMismatch: tokenizer mismatch: the student's vocabulary differs from the labels' at id 0 ('a' in the labels, 'b' in the student); a student must share the teacher's vocabulary to learn from its token-level labels
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence


class VocabularyMismatch(ValueError):
    """The student's vocabulary maps some id to another token than the labels' does."""


@dataclass(frozen=True)
class TokenizerIdentity:
    """What the manifest (and every shard's root attributes) records of the teacher's tokenizer."""

    vocab_fingerprint: str
    """sha256 of every id's token bytes in id order: equal means every label id means the same."""
    special_tokens_fingerprint: str
    """sha256 of the sorted (special token, id) pairs the tokenizer lists."""
    special_tokens: tuple[tuple[str, int | None], ...] = ()
    """The pairs themselves, so a difference can be named."""


def vocabulary(tokenizer: Any) -> list[str]:
    """Token string of every id 0..max id ("" for an id no token has)."""
    vocab = tokenizer.get_vocab()
    tokens = [""] * (max(vocab.values(), default=-1) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    return tokens


def vocab_fingerprint_of(tokens: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for token in tokens:
        data = token.encode("utf-8")
        # Length-prefixed, so no two vocabularies hash the same concatenation.
        digest.update(len(data).to_bytes(4, "big") + data)
    return digest.hexdigest()


def special_tokens(tokenizer: Any) -> tuple[tuple[str, int | None], ...]:
    vocab = tokenizer.get_vocab()
    names = sorted(set(getattr(tokenizer, "all_special_tokens", []) or []))
    return tuple((t, vocab.get(t)) for t in names)


def identity_of(tokenizer: Any) -> TokenizerIdentity:
    specials = special_tokens(tokenizer)
    special_hash = hashlib.sha256(json.dumps(specials, ensure_ascii=False).encode("utf-8"))
    return TokenizerIdentity(vocab_fingerprint_of(vocabulary(tokenizer)), special_hash.hexdigest(),
                             specials)


def first_differing_ids(stored: Sequence[str], mine: Sequence[str], source: str,
                        limit: int = 3) -> str:
    """The first `limit` ids whose tokens differ, as text."""
    ids = [i for i in range(max(len(stored), len(mine)))
           if (stored[i] if i < len(stored) else None) != (mine[i] if i < len(mine) else None)]
    named = ", ".join(
        f"id {i} ({stored[i] if i < len(stored) else None!r} in the labels, "
        f"{mine[i] if i < len(mine) else None!r} in the {source})" for i in ids[:limit])
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"at {named}{more}"


def special_difference(stored: Sequence[Sequence[Any]], mine: Sequence[Sequence[Any]]) -> str:
    """Which special tokens one list has and the other lacks, as text."""
    stored_set, mine_set = {tuple(p) for p in stored}, {tuple(p) for p in mine}
    parts = []
    for label, pairs in (("missing", stored_set - mine_set), ("added", mine_set - stored_set)):
        if pairs:
            parts.append(f"{label}: " + ", ".join(f"{t!r} (id {i})" for t, i in sorted(pairs)))
    return "; ".join(parts)


def compare_identity(stored: TokenizerIdentity,
                     stored_vocab: Sequence[str] | Callable[[], Sequence[str] | None] | None,
                     tokenizer: Any, source: str) -> str | None:
    """Raise VocabularyMismatch if the vocabularies differ (naming the first differing ids when
    the labels' vocabulary is at hand: a list, or a function that loads it only then); a
    warning naming the special tokens if only those differ; None if both agree."""
    mine = identity_of(tokenizer)
    if mine.vocab_fingerprint != stored.vocab_fingerprint:
        if callable(stored_vocab):
            stored_vocab = stored_vocab()
        where = (first_differing_ids(stored_vocab, vocabulary(tokenizer), source)
                 if stored_vocab is not None else
                 f"(fingerprint {mine.vocab_fingerprint[:16]}..., the labels' "
                 f"{stored.vocab_fingerprint[:16]}...)")
        raise VocabularyMismatch(
            f"tokenizer mismatch: the {source}'s vocabulary differs from the labels' {where}; a "
            "student must share the teacher's vocabulary to learn from its token-level labels")
    if mine.special_tokens_fingerprint == stored.special_tokens_fingerprint:
        return None
    return (f"warning: the {source}'s tokenizer lists other special tokens than the labels' "
            f"({special_difference(stored.special_tokens, mine.special_tokens)}); token ids "
            "agree, so training goes on")
