"""Render the results page (`docs/results.md`) from `bench/results/*.json` (`make results`).

One renderer per results file, registered in `RENDERERS`: a new benchmark adds one
function and one line. Every number on the page is formatted from its file, never
typed; a results file with no renderer is listed at the end as such, not dropped.
The page is a pure function of the files, so `make results` is idempotent and
`tests/test_results_page.py` fails when the committed page differs from it.

    python -m bench.results_page                         # writes docs/results.md
    python -m bench.results_page --check                 # exit 1 if docs/results.md is stale
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "results.md"

Result = dict[str, Any]


def machine_line(r: Result) -> str:
    """Where and how a file was measured: the machine, and the command when it was recorded."""
    m = r.get("machine", {})
    parts = [f"{m.get('cpu_count', '?')} x {m.get('cpu', '?')} cores"]
    if "memory_gib" in m:
        parts.append(f"{m['memory_gib']} GiB")
    parts.append(f"GPU: {m['gpu']}" if m.get("gpu") else "no GPU")
    parts += [f"torch {m.get('torch', '?')}", m.get("vllm", "no vLLM"),
              f"Python {m.get('python', '?')}"]
    command = (f"`{r['command']}`" if r.get("command") else
               "not recorded (written before the benchmarks recorded their command)")
    return f"Machine: {', '.join(parts)}. Command: {command}."


def table(head: list[str], align: str, rows: list[list[Any]]) -> str:
    """A Markdown table; `align` has one letter per column: l(eft) or r(ight)."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [head, rule, *[[str(c) for c in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def section(title: str, file: str, make: str, r: Result, *parts: str) -> str:
    source = f"`make {make}` -> `bench/results/{file}`" if make else f"`bench/results/{file}`"
    return "\n\n".join([f"## {title}", f"Source: {source}. {machine_line(r)}", *parts])


def spread(values: list[float]) -> float:
    """(max - min) / min of a list of runs: how noisy the machine was."""
    return (max(values) - min(values)) / min(values)


def render_teacher(r: Result) -> str:
    s, plain = r["settings"], r["plain_generation"]
    rows = [["plain `LLM.generate`", f"{plain['tokens_per_second']:.1f}", "1.00", "-"]]
    for name, key in (("`kd teacher-labels` (top-k, filtering, index, HDF5)", "full_path"),
                      ("same with `--hidden-layers -1` (generation + transformers pass)",
                       "full_path_hidden_last")):
        run = r[key]
        rows.append([name, f"{run['tokens_per_second']:.1f}",
                     f"{run['tokens_per_second'] / plain['tokens_per_second']:.2f}",
                     f"{run['bytes_per_completion_token']:,.0f}"])
    return section(
        "Teacher stage", "teacher.json", "bench-teacher", r,
        f"{s['limit']} demo prompts, {s['max_tokens']} max tokens, k = {s['top_k']}, "
        f"`--dtype {s['dtype']}`, one warm engine, one run of each path. Target: the full path "
        f"at >= {r['target_full_vs_plain']:.2f} of plain vLLM's throughput "
        f"({'met' if r['full_vs_plain_throughput'] >= r['target_full_vs_plain'] else 'missed'}).",
        table(["path", "completion tok/s", "vs plain vLLM", "bytes per completion token on disk"],
              "lrrr", rows),
        "Bytes per completion token include the prompt tokens of each kept sample (and, in the "
        "last row, one hidden layer of every prompt and completion token).")


def render_score(r: Result) -> str:
    med, runs = r["median"], r["runs"]
    names = {"plain": "plain vLLM script: `prompt_logprobs`, results discarded",
             "kd": "`kd teacher-labels --mode score` (windows, filter, shards, index, manifest)",
             "prefill": "plain vLLM script, `prompt_logprobs` off (prefill only)"}
    rows = [[names[job], f"{med[job]['tokens_per_second']:.1f}",
             f"{med[job]['tokens_per_second'] / med['plain']['tokens_per_second']:.2f}",
             f"{med[job]['peak_pss_mib']:,.0f} MiB"] for job in ("plain", "kd", "prefill")]
    raw = [[job, i + 1, f"{run['seconds']:.1f}", f"{run['tokens_per_second']:.1f}",
            f"{run['peak_pss_mib']:,.0f}"] for job, rs in runs.items() for i, run in enumerate(rs)]
    worst = max(spread([x["tokens_per_second"] for x in rs]) for rs in runs.values())
    s = r["settings"]
    return section(
        "Score mode", "score.json", "bench-score", r,
        f"The first {s['limit']} documents of `{s['prompts']}` ({r['labelled_tokens']:,} labelled "
        f"tokens), `--max-model-len {s['max_model_len']}`, k = 20, {s['dtype']} teacher, eager; "
        "each job its own process, timed from process start to exit (engine start and shutdown "
        f"included); the three jobs alternate, {s['repeats']} rounds, medians.",
        table(["job", "labelled tok/s", "vs plain", "peak memory (PSS)"], "lrrr", rows),
        f"Ratio kd / plain: {r['ratio_kd_over_plain']:.2f} (target >= {r['target_ratio']}: "
        f"{'met' if r['met'] else 'missed'}). Capturing the labels costs "
        f"{r['capture_cost']:.0%} of the prefill-only throughput. Runs of one job differ by up "
        f"to {worst:.0%} (other jobs shared the cores): read the ratio as the absence of a "
        "measurable overhead, not as a speed-up. Memory, the check of the score-mode token "
        f"budget formula: plain - prefill = {r['measured_logprob_mib']:,.0f} MiB at "
        f"{r['tokens_per_step']:,} tokens per step, formula {r['formula_bound_mib']:,.0f} MiB.",
        "Every run:",
        table(["job", "round", "seconds", "labelled tok/s", "peak PSS MiB"], "lrrrr", raw))


