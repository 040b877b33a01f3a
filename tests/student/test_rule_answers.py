"""The context demo's evaluation wiring on the tiny random student (no vLLM, seconds on a CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.student.rule_check import follow_rate, is_french
from stages.student import rule_answers
from tests.conftest import MIXED_PROMPTS, require_teacher, save_tiny_student

CONTEXT = "Tu es un assistant francophone. Tu réponds uniquement en français."
HELDOUT = "data/prompts/context_heldout.jsonl"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require_teacher()
    return save_tiny_student(tmp_path_factory.mktemp("tiny") / "student")


def one_by_one(model_dir, chats, max_new_tokens):
    """Independent oracle: argmax decoding of each chat alone (no padding, no generate())."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = []
    for chat in chats:
        ids = tok(tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                  add_special_tokens=False, return_tensors="pt").input_ids
        new = []
        with torch.no_grad():
            for _ in range(max_new_tokens):
                nxt = int(model(ids).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        answers.append(tok.decode(new, skip_special_tokens=True))
    return answers


def test_batched_greedy_answers_equal_one_by_one_decoding(tiny):
    chats = rule_answers.prompt_chats(HELDOUT, limit=5)
    # batches of 2 and 3 rows padded on the left to different lengths
    assert rule_answers.greedy_answers(str(tiny), chats, 6, batch_size=2) == \
        one_by_one(tiny, chats, 6)


def test_prompt_views():
    chats = rule_answers.prompt_chats(HELDOUT, limit=3)
    first = json.loads(open(HELDOUT).readline())["prompt"]
    assert len(chats) == 3 and chats[0] == [{"role": "user", "content": first}]
    assert len(rule_answers.prompt_chats(MIXED_PROMPTS, limit=3)) == 3
    with pytest.raises(SystemExit, match=f"--prompts {MIXED_PROMPTS}: line 4: malformed_json: "):
        rule_answers.prompt_chats(MIXED_PROMPTS, limit=None)


def test_rates_views_and_output_file(tiny, tmp_path, monkeypatch, capsys):
    seen = {}

    def answers(model_dir, chats, max_new_tokens):
        seen[model_dir] = chats
        # a French answer for chats behind a system turn, English otherwise
        return ["Le ciel est bleu." if c[0]["role"] == "system" else "The sky is blue."
                for c in chats]

    monkeypatch.setattr(rule_answers, "greedy_answers", answers)
    out = tmp_path / "rates.json"
    rule_answers.main(["--prompts", HELDOUT, "--rule", "french", "--limit", "4",
                       "--teacher-system-prompt", CONTEXT, "--model", "plain=a",
                       "--context-model", "behind=b", "--output", str(out)])
    result = json.loads(out.read_text())
    assert seen["b"] == [[{"role": "system", "content": CONTEXT}, *c] for c in seen["a"]]
    plain, behind = result["models"]["plain"], result["models"]["behind"]
    assert (plain["view"], plain["followed"], plain["total"]) == ("student", 0, 4)
    assert (behind["view"], behind["followed"], behind["rate"]) == ("teacher", 4, 1.0)
    assert behind["rate"] == follow_rate(behind["answers"], is_french).rate
    assert "| behind | teacher | 4/4 | 1.00 ± 0.00 |" in capsys.readouterr().out


def test_real_answers_are_judged(tiny, tmp_path):
    out = tmp_path / "rates.json"
    rule_answers.main(["--prompts", HELDOUT, "--rule", "french", "--limit", "3",
                       "--max-new-tokens", "4", "--model", f"tiny={tiny}", "--output", str(out)])
    tiny_run = json.loads(out.read_text())["models"]["tiny"]
    assert tiny_run["total"] == 3 and len(tiny_run["answers"]) == 3
    assert tiny_run["followed"] == sum(map(is_french, tiny_run["answers"]))


@pytest.mark.parametrize("argv, message", [
    (["--model", "nodir"], "--model: expected NAME=DIR"),
    (["--context-model", "x=y"], "--context-model needs --teacher-system-prompt"),
    ([], "give at least one --model or --context-model"),
])
def test_bad_flags_name_themselves(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        rule_answers.main(["--prompts", HELDOUT, "--rule", "french", "--output",
                           str(tmp_path / "o.json"), *argv])
