"""The teacher's Hugging Face tokenizer as score mode's `ScoreTokenizer`.

Chats render through the tokenizer's chat template; a base model without one
gets the same plain join generate mode uses (contents separated by a blank
line). Token start offsets come from a fast tokenizer's offset mapping.

    python -c "from transformers import AutoTokenizer; \
from stages.teacher.score_tokenizer import HfScoreTokenizer; \
t = HfScoreTokenizer(AutoTokenizer.from_pretrained('data/models/smollm2-135m-instruct')); \
print(t.encode('Hello world', add_special_tokens=True))"
"""

from __future__ import annotations

from typing import Any

from pipeline.store.fingerprint import tokenizer_fingerprint
from pipeline.teacher.prompts import Messages
from pipeline.teacher.text_layouts import TokenBytes

PLAIN_SEPARATOR = "\n\n"
"""Between messages when the tokenizer has no chat template (as in generate mode)."""


class HfScoreTokenizer:
    """render + encode over a transformers tokenizer."""

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("--mode score needs a fast tokenizer (offset mappings locate the "
                             "assistant turns); this teacher's tokenizer is a slow one")
        self.tokenizer = tokenizer
        self.fingerprint = tokenizer_fingerprint(tokenizer)
        self.token_bytes = TokenBytes.of(tokenizer)

    def render(self, messages: Messages, add_generation_prompt: bool) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        text = PLAIN_SEPARATOR.join(m["content"] for m in messages)
        return text + PLAIN_SEPARATOR if add_generation_prompt and messages else text

    def encode(self, text: str, add_special_tokens: bool) -> tuple[list[int], list[int]]:
        enc = self.tokenizer(text, add_special_tokens=add_special_tokens,
                             return_offsets_mapping=True)
        return list(enc["input_ids"]), [start for start, _ in enc["offset_mapping"]]