def render_student(r: Result) -> str:
    t = r["targets"]

    def met(ok: bool) -> str:
        return "met" if ok else "missed"
    rows = [
        ["offline step / online step (teacher forward in every step, dense KL)",
         f"**{r['offline_vs_online_step_time_ratio']:.2f}** ({r['offline_step_seconds']:.1f} s "
         f"vs {r['online_step_seconds']:.1f} s)",
         f"{t['offline_vs_online_step_time_ratio']}: "
         f"{met(r['offline_vs_online_step_time_ratio'] <= 0.5)}"],
        ["peak memory saved by going offline",
         f"{r['peak_memory_saving_mb']:,.0f} MB (teacher weights: {r['teacher_weights_mb']:,.0f} MB)",
         f">= teacher weights: {met(r['peak_memory_saving_mb'] >= r['teacher_weights_mb'])}"],
        ["KD step / cross-entropy-only step", f"{r['kd_vs_ce_step_time_ratio']:.2f}",
         f"{t['kd_vs_ce_step_time_ratio']}: {met(r['kd_vs_ce_step_time_ratio'] <= 1.15)}"],
        ["data loader tokens/s / training tokens/s", f"{r['loader_headroom_ratio']:.0f}x",
         f"{t['loader_headroom_ratio']}x: {met(r['loader_headroom_ratio'] >= 20)}"],
        ["peak RSS, 10x more shards / 1x", f"{r['rss_growth_10x_data']:+.1%}",
         f"{t['rss_growth_10x_data']}: {met(r['rss_growth_10x_data'] <= 0.10)}"],
        ["fused head step / same losses under activation checkpointing",
         f"{r['fused_vs_checkpointed_head_step_time_ratio']:.2f}", "(no target)"],
        ["offline step / online step with our own fused loss (teacher top-k in the step)",
         f"{r['offline_vs_online_topk_step_time_ratio']:.2f}", "(no target)"],
    ]
    parts = [
        f"Default student ({r['keep_layers']} of the teacher's layers), batches of "
        f"{r['batch_tokens']} tokens on `{r['labels']}`; step times are medians of interleaved "
        "rounds.",
        table(["comparison", "measured", "target"], "lrl", rows),
        "Read the first row with the last one. The online baseline is the common recipe: the "
        "teacher's forward pass in the step and a dense full-vocabulary KL over both models' "
        "logits. The first ratio comes from two savings: going offline removes the teacher's "
        "forward pass, and the fused head computes the student's losses more cheaply than dense "
        "logits would. The last row isolates the first saving: online with exactly our student "
        "step, the teacher's top-k taken from its forward pass inside the step. The saving grows "
        "with the teacher/student size ratio, small here (the student keeps a third of the "
        "teacher's depth); no GPU measured the large-teacher case."]
    if "step_seconds_runs" in r:
        runs = r["step_seconds_runs"]
        parts += ["Seconds per step, every round:",
                  table(["step", *[f"round {i + 1}" for i in range(max(map(len, runs.values())))]],
                        "l" + "r" * max(map(len, runs.values())),
                        [[name, *[f"{x:.2f}" for x in xs]] for name, xs in runs.items()])]
    else:
        parts.append("Raw step times of each round: not in this file (written before the "
                     "benchmark kept them; the next `make bench-student` writes them).")
    return section("Student stage", "student.json", "bench-student", r, *parts)


def render_startup(r: Result) -> str:
    rows = [[f"{row['shards']:,} shards, {row['gb']} GB", f"{row['full']['seconds_to_first_step']:.1f} s",
             f"{row['lazy']['seconds_to_first_step']:.1f} s", f"{row['lazy']['peak_rss_mb']:,} MiB"]
            for row in r["rows"]]
    e = r["bounded_evaluation"]
    return section(
        "Student start-up against label-set size", "startup.json", "bench-startup", r,
        "Process start to the first optimizer step of `kd train-student` (demo student, batches "
        "of 1024 tokens, the step-0 evaluation at the default bound included), page cache "
        f"dropped and verified-shard cache empty before each run; {r['rows'][0]['samples']:,} "
        "samples, grown in bytes by a hidden layer of growing width, then in shard count. One "
        "run per cell. " + r["note"] + ".",
        table(["label set", "`--verify full` (the old start)", "`--verify lazy` (default)",
               "peak RSS, lazy"], "lrrr", rows),
        f"One evaluation at the default bound ({e['positions']:,} positions of the demo student, "
        f"`--eval-max-tokens {e['eval_max_tokens']}`) takes {e['seconds']:.1f} s.")


def label_error(row: Result) -> str:
    if "mean_kl_stored_to_exact_topk_tail" in row:
        return (f"KL(stored top-k + tail ‖ exact) {row['mean_kl_stored_to_exact_topk_tail']:.1e} "
                f"(max {row['max_kl']:.3f}); worst entry {row['max_abs_logprob_error']:.2f} nats, "
                f"mean {row['mean_abs_logprob_error']:.3f}")
    return (f"TVD(counts / N, exact top-256 + tail) {row['mean_tvd_to_exact_top256_tail']:.2f} "
            f"(renormalised top-20: {row['mean_tvd_renormalised_top20_to_exact']:.2f})")


