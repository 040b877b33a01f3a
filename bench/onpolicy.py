"""On-policy rounds against more off-policy steps (`make bench-onpolicy`) -> bench/results/onpolicy.{json,md}

From the demo student, two arms of R rounds each, the same training steps per
round:
- `onpolicy`: the previous student writes completions of the training prompts
  (`kd student-samples`), the teacher scores them (`--mode score`), and the
  next student trains `--init-from` the previous one on them (`--alpha 1
  --onpolicy-weight 1`: top-k KL at the student's tokens + the reverse-KL term);
- `offpolicy`: the next student trains `--init-from` the previous one on the
  teacher's own samples (the demo labels, as the demo student was trained:
  `--alpha 0.5`).
After every round, each arm's student is measured on
- held-out prompts no run trains on (prompts `--heldout-from`.. of the prompt
  file; the demo labels cover the first 160): the teacher's mean NLL of the text
  the student writes for them, and the KL to the teacher on that text;
- the held-out split of the teacher's labels (`kd eval` default split and bound):
  KL to the teacher, top-1 agreement, NLL.
The teacher NLL of held-out text also comes as the mean over samples of each
sample's per-token NLL, with its standard error over the samples: what a
difference between two students must exceed to mean anything. A rerun reuses
every finished stage (samples, scores, trained rounds through `--resume`).

    python -m bench.onpolicy --from data/student/demo/model --teacher-labels data/labels/demo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

from bench.result_file import write_result
from pipeline.store.shard_reader import ShardReader
from pipeline.teacher.student_records import SAMPLES_NAME

TEACHER = "data/models/smollm2-135m-instruct"


def kd(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "stages.cli.main", *args], check=True)


def sample_and_score(model: str, prompts: Path, out: Path, args: argparse.Namespace,
                     seed: int) -> Path:
    """The model's completions of `prompts`, scored by the teacher; the score-mode output."""
    kd("student-samples", "--model", model, "--prompts", str(prompts), "--out", str(out / "samples"),
       "--max-tokens", str(args.max_tokens), "--seed", str(seed), "--enforce-eager", "--overwrite")
    kd("teacher-labels", "--mode", "score", "--teacher", args.teacher, "--prompts",
       str(out / "samples" / SAMPLES_NAME), "--out", str(out / "labels"), "--top-k", "20",
       "--enforce-eager", "--overwrite")
    return out / "labels"


def train(model: str, labels: str, out: Path, args: argparse.Namespace, *loss: str) -> str:
    kd("train-student", "--labels", labels, "--init-from", model, "--out", str(out), "--steps",
       str(args.steps), "--batch-tokens", str(args.batch_tokens), "--lr", str(args.lr),
       "--eval-every", "0", "--resume", *loss)
    return str(out / "model")


def measure(model: str, heldout: Path, work: Path, args: argparse.Namespace) -> dict:
    """Teacher NLL of the model's held-out text, and its KL on the teacher's held-out labels."""
    scored = sample_and_score(model, heldout, work, args, seed=0)
    kd("eval", "--all", "--labels", str(scored), "--model", f"m={model}", "--samples",
       f"m={scored}", "--output", str(work / "own_text.json"))
    own = json.loads((work / "own_text.json").read_text())["m"]
    per_sample = sample_means(scored)
    kd("eval", "--labels", args.teacher_labels, "--model", f"m={model}", "--output",
       str(work / "teacher_labels.json"))
    labels = json.loads((work / "teacher_labels.json").read_text())["m"]
    return {"teacher_nll_of_heldout_samples": own["teacher_nll_of_samples"],
            "teacher_nll_per_sample_mean": float(per_sample.mean()),
            "teacher_nll_per_sample_stderr": float(per_sample.std(ddof=1) / len(per_sample) ** 0.5),
            "own_nll_of_heldout_samples": own["student_nll_of_samples"],
            "kl_on_own_heldout_text": own["kl"], "sample_positions": own["sample_positions"],
            "kl_on_heldout_teacher_labels": labels["kl"],
            "top1_on_heldout_teacher_labels": labels["top1_agreement"],
            "nll_on_heldout_teacher_labels": labels["nll"], "label_positions": labels["positions"]}


