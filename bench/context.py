"""Does the student learn the teacher's hidden rule? `make context-demo` over seeds -> bench/results/context.json

Per seed s, `make context-demo CONTEXT_SEED=s` in its own directory: the teacher
samples completions of the training prompts behind the rule's system prompt and
without it (sampling seed s), the same student trains on each set (training seed
s), and both students answer the held-out prompts greedily in the student's view.
Recorded per run: each student's rule-following rate, and the share of the
teacher's sampled training completions that follow the rule (what each student
was shown). Once (greedy decoding does not depend on a seed): the teacher's own
rate on the held-out prompts with and without the context; without it, that is
also the self-distilled student's rate before training. The spread over seeds,
next to each rate's binomial standard error, says how noisy the effect is.

    python -m bench.context --seeds 0 1 2            # ~20 minutes a seed on 2 busy shared cores
    python -m bench.context --seeds 0 --steps 4 --limit 16 --heldout-limit 8 --out /tmp/c.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.result_file import write_result
from pipeline.store.shard_reader import ShardReader
from pipeline.student.rule_check import follow_rate, rule_check

TEACHER = "data/models/smollm2-135m-instruct"
ARMS = ("with-context", "without")


def make(target: str, **variables: Any) -> None:
    """`make target VAR=value ...`, the stages run by this checkout's code (not an installed kd);
    the environment is taken as set up (`make bench-context` did), never rebuilt from here."""
    assignments = [f"{k}={v}" for k, v in variables.items()]
    subprocess.run(["make", "--no-print-directory", "--old-file=.venv/.installed", target,
                    f"KD={sys.executable} -m stages.cli.main", f"PY={sys.executable}",
                    *assignments], check=True)


def stored_completions(labels: Path) -> list[str]:
    """The completions the teacher sampled into a generate-mode output, decoded."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(labels / "tokenizer")
    texts = []
    for shard in sorted(labels.glob("shard-*.h5")):
        reader = ShardReader(shard)
        for i in range(len(reader)):
            s = reader.sample(i)
            texts.append(tokenizer.decode(s["token_ids"][s["prompt_length"]:],
                                          skip_special_tokens=True))
    return texts


def demo_variables(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    """The Makefile variables of one seed's demo run."""
    # CONTEXT_EVAL_ARGS empty: the teacher's greedy rates do not depend on the seed, so
    # `teacher_rates` measures them once
    variables = {"CONTEXT_SEED": seed, "CONTEXT_DIR": work, "CONTEXT_STEPS": args.steps,
                 "CONTEXT_LR": args.lr, "CONTEXT_MAX_TOKENS": args.max_tokens,
                 "CONTEXT_RULE": args.context, "CONTEXT_CHECK": args.rule,
                 "CONTEXT_PROMPTS": args.prompts, "CONTEXT_HELDOUT": args.heldout,
                 "CONTEXT_HELDOUT_LIMIT": args.heldout_limit or "", "CONTEXT_EVAL_ARGS": ""}
    if args.limit:
        variables["CONTEXT_TEACHER_ARGS"] = f"--enforce-eager --limit {args.limit}"
    return variables


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One `make context-demo` run: each student's held-out rate, each label set's rate."""
    work = Path(args.work) / f"seed-{seed}"
    started = time.time()
    reused = args.reuse and (work / "rule_rates.json").is_file()
    if not reused:
        make("context-demo", **demo_variables(args, seed, work))
    rates = json.loads((work / "rule_rates.json").read_text())["models"]
    check = rule_check(args.rule)
    students = {arm: rates[name] for arm, name in zip(ARMS, (
        "student from labels behind the context", "student from labels without it"))}
    return {"seed": seed, "seconds": None if reused else round(time.time() - started),
            "student": {arm: {k: m[k] for k in ("followed", "total", "rate", "stderr")}
                        for arm, m in students.items()},
            "labels": {arm: follow_rate(stored_completions(work / f"labels-{arm}"), check).to_json()
                       for arm in ARMS},
            "example_answers": {arm: m["answers"][:args.examples] for arm, m in students.items()}}


def teacher_rates(args: argparse.Namespace) -> dict[str, Any]:
    """The teacher's greedy held-out rate behind the context and without it."""
    out = Path(args.work) / "teacher_rates.json"
    if not (args.reuse and out.is_file()):
        subprocess.run([sys.executable, "-m", "stages.student.rule_answers", "--prompts", args.heldout,
                        "--rule", args.rule, "--teacher-system-prompt", args.context,
                        "--max-new-tokens", str(args.max_tokens), "--context-model",
                        f"with-context={TEACHER}", "--model", f"without={TEACHER}",
                        *(["--limit", str(args.heldout_limit)] if args.heldout_limit else []),
                        "--output", str(out)], check=True)
    models = json.loads(out.read_text())["models"]
    return {arm: {k: models[arm][k] for k in ("followed", "total", "rate", "stderr")}
            for arm in ARMS}


def summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per student arm and for their difference: mean, min, max and (2+ seeds) sample std."""
    series = {arm: [r["student"][arm]["rate"] for r in runs] for arm in ARMS}
    series["difference"] = [a - b for a, b in zip(series[ARMS[0]], series[ARMS[1]])]
    return {name: {"mean": statistics.fmean(v), "min": min(v), "max": max(v),
                   "std": statistics.stdev(v) if len(v) > 1 else 0.0}
            for name, v in series.items()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--limit", type=int, default=0, help="training prompts (0: all)")
    p.add_argument("--heldout-limit", type=int, default=40, help="held-out prompts (0: all)")
    p.add_argument("--examples", type=int, default=3, help="answers kept per student and seed")
    p.add_argument("--rule", default="french")
    p.add_argument("--context", default="Tu es un assistant francophone. Tu réponds uniquement "
                                        "en français.", help="the teacher's system prompt")
    p.add_argument("--prompts", default="data/prompts/context_demo.jsonl")
    p.add_argument("--heldout", default="data/prompts/context_heldout.jsonl")
    p.add_argument("--work", default="data/context-bench")
    p.add_argument("--out", default="bench/results/context.json")
    p.add_argument("--reuse", action="store_true",
                   help="take a seed whose directory holds rule_rates.json, and the teacher's "
                        "rates if written, as finished (a rerun with the same settings after an "
                        "interruption); such a seed's seconds: null")
    return p


def main() -> None:
    args = parser().parse_args()
    started = time.time()
    runs = [one_seed(args, seed) for seed in args.seeds]
    result = {"seconds": round(time.time() - started), "settings": vars(args),
              "teacher_greedy": teacher_rates(args), "runs": runs, "summary": summary(runs)}
    write_result(args.out, result)
    print(json.dumps({"teacher_greedy": result["teacher_greedy"], "summary": result["summary"]},
                     indent=1))


if __name__ == "__main__":
    main()