def render_storage(r: Result) -> str:
    labels = [[name, f"{row['bytes_per_labelled_token']:.1f}", f"{row['bytes_per_entry']:.2f}",
               f"{row['entries_per_token']:g}", label_error(row),
               f"{row['label_rows_per_second'] / 1e6:.2f} M"] for name, row in r["labels"].items()]
    h = r["hidden"]
    layers = [k for k in h if k.startswith("layer ")]
    kinds = [k for k in h[layers[0]] if isinstance(h[layers[0]][k], dict)]
    hidden = [[kind, f"{h[layers[0]][kind]['bytes']:,}",
               *[f"{h[layer][kind]['cosine_mean']:.5f}" for layer in layers]] for kind in kinds]
    needed = "; ".join(
        f"{layer}: rank {h[layer]['pca_rank_for_cosine_0.99']} "
        f"({h[layer]['pca_bytes_vs_fp16_at_that_rank']} x fp16)"
        if h[layer]["pca_rank_for_cosine_0.99"] else f"{layer}: none of the ranks measured"
        for layer in layers)
    massive = "; ".join(f"{layer}: {h[layer]['massive_rows_fit']} rows carry "
                        f"{h[layer]['massive_rows_share_of_fit_variance']:.1%} of the variance"
                        for layer in layers)
    reads = [[name, *[f"{x:.4f}" for x in row["read_seconds_runs"]]]
             for name, row in r["labels"].items() if "read_seconds_runs" in row]
    read_runs = ("Seconds per reading pass, every pass:\n\n" + table(
        ["labels", *[f"pass {i + 1}" for i in range(max(len(x) - 1 for x in reads))]],
        "l" + "r" * max(len(x) - 1 for x in reads), reads)) if reads else (
        "Seconds of each reading pass: not in this file (written before the benchmark kept "
        "them; the next `make bench-storage` writes them).")
    return section(
        "Storage formats", "storage.json", "bench-storage", r,
        f"The demo teacher ({r['teacher']}, vocabulary {r['vocab_size']:,}, width "
        f"{r['hidden_size']}) reads {r['documents']} corpus documents teacher-forced "
        f"({r['labelled_tokens']:,} labelled tokens); each format written by the pipeline's writer "
        "and read back through `ShardReader.sample`. Label rows per second: median of the "
        "passes reading every sample, on shared cores (rough).",
        table(["labels", "bytes / labelled token", "bytes / entry", "entries / token",
               "error vs exact", "label rows/s"], "lrrrlr", labels),
        read_runs,
        f"Hidden states, bytes per token per layer and mean cosine to the exact float32 states on "
        f"held-out tokens (the pca basis fitted on {h['fit_tokens']:,} tokens of the first half of "
        f"the documents, measured on {h['eval_tokens']:,} others):",
        table(["hidden format", "bytes", *[f"cosine, {layer}" for layer in layers]],
              "lr" + "r" * len(layers), hidden),
        f"Smallest pca rank with mean cosine >= 0.99: {needed}. Massive activations in the fit "
        f"sample: {massive}.")


def format_name(f: Result) -> str:
    if f["label_kind"] == "sampled":
        return f"sampled N = {f['samples_per_position']}"
    return f"{f['label_format']} top-{f['top_k']}"


def render_storage_quality(r: Result) -> str:
    names = {"teacher": "teacher (reference)", "student_before": "untrained student"}
    rows = []
    for name, row in r["rows"].items():
        f = r["formats"].get(name)
        label = format_name(f) + (" (sampled's bytes)" if name.endswith("equal-bytes") else "") \
            if f else names.get(name, name)
        rows.append([label,
                     f"{f['bytes_per_labelled_token']}" if f else "-", f"{row['kl']:.3f}",
                     f"{row['nll']:.3f}", f"{row['top1_agreement']:.3f}",
                     f"{row['ece_top1']:.4f} ({row['mean_top1_confidence']:.3f} / "
                     f"{row['top1_accuracy']:.3f})"])
    t, ref = r["train"], r["reference"]
    return section(
        "Quality at equal bytes", "storage_quality.json", "bench-storage-quality", r,
        f"One student per label format ({t['student']}, {t['steps']} steps of "
        f"{t['batch_tokens']} tokens, lr {t['lr']}, seed {t['seed']}, on {r['device']}), "
        f"evaluated on the held-out reference (fp16 top-{ref['top_k']}, {ref['positions']:,} "
        "positions): KL from the teacher's top-k + tail, NLL of the text, top-1 agreement and "
        "the expected calibration error (15 bins) of the top-1 against the next token. "
        "One seed and a short run: differences of a fraction of a percent are not a result.",
        table(["labels", "bytes / token", "KL to teacher", "NLL", "top-1 agreement",
               "ECE of top-1 (confidence / accuracy)"], "lrrrrl", rows))


def render_quality(r: Result) -> str:
    rows = [[name, f"{row['kl']:.3f}", f"{row['top1_agreement']:.3f}", f"{row['nll']:.3f}"]
            for name, row in r["rows"].items()
            if name in ("teacher", "student_before", "ce_only", "kd", "kd_hidden")]
    v = r["verdict"]
    pairs = []
    for key, p in r["pairs"].items():
        run, base = key.split("_vs_")
        pairs.append([f"{run} ({p['what']})", f"{r['rows'][run]['kl']:.3f}",
                      f"{r['rows'][run]['nll']:.3f}", base, f"{p['kl']:+.3f}", f"{p['nll']:+.3f}"])

    def met(ok: bool) -> str:
        return "met" if ok else "not met"
    return section(
        "Distillation against fine-tuning", "quality.json", "bench-quality", r,
        f"The default student trained {r['steps']} steps of {r['batch_tokens']} tokens three "
        f"ways on the same labels (`{r['labels']}`, with the teacher's last hidden state) and "
        "seed; held-out split. `bench/results/quality.md` and `quality*.png` are the same "
        "run's report and curves.",
        table(["run", "KL to teacher", "top-1 agreement", "NLL"], "lrrr", rows),
        f"KD beats plain fine-tuning on held-out KL: {met(v['kd_beats_ce_on_kl'])}; on NLL: "
        f"{met(v['kd_beats_ce_on_nll'])}; KD closes {v['kd_nll_gap_closed']:.0%} of the NLL gap "
        "between the untrained student and the teacher (target: at least half): "
        f"{met(v['kd_closes_half_the_gap'])}. Short CPU runs on a small label set, reported as "
        "measured.",
        "Training controls, same steps, batches and seed, each against its baseline (difference "
        "run minus baseline; negative is better):",
        table(["run", "KL to teacher", "NLL", "against", "KL diff", "NLL diff"], "lrrlrr", pairs))


