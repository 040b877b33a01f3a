"""Does a two-teacher ensemble help? (`make bench-ensemble`) -> bench/results/ensemble.json

Teacher A is the embedded teacher (data/models/smollm2-135m-instruct). Teacher B
is derived from it here, never downloaded: A fine-tuned for --ft-steps steps
(AdamW, --ft-lr, packed sequences of 256 tokens, embeddings frozen) on shipped
corpus documents that no label set below contains (train.jsonl after the first
--train-docs). B is a fair stand-in for a second teacher of the same tokenizer:
same vocabulary and chat template, its weights really moved (the JSON reports
how far its labels are from A's), and it is what an ensemble usually pairs with
a general model, a sibling adapted to the domain of the text.

Both teachers score the same text (`kd teacher-labels --mode score`, eager,
k = 20): the first --train-docs documents of data/corpus/train.jsonl for
training and all of data/corpus/heldout.jsonl for evaluation. `kd merge-labels`
mixes each pair with --weights (rule `mean`). Reported:

(a) per labelled position, the merged labels against each source and A against
    B: top-1 agreement and mean KL(P || Q) over the whole vocabulary with each
    stored tail spread uniformly (`pipeline.store.label_agreement`);
(b) three students, same recipe as the demo's (from-teacher, --keep-layers 10,
    same steps, batch, seed; always derived from teacher A's weights), trained on
    the mixture, on A alone and on B alone, plus the mixture's with the next seed
    (how far apart the seed alone puts two students), then `kd eval --all` on
    the held-out labels of the mixture, of A and of B.

Reruns reuse teacher B and the label sets when they are complete (the teacher
stage resumes a complete output by generating nothing).

    python -m bench.ensemble --train-docs 48 --steps 30     # 25-45 minutes on 2 shared CPU cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.result_file import write_result
from pipeline.store.label_agreement import output_agreement

TEACHER_A = "data/models/smollm2-135m-instruct"
SOURCES = ("a", "b")
STUDENTS = {"mixture": "mix", "teacher A alone": "a", "teacher B alone": "b"}
SAME_RUN = ("labels", "teacher", "keep_layers", "steps", "batch_tokens", "lr", "alpha", "seed")
"""Config fields of a finished student that must match for a rerun to reuse it."""


def kd(*args: str) -> float:
    """Run one kd command; its wall-clock seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stages.cli.main", *args], check=True)
    return time.perf_counter() - start


def corpus_texts(path: str, first: int, count: int) -> list[str]:
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r["text"] for r in records[first:first + count] if "text" in r]