def sample_means(scored: Path) -> np.ndarray:
    """Each held-out sample's mean teacher NLL per token: the spread says how much of a
    difference between students 32 samples can resolve."""
    means = []
    for shard in sorted(scored.glob("shard-*.h5")):
        reader = ShardReader(shard)
        means += [-float(np.mean(reader.sample(i)["sampled_logprobs"])) for i in range(len(reader))]
    return np.asarray(means)


def write_heldout(prompts: str, first: int, count: int, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(prompts) as fh:
        path.write_text("".join(islice(fh, first - 1, first - 1 + count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="start", default="data/student/demo/model")
    parser.add_argument("--teacher", default=TEACHER)
    parser.add_argument("--teacher-labels", default="data/labels/demo")
    parser.add_argument("--prompts", default="data/prompts/demo.jsonl")
    parser.add_argument("--train-prompts", type=int, default=48,
                        help="first N prompts the on-policy arm samples (the demo labels' prompts)")
    parser.add_argument("--heldout-from", type=int, default=241, help="first held-out prompt line")
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--work", default="data/onpolicy/bench")
    parser.add_argument("--out", default="bench/results/onpolicy")
    args = parser.parse_args()

    started, work = time.time(), Path(args.work)
    heldout = work / "heldout_prompts.jsonl"
    write_heldout(args.prompts, args.heldout_from, args.heldout, heldout)
    train_prompts = work / "train_prompts.jsonl"
    write_heldout(args.prompts, 1, args.train_prompts, train_prompts)
    rows = {"start": measure(args.start, heldout, work / "eval/start", args)}
    models = {"onpolicy": args.start, "offpolicy": args.start}
    for i in range(1, args.rounds + 1):
        labels = sample_and_score(models["onpolicy"], train_prompts, work / f"onpolicy/round-{i}",
                                  args, seed=i)
        models["onpolicy"] = train(models["onpolicy"], str(labels),
                                   work / f"onpolicy/round-{i}/student", args,
                                   "--alpha", "1", "--onpolicy-weight", "1")
        models["offpolicy"] = train(models["offpolicy"], args.teacher_labels,
                                    work / f"offpolicy/round-{i}/student", args, "--alpha", "0.5")
        for arm, model in models.items():
            rows[f"{arm}_round_{i}"] = measure(model, heldout, work / f"eval/{arm}-{i}", args)
    result = {"seconds": round(time.time() - started),
              "settings": {k: v for k, v in vars(args).items()}, "rows": rows}
    out = Path(args.out)
    write_result(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(table(rows, args))
    print(table(rows, args))


def table(rows: dict, args: argparse.Namespace) -> str:
    head = ("| student | teacher NLL of its held-out text | per-sample mean +- s.e. | "
            "KL on its held-out text | KL on held-out teacher labels | top-1 there | NLL there |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    body = "".join(f"| {name} | {r['teacher_nll_of_heldout_samples']:.3f} | "
                   f"{r['teacher_nll_per_sample_mean']:.2f} +- {r['teacher_nll_per_sample_stderr']:.2f} | "
                   f"{r['kl_on_own_heldout_text']:.3f} | {r['kl_on_heldout_teacher_labels']:.3f} | "
                   f"{r['top1_on_heldout_teacher_labels']:.3f} | "
                   f"{r['nll_on_heldout_teacher_labels']:.3f} |\n" for name, r in rows.items())
    return (f"# On-policy rounds against off-policy steps\n\nFrom {args.start}; {args.steps} "
            f"steps of {args.batch_tokens} tokens per round in both arms; held-out text: "
            f"{args.heldout} prompts from line {args.heldout_from}, {args.max_tokens} tokens. "
            "Lower is better in every column but top-1.\n\n" + head + body)


if __name__ == "__main__":
    main()