def render_interop(r: Result) -> str:
    lab, exp = r["labels"], r["export"]
    rows = [["our shards (HDF5)", "", f"{lab['shard_bytes_per_labelled_token']:.1f}", "1.00", ""]]
    for fmt, e in exp.items():
        runs = ", ".join(f"{s:.3f}" for s in e.get("seconds_runs", []))
        rows.append([f"`--format {fmt}`", f"{e['label_rows_per_s']:,.0f}",
                     f"{e['bytes_per_labelled_token']:.1f}", f"{e['size_vs_shards']:.2f}",
                     runs or "not recorded"])
    if "import_distillkit" in r:
        i = r["import_distillkit"]
        runs = ", ".join(f"{s:.3f}" for s in i.get("seconds_runs", []))
        rows.append(["`kd import` of that DistillKit export", f"{i['label_rows_per_s']:,.0f}", "",
                     "", runs or "not recorded"])
    return section(
        "Export and import", "interop.json", "bench-interop", r,
        f"A synthetic output shaped like the demo labels: {lab['samples']} samples of "
        f"{lab['prompt_tokens']} + {lab['completion_tokens']} tokens, vocabulary "
        f"{lab['vocab_size']:,}, k {lab['top_k']}, {lab['labelled_tokens']:,} label rows; median "
        f"of {r['repeats']} runs, formats interleaved; export time includes full verification, "
        "import includes loading the teacher's tokenizer and writing shards.",
        table(["", "label rows / s", "bytes per labelled token", "vs our shards",
               "seconds, every run"], "lrrrl", rows))


def render_ensemble(r: Result) -> str:
    agree = [[split, pair, f"{a['top1_agreement']:.3f}", f"{a['kl']:.3f}", f"{a['positions']:,}",
              f"{a['infinite_kl_positions']:,}"]
             for split, pairs in r["agreement"].items() for pair, a in pairs.items()]
    ev = r["eval"]
    students = []
    for name, m in ev["mixture"].items():
        if name == "teacher":
            continue
        kls = [ev[ref].get(name, {}).get("kl") for ref in ("mixture", "a", "b")]
        students.append([name, *["-" if k is None else f"{k:.4f}" for k in kls],
                         f"{m['top1_agreement']:.3f}", f"{m['nll']:.3f}"])
    s, b = r["settings"], r["teacher_b"]
    seconds = [[stage, f"{x:,.1f}"] for stage, x in r["seconds"].items()]
    return section(
        "Teacher ensembles", "ensemble.json", "bench-ensemble", r,
        f"Teacher A is `{s['teacher_a']}`; teacher B is A fine-tuned here for {b['steps']} steps "
        f"(lr {b['lr']}, {b['batch']} x {b['seq_len']} tokens a step, {b['frozen']} frozen) on "
        f"{b['documents_from']}. {r['why_teacher_b']} Both score the first {s['train_docs']} "
        "`train.jsonl` documents and all held-out records (k = "
        f"{s['top_k']}); `kd merge-labels --weights {s['weights']}` (rule `{s['mix_rule']}`) "
        "mixes each pair.",
        "Agreement of the labels (top-1: the same most likely id; KL over the whole vocabulary "
        "with each stored tail spread uniformly, positions with an infinite KL left out):",
        table(["labels", "P vs Q", "top-1 agreement", "mean KL(P ‖ Q), nats", "positions",
               "infinite KL"], "llrrrr", agree),
        f"The labels' own NLL of the held-out text: mixture {ev['mixture']['teacher']['nll']:.3f}, "
        f"A {ev['a']['teacher']['nll']:.3f}, B {ev['b']['teacher']['nll']:.3f}.",
        f"Students ({s['student']}, {s['steps']} steps of {s['batch_tokens']} tokens, seed "
        f"{s['seed']} unless named), `kd eval --all` on each label set's held-out labels:",
        table(["student", "KL to mixture", "KL to A", "KL to B", "top-1 vs mixture",
               "NLL of held-out text"], "lrrrrr", students),
        f"The mixture's student has the lowest KL to the mixture: "
        f"{'yes' if r['mixture_student_best_on_mixture_kl'] else 'no'}; by more than the "
        f"{r['seed_spread_kl_to_mixture']:.3f} nats between two mixture students that differ only "
        f"in their seed: {'yes' if r['difference_beyond_seed_spread'] else 'no'}.",
        "Seconds per stage of the run that wrote the file (about 0 where a finished teacher B or "
        "student of the same settings was reused):",
        table(["stage", "seconds"], "lr", seconds))


def render_merge(r: Result) -> str:
    rows = [[s["shards_per_source"], f"{s['positions']:,}", f"{s['positions_per_second']:,.0f}",
             f"{s['peak_rss_mib']:.0f} MiB", f"{s['peak_anon_mib']:.0f} MiB",
             f"{s['peak_file_mib']:.0f} MiB", f"{s['rss_growth_mib']:.0f} MiB"]
            for s in r["scales"].values()]
    raw = [[scale, i + 1, f"{run['seconds']:.2f}", f"{run['peak_rss_mib']:.1f}",
            f"{run['peak_anon_mib']:.1f}", f"{run['peak_file_mib']:.1f}"]
           for scale, s in r["scales"].items() for i, run in enumerate(s["runs"])]
    st = r["settings"]
    return section(
        "Merge speed and memory", "merge.json", "bench-merge", r,
        f"Two synthetic teachers' outputs of the same samples (vocabulary {st['vocab']:,}, k = "
        f"{st['top_k']}, {st['per_shard']} samples of {st['positions_per_sample']} labelled "
        "positions a shard), each merge in a fresh process sampling its own `/proc/self/status` "
        f"every 5 ms; medians of {st['repeats']}.",
        table(["shards per source", "labelled positions", "positions / s", "peak RSS",
               "anonymous", "file-backed (mapped shards)", "growth during the merge"],
              "rrrrrrr", rows),
        f"Peak RSS at the largest scale over the smallest: x{r['peak_rss_ratio_16x_over_1x']:.2f} "
        f"(target: {r['target']}).",
        "Every run:",
        table(["scale", "run", "seconds", "peak RSS MiB", "anonymous MiB", "file-backed MiB"],
              "lrrrrr", raw))


