"""Greedy answers of models to held-out prompts, and the share that follows a rule (`make context-demo`).

Each `--model NAME=DIR` answers every prompt of `--prompts` as the student sees
it (the prompt alone, the chat template's own default system turn included);
each `--context-model NAME=DIR` answers behind `--teacher-system-prompt` as the
teacher saw it when labelling (the same `with_teacher_system` view). Decoding is
greedy (transformers, float32), so a rate depends on the model and the prompts
only. The `--rule` check (pipeline/student/rule_check.py) judges every answer;
the output JSON holds each model's rate, its binomial standard error and its
answers, and a table is printed.

    python -m stages.student.rule_answers --prompts data/prompts/context_heldout.jsonl \\
        --rule french --limit 8 --max-new-tokens 16 \\
        --teacher-system-prompt "Tu es un assistant francophone. Tu réponds uniquement en français." \\
        --model "teacher=data/models/smollm2-135m-instruct" \\
        --context-model "teacher behind the context=data/models/smollm2-135m-instruct" \\
        --output /tmp/rule_rates.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from pipeline.student.rule_check import RULES, follow_rate, rule_check
from pipeline.teacher.prompts import (Messages, RecordError, iter_records, messages_of,
                                     with_teacher_system)
from stages.cli.engine_logs import quiet_library_loggers


def prompt_chats(path: str | Path, limit: int | None) -> list[Messages]:
    """The student's view of the first `limit` prompts of `path` (all with None); a bad record
    stops the evaluation with a one-line error naming the file and the line (an evaluation
    over fewer prompts than asked would not compare with another)."""
    chats = []
    for line, record in iter_records(path):
        if limit is not None and len(chats) == limit:
            break
        try:
            chats.append(messages_of(record, None)[1])
        except RecordError as exc:
            raise SystemExit(f"--prompts {path}: line {line}: {exc.reason}: {exc}") from None
    return chats


@torch.no_grad()
def greedy_answers(model_dir: str, chats: list[Messages], max_new_tokens: int,
                   batch_size: int = 16) -> list[str]:
    """Each chat's greedy continuation by the model in `model_dir`, special tokens dropped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # generation continues every row from its last column
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
             for c in chats]
    answers = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        answers += tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return answers


def named(spec: str, flag: str) -> tuple[str, str]:
    """`NAME=DIR` -> (NAME, DIR); a one-line error naming the flag otherwise."""
    name, sep, path = spec.rpartition("=")  # a name may hold "=" (the Makefile's rows do), a path not
    if not sep or not name or not path:
        raise SystemExit(f"{flag}: expected NAME=DIR, got {spec!r}")
    return name, path


def rule_rates(args: argparse.Namespace) -> dict[str, Any]:
    """Every model's rate (student's view for --model, teacher's for --context-model)."""
    check = rule_check(args.rule)
    student = prompt_chats(args.prompts, args.limit)
    teacher = [with_teacher_system(c, args.teacher_system_prompt) for c in student] \
        if args.teacher_system_prompt else None
    runs = [(*named(s, "--model"), "student", student) for s in args.model]
    if args.context_model and teacher is None:
        raise SystemExit("--context-model needs --teacher-system-prompt")
    runs += [(*named(s, "--context-model"), "teacher", teacher) for s in args.context_model]
    models = {}
    for name, path, view, chats in runs:
        answers = greedy_answers(path, chats, args.max_new_tokens)
        models[name] = {"model": path, "view": view, **follow_rate(answers, check).to_json(),
                        "answers": answers}
    return {"rule": args.rule, "prompts": str(args.prompts), "limit": args.limit,
            "teacher_system_prompt": args.teacher_system_prompt,
            "max_new_tokens": args.max_new_tokens, "models": models}


def table(result: dict[str, Any]) -> str:
    """The rates as a Markdown table."""
    rows = [f"| {name} | {m['view']} | {m['followed']}/{m['total']} | {m['rate']:.2f} "
            f"± {m['stderr']:.2f} |" for name, m in result["models"].items()]
    return "\n".join([f"Held-out answers following the rule `{result['rule']}`:", "",
                      "| model | view | followed | rate ± s.e. |", "|---|---|---|---|", *rows])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", required=True, help="held-out prompt file (JSONL or Parquet)")
    p.add_argument("--rule", required=True, choices=sorted(RULES), help="the rule's check")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="a model answering the student's view (repeatable)")
    p.add_argument("--context-model", action="append", default=[], metavar="NAME=DIR",
                   help="a model answering behind --teacher-system-prompt (repeatable)")
    p.add_argument("--teacher-system-prompt", default=None, help="the teacher's context")
    p.add_argument("--limit", type=int, default=None, help="the first N prompts only")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per answer")
    p.add_argument("--output", required=True, help="JSON file to write")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if not args.model and not args.context_model:
        raise SystemExit("give at least one --model or --context-model")
    quiet_library_loggers()  # as kd does: torchao's warnings (imported by transformers) are not ours
    result = rule_rates(args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