def derive_teacher_b(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune teacher A on unlabelled corpus documents; save it as an HF directory."""
    done = out / "derivation.json"
    if done.exists():
        return json.loads(done.read_text())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(TEACHER_A)
    model = AutoModelForCausalLM.from_pretrained(TEACHER_A, dtype=torch.float32)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied with the LM head
    texts = corpus_texts("data/corpus/train.jsonl", args.train_docs, args.ft_docs)
    stream = [t for text in texts for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    seq, batch = 256, 2
    needed = args.ft_steps * batch * seq
    if len(stream) < needed:
        raise SystemExit(f"--ft-docs {args.ft_docs}: {len(stream)} tokens, {needed} needed")
    data = torch.tensor(stream[:needed]).view(args.ft_steps, batch, seq)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.ft_lr)
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(args.ft_steps):
        loss = model(input_ids=data[step], labels=data[step]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
        print(f"teacher B step {step + 1}/{args.ft_steps}: loss {losses[-1]:.3f}", flush=True)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"from": TEACHER_A, "steps": args.ft_steps, "lr": args.ft_lr, "batch": batch,
            "seq_len": seq, "tokens": needed, "documents": len(texts),
            "documents_from": f"data/corpus/train.jsonl records {args.train_docs}.."
                              f"{args.train_docs + args.ft_docs - 1} (none of them labelled)",
            "frozen": "token embeddings (tied with the LM head)", "train_losses": losses,
            "seconds": time.perf_counter() - start}
    done.write_text(json.dumps(info, indent=1) + "\n")
    return info


def score(teacher: str, prompts: str, out: Path, limit: int | None) -> float:
    extra = ["--limit", str(limit)] if limit else []
    return kd("teacher-labels", "--mode", "score", "--teacher", teacher, "--prompts", prompts,
              "--out", str(out), "--enforce-eager", "--top-k", "20", "--max-model-len", "1024",
              "--window-overlap", "128", "--shard-size", "16", *extra)


def merge(labels: Path, split: str, weights: str) -> float:
    out = labels / f"mix-{split}"
    shutil.rmtree(out, ignore_errors=True)
    return kd("merge-labels", "--labels", str(labels / f"a-{split}"), "--labels",
              str(labels / f"b-{split}"), "--weights", weights, "--out", str(out))


def train(labels: Path, out: Path, args: argparse.Namespace, seed: int) -> float:
    """Train one student (0 s: reused, a finished run with the same settings is there)."""
    args_seen = {"labels": [str(labels)], "teacher": TEACHER_A, "keep_layers": 10,
                 "steps": args.steps, "batch_tokens": args.batch_tokens, "lr": 2e-4,
                 "alpha": 0.5, "seed": seed}
    report = out / "report.json"
    if report.exists() and (out / "model").is_dir():
        config = json.loads(report.read_text())["config"]
        if all(config.get(k) == v for k, v in args_seen.items()):
            return 0.0
    return kd("train-student", "--labels", str(labels), "--student", "from-teacher", "--teacher",
              TEACHER_A, "--keep-layers", "10", "--out", str(out), "--steps", str(args.steps),
              "--batch-tokens", str(args.batch_tokens), "--lr", "2e-4", "--alpha", "0.5",
              "--eval-every", str(args.steps), "--seed", str(seed), "--overwrite")


def evaluate(labels: Path, models: dict[str, str], out: Path) -> dict[str, dict[str, float]]:
    kd("eval", "--all", "--labels", str(labels), "--keep-layers", "10",
       *[a for name, spec in models.items() for a in ("--model", f"{name}={spec}")],
       "--output", str(out))
    return json.loads(out.read_text())


def agreement_table(labels: Path) -> dict[str, dict[str, dict[str, float]]]:
    pairs = {"merged vs A": ("mix", "a"), "merged vs B": ("mix", "b"), "A vs B": ("a", "b")}
    return {split: {name: output_agreement(labels / f"{p}-{split}", labels / f"{q}-{split}")
                    for name, (p, q) in pairs.items()}
            for split in ("train", "heldout")}


def format_report(result: dict[str, Any]) -> str:
    lines = ["Per-position agreement of labels P and Q (top-1: the same most likely id; "
             "KL(P || Q) in nats, mean over the positions where it is finite):",
             "| labels | P vs Q | top-1 agreement | mean KL(P || Q) | positions | infinite KL |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for split, rows in result["agreement"].items():
        lines += [f"| {split} | {pair} | {r['top1_agreement']:.4f} | {r['kl']:.4f} | "
                  f"{r['positions']} | {r['infinite_kl_positions']} |" for pair, r in rows.items()]
    evals = result["eval"]
    lines += ["", "Held-out KL of each student to each label set (kd eval --all on the held-out "
              "documents and chats; lower is better), its top-1 agreement with the mixture and "
              "its NLL of the held-out text:",
              "| model | KL to mixture | KL to A | KL to B | top-1 vs mixture | NLL |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, m in evals["mixture"].items():
        if name == "teacher":
            continue
        row = [evals[ref].get(name, {}).get("kl") for ref in ("mixture", "a", "b")]
        cells = " | ".join("-" if v is None else f"{v:.4f}" for v in row)
        lines.append(f"| {name} | {cells} | {m['top1_agreement']:.4f} | {m['nll']:.4f} |")
    lines.append("\nThe labels' own NLL of the held-out text: mixture "
                 + ", A ".join(f"{evals[r]['teacher']['nll']:.4f}" for r in ("mixture", "a"))
                 + f", B {evals['b']['teacher']['nll']:.4f}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="data/bench/ensemble")
    parser.add_argument("--train-docs", type=int, default=48)
    parser.add_argument("--ft-docs", type=int, default=96, help="documents B is tuned on")
    parser.add_argument("--ft-steps", type=int, default=20)
    parser.add_argument("--ft-lr", type=float, default=2e-4)
    parser.add_argument("--weights", default="0.5,0.5")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="bench/results/ensemble.json")
    args = parser.parse_args()

    work = Path(args.work)
    labels, students = work / "labels", work / "students"
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    teacher_b = work / "teacher-b"
    derivation = derive_teacher_b(teacher_b, args)
    seconds["derive_teacher_b"] = time.perf_counter() - start
    teachers = {"a": TEACHER_A, "b": str(teacher_b)}
    for src in SOURCES:
        seconds[f"score_{src}_train"] = score(teachers[src], "data/corpus/train.jsonl",
                                              labels / f"{src}-train", args.train_docs)
        seconds[f"score_{src}_heldout"] = score(teachers[src], "data/corpus/heldout.jsonl",
                                                labels / f"{src}-heldout", None)
    for split in ("train", "heldout"):
        seconds[f"merge_{split}"] = merge(labels, split, args.weights)
    agreement = agreement_table(labels)
    for name, src in STUDENTS.items():
        seconds[f"train_{src}"] = train(labels / f"{src}-train", students / src, args, args.seed)
    # the same mixture run with the next seed: how far apart seeds alone put two students
    seconds["train_mix_seed2"] = train(labels / "mix-train", students / "mix-seed2", args,
                                       args.seed + 1)
    models = {"student before training": "from-teacher",
              **{f"student on {name}": str(students / src / "model")
                 for name, src in STUDENTS.items()},
              f"student on mixture, seed {args.seed + 1}": str(students / "mix-seed2" / "model")}
    evals = {}
    for ref in ("mix", "a", "b"):
        t0 = time.perf_counter()
        # `from-teacher` derives from the labels' teacher: B's for B's labels, so only once
        chosen = models if ref == "mix" else {n: s for n, s in models.items() if "before" not in n}
        evals["mixture" if ref == "mix" else ref] = evaluate(
            labels / f"{ref}-heldout", chosen, work / f"eval-{ref}.json")
        seconds[f"eval_{ref}"] = time.perf_counter() - t0
    kl = {name: evals["mixture"][f"student on {name}"]["kl"] for name in STUDENTS}
    seed_spread = abs(kl["mixture"] - evals["mixture"][f"student on mixture, seed {args.seed + 1}"]["kl"])
    result = {
        "settings": vars(args) | {"teacher_a": TEACHER_A, "teacher_b": str(teacher_b),
                                  "mix_rule": "mean", "top_k": 20,
                                  "student": "from-teacher (teacher A's weights), keep-layers 10, "
                                             "lr 2e-4, alpha 0.5"},
        "teacher_b": derivation,
        "why_teacher_b": "A fine-tuned a few steps on shipped corpus text none of the labels "
                         "contain: same tokenizer and chat template (merge requires it), weights "
                         "really moved (agreement 'A vs B' below), and the usual ensemble "
                         "partner of a general model, a sibling adapted to the text's domain. "
                         "Never downloaded.",
        "agreement": agreement, "eval": evals,
        "kl_to_mixture": kl,
        "mixture_student_best_on_mixture_kl": kl["mixture"] < min(kl["teacher A alone"],
                                                                  kl["teacher B alone"]),
        "seed_spread_kl_to_mixture": seed_spread,
        "difference_beyond_seed_spread": min(kl["teacher A alone"], kl["teacher B alone"])
        - kl["mixture"] > seed_spread,
        "seconds": seconds | {"total": time.perf_counter() - start},
    }
    write_result(args.output, result)
    print(format_report(result))


if __name__ == "__main__":
    main()