def render_onpolicy(r: Result) -> str:
    names = {"start": "demo student (start)"}
    rows = []
    for name, row in r["rows"].items():
        arm, _, rnd = name.partition("_round_")
        label = names.get(name) or (f"on-policy, round {rnd}" if arm == "onpolicy"
                                    else f"off-policy, {int(rnd) * r['settings']['steps']} steps")
        rows.append([label, f"{row['teacher_nll_of_heldout_samples']:.3f}",
                     f"{row['teacher_nll_per_sample_mean']:.2f} +- "
                     f"{row['teacher_nll_per_sample_stderr']:.2f}",
                     f"{row['kl_on_heldout_teacher_labels']:.3f}",
                     f"{row['top1_on_heldout_teacher_labels']:.3f}",
                     f"{row['nll_on_heldout_teacher_labels']:.3f}"])
    s = r["settings"]
    return section(
        "On-policy rounds against off-policy steps", "onpolicy.json", "bench-onpolicy", r,
        f"From the demo student, two arms of {s['rounds']} rounds, {s['steps']} steps of "
        f"{s['batch_tokens']} tokens per round in each. On-policy: the student writes "
        f"{s['max_tokens']} tokens for each of the first {s['train_prompts']} demo prompts "
        "(T = 1), the teacher scores them, the next student trains `--init-from` it with "
        "`--alpha 1 --onpolicy-weight 1`. Off-policy: as many more steps on the teacher's own "
        f"samples (`--alpha 0.5`). Measured after each round on {s['heldout']} prompts no run "
        f"trained on (from line {s['heldout_from']} of the prompt file) and on the held-out split "
        f"of the demo labels. The run took {r['seconds']:,} s.",
        table(["student", "teacher NLL of its held-out text", "per-sample mean +- s.e.",
               "KL on held-out teacher labels", "top-1 there", "NLL there"], "lrrrrr", rows))


def render_warning_lines(r: Result) -> str:
    rows = [[run["code"], run["warning_lines"]] for run in r["runs"]]
    m = r["machine"]
    return "\n\n".join([
        "## Warning lines of a teacher run",
        f"Source: `bench/results/teacher_warning_lines.json` ({r['what']}). Machine: "
        f"{m['cpus']} cores, {m['note']}. Command: `{r['command']}`.",
        table(["code", "warning lines"], "lr", rows),
        "Every line is kept in the file, so what remains can be read there."])


def deploy_student(st: dict[str, Any], parameters: int) -> str:
    """What the bench.deploy student was, in words."""
    size = f"{parameters / 1e6:.1f} M parameters"
    if st["student"] == "narrow":
        return (f"A {st['keep_layers']}-layer, {st['narrow_hidden_size']}-wide `narrow` student "
                f"({size}, random init from the teacher's config)")
    if st["student"] == "from-teacher":
        return f"A student of {st['keep_layers']} of the teacher's layers ({size})"
    return (f"The student is `{st['student']}` ({size}); with the labels' own teacher as the "
            "student this is LLM-QAT's recipe (Liu et al., arXiv 2305.17888), the float model "
            "distilled into its own quantized copy. Training")


def deploy_sections(r: Result) -> list[str]:
    """The parts of a bench.deploy result: settings, variants, paired gains, raw runs, GGUF."""
    st, summary = r["settings"], r["summary"]
    variants = [[v, f"{s['kl']['mean']:.4f} ± {s['kl']['stdev']:.4f}",
                 f"{s['nll']['mean']:.4f} ± {s['nll']['stdev']:.4f}",
                 f"{s['bytes']['mean'] / 2**20:.2f} MiB", s["kl"]["n"]]
                for v, s in summary["variants"].items()]
    gains = [[pair, f"{g['kl']['mean']:+.4f} ± {g['kl']['stdev']:.4f}",
              f"{g['kl']['seeds_better']}/{g['kl']['n']}",
              f"{g['nll']['mean']:+.4f} ± {g['nll']['stdev']:.4f}",
              f"{g['nll']['seeds_better']}/{g['nll']['n']}"]
             for pair, g in summary["gains"].items()]
    raw = [[run["seed"], run["variant"], f"{run['kl']:.5f}", f"{run['nll']:.5f}",
            f"{run['kl_to_float_student']:.2e}" if "kl_to_float_student" in run else "-",
            "reused" if run["train_seconds"] is None else f"{run['train_seconds']:.0f}"]
           for run in r["runs"]]
    float_sd = summary["variants"]["float"]["kl"]["stdev"]
    final = (f", the last {st['qat_steps']} of them a QAT phase for `qat-final`"
             if st["qat_steps"] else "")
    parts = [
        f"{deploy_student(st, r['runs'][0]['parameters'])}, {st['steps']} steps of "
        f"{st['batch_tokens']} tokens per run at lr {st['lr']:g}{final}, "
        f"seeds {st['seeds']}, on {r.get('device', 'cpu')}; scheme `{st['scheme']}` (group "
        f"{st['group_size']}); KL and NLL on {r['heldout']['teacher']['positions']:,} held-out "
        "positions (mean ± stdev over seeds):",
        table(["variant", "KL to teacher", "NLL", "size", "seeds"], "lrrrr", variants),
        "Paired gains (baseline minus variant, per seed: positive when the variant is better; "
        f"mean ± stdev over seeds); the float student's KL varies by {float_sd:.4f} (stdev) "
        "across seeds:",
        table(["variant vs baseline", "KL gain", "seeds better", "NLL gain", "seeds better"],
              "lrrrr", gains),
        table(["seed", "variant", "KL", "NLL", "KL to float student", "train s"], "rlrrrr", raw)]
    if any(run["train_seconds"] is None for run in r["runs"]):
        parts.append("Runs marked `reused` were trained by an earlier, interrupted invocation "
                     "and taken as they were (`--reuse`); their time is not recorded.")
    if r["gguf"]:
        gguf = [[g["seed"], g["quant"], f"{g['bytes'] / 2**20:.2f} MiB",
                 f"{g['kl_to_float_student']:.2e}", f"{g['kl']:.5f}",
                 f"{g['llama_cpp']['tokens_per_second']:.0f}" if g.get("llama_cpp") else "-"]
                for g in r["gguf"]]
        parts += ["GGUF files of the float student (llama.cpp tokens per second: greedy "
                  "generation, prompt included):",
                  table(["seed", "quant", "size", "KL to float student", "KL to teacher",
                         "llama.cpp tok/s"], "rlrrrr", gguf)]
    measured = any(g.get("llama_cpp") for g in r["gguf"])
    if r["gguf"] and not measured:
        return parts + ["llama.cpp tokens per second: not measured in this run (llama-cpp-python "
                        "did not import when its GGUF files were measured)."]
    return parts + [f"llama.cpp: {r['llama_cpp']['note']}."]


def render_deploy(r: Result) -> str:
    return section("Deployment: QAT and GGUF", "deploy.json", "bench-deploy", r,
                   *deploy_sections(r))


def render_deploy_narrow(r: Result) -> str:
    return section("Deployment, earlier run: a small student trained from scratch",
                   "deploy_narrow.json", "", r,
                   "Kept for its `ptq vs float` row: a student this small and this briefly "
                   "trained loses almost nothing to int4 post-training quantization, so QAT has "
                   "nothing to recover there (the `float-phased` control shows that `qat-final`'s "
                   "gain over plain `ptq` is its second warm-up, not QAT).",
                   *deploy_sections(r))


def render_llama_cpp_build(r: Result) -> str:
    progress = r["progress"]
    steps = (f"{progress['done']} of {progress['total']} build steps done"
             if progress else "no build step reached")
    outcome = ("built" if r["built"] else
               f"stopped at the {r['time_limit']:.0f} s limit" if r["timed_out"] else
               f"failed (exit status {r['returncode']})")
    return section(
        "llama.cpp build (llama-cpp-python)", "llama_cpp_build.json", "llama-cpp", r,
        f"llama-cpp-python {r['version']}: {outcome} after {r['seconds']:.0f} s ({steps}; load "
        f"average {r['load_average_at_start']:.1f} at the start). End of the log:",
        "```text\n" + "\n".join(r["log_tail"]) + "\n```")


def render_llama_cpp_speed(r: Result) -> str:
    rows = [[f["file"], f"{f['bytes'] / 2**20:.2f} MiB",
             ", ".join(f"{n} {t}" for t, n in sorted(f["tensor_types"].items())),
             " / ".join(f"{run['tokens_per_second']:.0f}" for run in f["runs"]),
             " / ".join(f"{run['prompt_tokens_per_second']:.0f}" for run in f["runs"])]
            for f in r["files"]]
    return section(
        "llama.cpp speed of the GGUF student", "llama_cpp_speed.json", "", r,
        f"{r['llama_cpp']['note']}; {r['new_tokens']} new tokens per run, each run listed "
        "(generation tokens per second count the prompt's processing in the time):",
        table(["file", "size", "tensor types", "generation tok/s", "prompt tok/s"], "lrlrr",
              rows))


def render_draft(r: Result) -> str:
    q, b, share, cap = r["quality"], r["bytes_per_token"], r["sharegpt_68k"], r["capture"]
    layers = [str(layer) for layer in q["layers"]]
    quality = [[name, f"{min(d['cosine_min'][l] for l in layers):.5f}",
                f"{d['pre_norm_logits_top1_agreement']:.3f}", f"{d['pre_norm_logits_kl_mean']:.2e}",
                f"{d['pre_norm_logits_kl_max']:.2e}"] for name, d in q["dtypes"].items()]
    sizes = [[name, f"{value:,.0f}"] for name, value in b.items()
             if name not in ("tokens", "layers", "hidden_size")]
    runs = [[c["run"], c["repeat"], f"{c['generation_seconds']:.1f}", f"{c['hidden_seconds']:.1f}",
             f"{c['completion_tokens_per_second']:.1f}"] for c in cap["runs"]]
    projected = [[dtype, f"{gb:,.0f} GB"] for dtype, gb in share["projected_gb"].items()]
    return section(
        "Draft-model (EAGLE-3) capture", "draft.json", "bench-draft", r,
        f"Layers {', '.join(layers)} (9999 = the last block's output before the final norm) of "
        f"`{r['teacher']}` on {q['tokens']:,} tokens; logits rebuilt through the teacher's norm "
        "and head from the stored pre-norm state, against the exact ones:",
        table(["storage", "min cosine", "top-1 agreement", "mean KL", "max KL"], "lrrrr", quality),
        f"Bytes per token ({b['layers']} layers, hidden size {b['hidden_size']}, over "
        f"{b['tokens']:,} tokens):",
        table(["storage", "bytes/token"], "lr", sizes),
        f"ShareGPT-68k at hidden size {share['hidden_size']}: {share['assumption']} "
        f"({share['implied_tokens']:,.0f} tokens; {share['source']}):",
        table(["dtype", "projected size"], "lr", projected),
        "Capture against the teacher stage without hidden states (CPU, model load included):",
        table(["run", "repeat", "generation s", "hidden-state s", "completion tok/s"], "lrrrr", runs),
        "Throughput ratio eagle3 / none per repeat: "
        + ", ".join(f"{x:.2f}" for x in cap["eagle3_vs_no_hidden_throughput"]) + ".")


def render_text_layout_bytes(r: Result) -> str:
    rows = [[Path(run["labels"]).name, run["mode"], f"{run['tokens']:,}", run["samples"],
             f"{run['payload_bytes_per_token']:.2f}", f"{run['file_growth_bytes_per_token']:.2f}",
             f"{run['payload_bytes_per_labelled_token']:.2f}", f"{run['add_seconds']:.1f}"]
            for run in r["runs"]]
    return section(
        "Cross-tokenizer text layout: bytes per token", "text_layout_bytes.json", "", r,
        "`kd add-text-layout` on existing label sets: what `samples/token_byte_lengths` and "
        "`samples/text_regions` add (payload) and how much the shard files grow:",
        table(["labels", "mode", "tokens", "samples", "payload B/token", "file growth B/token",
               "payload B/labelled token", "add s"], "llrrrrrr", rows))


def cross_evidence(r: Result) -> str:
    """The per-seed held-out bits per byte of both losses, and per pair the gain against the spread."""
    rows = []
    for pair, e in r["evidence"].items():
        s = e["summary"]
        for run in e["runs"]:
            rows.append([pair, run["seed"], run["loss"],
                         f"{run['heldout_bits_per_byte']['student']:.4f}",
                         f"{run['heldout_bits_per_byte']['teacher']:.4f}"])
        rows.append([pair, "mean", "CE only minus ALM + 1:1 KL + CE",
                     f"{s['gain_mean']:+.4f} (wins {s['wins']})",
                     f"spread ±{s['alm+kl+ce']['std_across_seeds']:.4f} / "
                     f"±{s['ce only']['std_across_seeds']:.4f}"])
    return "\n\n".join([
        "Held-out bits per byte (lower is better; the mean row is CE only minus ALM + KL + CE, "
        "positive when distillation wins, against the standard deviation across seeds of each "
        "loss):",
        table(["pair", "seed", "loss", "student bits/byte", "teacher bits/byte"], "lrlrr", rows)])


def cross_step_ratios(r: Result) -> str:
    """(a) against ordinary KD with the teacher's vocabulary, (b) against CE only of the same student."""
    if "step_ratio" not in r:
        return "Step-time ratios: not in this file (written before they were measured)."
    goal = r.get("step_goal", 1.15)
    rows = []
    for pair, v in r["step_ratio"].items():
        for name, ratio in v.items():
            rows.append([pair, name, f"{ratio:.2f}x", "met" if ratio <= goal else "not met"])
    for pair, v in r.get("paired_step_ratio", {}).items():
        rows.append([pair, "(b) paired in one process, median of "
                     f"{len(v['ratios'])} alternating steps",
                     f"{v['median_ratio']:.2f}x", "met" if v["median_ratio"] <= goal else "not met"])
    return "\n\n".join([
        f"Step-time ratios of the cross-tokenizer step (ALM + 1:1 KL + CE), goal <= {goal}x: "
        "(a) against ordinary KD of the same architecture with the teacher's vocabulary, which "
        "includes the larger embedding, LM head and optimizer state of the student's vocabulary; "
        "(b) against a CE-only step of the very same student, which isolates what the "
        "cross-tokenizer losses add:",
        table(["student tokenizer", "compared with", "ratio", "goal"], "llrl", rows)])


def render_cross_tokenizer(r: Result) -> str:
    a, st = r["args"], r["step_time"]
    align = [[pair, f"{v['cold_ms_per_sample']:.3f}", f"{v['cached_ms_per_sample']:.3f}",
              f"{v['one_to_one_byte_share']:.1%}", f"{v['stored_layout_bytes_per_token']:.2f}"]
             for pair, v in r["alignment"].items()]
    base = st["ordinary KD, teacher tokenizer"]["median_step_seconds"]
    steps = [[name, " ".join(f"{x:.2f}" for x in v["step_seconds"]),
              f"{v['median_step_seconds']:.2f}", f"{v['median_step_seconds'] / base:.2f}x"]
             for name, v in st.items()]
    return section(
        "Cross-tokenizer distillation", "cross_tokenizer.json", "bench-cross-tokenizer", r,
        f"{a['keep_layers']}-layer students cut from the teacher, {a['steps']} steps of "
        f"{a['batch_tokens']} tokens, seeds {', '.join(map(str, a['seeds']))}, on score-mode "
        f"labels of {a['train_docs']} corpus documents. Alignment per sample (cold, then from the "
        "cache), the share of labelled bytes in chunks of one token on both sides, and what the "
        "stored text layout adds:",
        table(["student tokenizer", "cold ms/sample", "cached ms/sample", "1:1 byte share",
               "layout B/token"], "lrrrr", align),
        "Step time (seconds per step; ratio to an ordinary KD step with the teacher's "
        "vocabulary):",
        table(["path", "steps (s)", "median s", "ratio"], "lrrr", steps),
        cross_step_ratios(r), cross_evidence(r))


def render_cross_tokenizer_evidence(r: Result) -> str:
    a, m = r["args"], r["machine"]
    where = f"on a GPU ({m['gpu']})" if m.get("gpu") else "on the CPU"
    smoke = ("" if a["steps"] >= 50 else
             f"**A smoke run ({a['steps']} steps, seeds {', '.join(map(str, a['seeds']))}): it "
             "shows the script runs end to end; its numbers are not the evidence.** ")
    steps = [[name, f"{v['median_step_seconds'] * 1e3:.1f}"] for name, v in r["step_time"].items()]
    return section(
        "Cross-tokenizer evidence: students of other tokenizers from stored labels alone",
        "cross_tokenizer_evidence.json", "bench-cross-tokenizer-evidence", r,
        smoke + f"Run {where}. {r['init']}. {a['steps']} steps of {a['batch_tokens']} tokens at "
        f"lr {a['lr']} on labels of all of data/corpus/train.jsonl, per seed and loss; held-out: "
        f"the 60 documents of data/corpus/heldout.jsonl. Total {r.get('total_seconds', 0):.0f} s"
        + (" for this invocation: runs an earlier, interrupted one had finished were taken as "
           "they were (`--reuse`)." if any(run["seconds"] is None for e in r["evidence"].values()
                                          for run in e["runs"]) else "."),
        cross_evidence(r), cross_gain_in_spreads(r),
        "Median step time (ms), over the steps after the first "
        f"{a['skip_steps']} of each run (the pairs: median over their evidence runs):",
        table(["path", "median ms/step"], "lr", steps),
        cross_step_ratios(r))


def cross_gain_in_spreads(r: Result) -> str:
    """Per pair: the mean gain over the standard deviation of the per-seed gains (paired by seed)."""
    parts = []
    for pair, e in r["evidence"].items():
        gains = e["summary"]["gain_bits_per_byte_per_seed"]
        sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
        parts.append(f"{pair}: {statistics.fmean(gains):+.4f} bits/byte, {len(gains)} seeds, "
                     f"paired spread ±{sd:.4f} ({statistics.fmean(gains) / sd:.1f} spreads)"
                     if sd > 0 else f"{pair}: {statistics.fmean(gains):+.4f} bits/byte")
    return "Gain of ALM + 1:1 KL + CE over CE only, per pair: " + "; ".join(parts) + "."


def rate_cell(m: Result) -> str:
    """`followed/total (rate ± binomial s.e.)` of a rule-following count."""
    return f"{m['followed']}/{m['total']} ({m['rate']:.0%} ± {m['stderr']:.0%})"


def context_time(r: Result) -> str:
    if all(run["seconds"] is not None for run in r["runs"]):
        return f"The run took {r['seconds']:,} s."
    return ("Seeds marked `reused` were finished by an earlier, interrupted invocation and taken "
            "as they were (`--reuse`); their time is not recorded.")


def render_context(r: Result) -> str:
    s, t = r["settings"], r["teacher_greedy"]
    arms = {"with-context": "behind the context", "without": "without it"}
    teacher = [[f"teacher {arms['with-context']}", rate_cell(t["with-context"])],
               [f"teacher {arms['without']} (= the student before training)",
                rate_cell(t["without"])]]
    runs = [[run["seed"], rate_cell(run["labels"]["with-context"]),
             rate_cell(run["labels"]["without"]), rate_cell(run["student"]["with-context"]),
             rate_cell(run["student"]["without"]),
             f"{run['student']['with-context']['rate'] - run['student']['without']['rate']:+.0%}",
             "reused" if run["seconds"] is None else f"{run['seconds']:,}"] for run in r["runs"]]
    names = {"with-context": "student from labels behind the context",
             "without": "student from labels without it",
             "difference": "difference (behind - without)"}
    summary = [[names[k], f"{v['mean']:.0%}", f"{v['min']:.0%}", f"{v['max']:.0%}",
                f"{v['std']:.0%}"] for k, v in r["summary"].items()]
    first = r["runs"][0]
    examples = [[arms[arm], a.strip().replace("\n", " ").replace("|", "/")[:90]]
                for arm, answers in first["example_answers"].items() for a in answers]
    return section(
        "Context distillation: does the student learn the teacher's hidden rule?", "context.json",
        "bench-context", r,
        f"The teacher labels {'the first ' + str(s['limit']) if s['limit'] else 'all'} prompts "
        f"of `{s['prompts']}` ({s['max_tokens']} tokens, T = 0.8) behind the system prompt "
        f"\"{s['context']}\", which the student never sees, and again without it; the same "
        f"student (the teacher itself: self-distillation) trains {s['steps']} steps at lr "
        f"{s['lr']:g} on each; every model answers "
        f"{'the first ' + str(s['heldout_limit']) if s.get('heldout_limit') else 'all'} prompts "
        f"of `{s['heldout']}` greedily "
        f"({s['max_tokens']} tokens), judged by the deterministic `{s['rule']}` check "
        "(`pipeline/student/rule_check.py`). Rates carry their binomial standard error over the "
        "held-out prompts. " + context_time(r),
        "The teacher, greedy on the held-out prompts:",
        table(["model", "follows the rule"], "lr", teacher),
        "Per seed (teacher sampling and student training): the share of the teacher's sampled "
        "training completions that follow the rule, and each trained student on the held-out "
        "prompts in the student's view:",
        table(["seed", "labels behind the context", "labels without it",
               "student from labels behind the context", "student from labels without it",
               "difference", "seconds"], "rrrrrrr", runs),
        "Over the seeds:",
        table(["student", "mean", "min", "max", "std"], "lrrrr", summary),
        f"First answers of each student (seed {first['seed']}):",
        table(["labels", "answer"], "ll", examples))


RENDERERS: dict[str, Callable[[Result], str]] = {
    "context.json": render_context,
    "cross_tokenizer.json": render_cross_tokenizer,
    "cross_tokenizer_evidence.json": render_cross_tokenizer_evidence,
    "text_layout_bytes.json": render_text_layout_bytes,
    "draft.json": render_draft,
    "deploy.json": render_deploy,
    "deploy_narrow.json": render_deploy_narrow,
    "llama_cpp_build.json": render_llama_cpp_build,
    "llama_cpp_speed.json": render_llama_cpp_speed,
    "teacher_warning_lines.json": render_warning_lines,
    "teacher.json": render_teacher,
    "score.json": render_score,
    "student.json": render_student,
    "startup.json": render_startup,
    "storage.json": render_storage,
    "storage_quality.json": render_storage_quality,
    "quality.json": render_quality,
    "interop.json": render_interop,
    "ensemble.json": render_ensemble,
    "merge.json": render_merge,
    "onpolicy.json": render_onpolicy,
}

HEADER = """# Results

Generated by `make results` from `bench/results/*.json` (`bench/results_page.py`): do not
edit by hand; `tests/test_results_page.py` fails when this page differs from what the files
render. Each section names the benchmark that wrote its file, the machine and the command.
Absolute numbers on 2 shared CPU cores are noisy; ratios are measured side by side in one
run.
"""


def render_page(results: Path = RESULTS) -> str:
    files = sorted(p.name for p in results.glob("*.json"))
    sections = [RENDERERS[name](json.loads((results / name).read_text()))
                for name in RENDERERS if name in files]
    unrendered = [name for name in files if name not in RENDERERS]
    tail = ["## Files with no renderer",
            "\n".join(f"- `bench/results/{name}`" for name in unrendered)
            if unrendered else "None: every results file is rendered above."]
    return "\n\n".join([HEADER.rstrip(), *sections, *tail]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=PAGE)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out is not current")
    args = parser.parse_args()
    page = render_page(args.results)
    if args.check:
        if not args.out.is_file() or args.out.read_text() != page:
            sys.exit(f"{args.out} is stale: run `make results`")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
