"""Human-readable summary of an output directory (`kd inspect`).

Counts, bytes per labelled token, rejects and drops by reason, each
confidence metric's distribution (kept against dropped; for scored text also
the teacher's per-sample perplexity), the teacher; then one sample decoded with
the teacher's top-k alternatives at a few labelled positions. An output labelled
behind a teacher context (docs/teacher-context.md) shows both views of the
sample: the stored (student's) prompt, and the messages the teacher saw.

    python -m stages.cli.main inspect data/labels/demo --sample 0 --positions 3
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.store.manifest import read_manifest
from pipeline.store.sample_index import part_name
from pipeline.store.codecs import label_format_named, label_kind_named
from pipeline.store.shard_reader import ShardReader, dataset_layouts
from pipeline.store.tokenizer_files import tokenizer_source

Decode = Callable[[list[int]], str]


def load_decoder(teacher: str) -> Decode:
    """Decode with the labels' tokenizer (stored copy, else the teacher) when it can be loaded
    locally, else show raw ids."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(teacher, local_files_only=True)
        return lambda ids: tok.decode(ids)
    except Exception:  # any failure to load just means ids are shown undecoded
        return lambda ids: " ".join(f"<{i}>" for i in ids)


def locate_sample(out_dir: Path, shards: dict[int, Any], index: int) -> tuple[ShardReader, int]:
    """Shard reader and row of the `index`-th sample of the whole output."""
    remaining = index
    for i in sorted(shards):
        if remaining < shards[i].samples:
            return ShardReader(out_dir / shards[i].name), remaining
        remaining -= shards[i].samples
    raise IndexError(f"sample {index} is out of range: the output holds {index - remaining} samples")


def storage_bytes(out_dir: str | Path, m: Any) -> dict[str, float]:
    """What the stored data costs, from the shards' dataset sizes (no data read):
    `label_token` (every labels/ dataset per labelled token), `topk_entry` (ids and
    logprobs per top-k entry, or id and count per distinct drawn id), `entries_per_token`,
    `hidden_layer_token` (one hidden layer per token)."""
    sizes: dict[str, int] = {}
    lengths: dict[str, int] = {}
    for rec in m.shards.values():
        for name, lay in dataset_layouts(Path(out_dir) / rec.name)[1].items():
            sizes[name] = sizes.get(name, 0) + int(np.prod(lay.shape)) * lay.dtype.itemsize
            lengths[name] = lengths.get(name, 0) + (lay.shape[0] if lay.shape else 0)
    t = m.totals()
    rows, tokens = max(t["completion_tokens"], 1), max(t["tokens"], 1)
    label = sum(v for k, v in sizes.items() if k.startswith("labels/"))
    kind = label_kind_named(m.label_kind)
    entry = sum(sizes.get(k, 0) for k in kind.entry_datasets(label_format_named(m.label_format)))
    # an entry: one top-k alternative, or one distinct drawn id
    entries = kind.entry_count(lengths, rows, m.top_k)
    # every hidden/ dataset (states, int8 scales) shared out over the stored layers
    hidden = sum(v for k, v in sizes.items() if k.startswith("hidden/"))
    layers = max(len(m.hidden_layers), 1)
    return {"label_token": label / rows, "topk_entry": entry / max(entries, 1),
            "entries_per_token": entries / rows,
            "hidden_layer_token": hidden / layers / tokens}


def storage_lines(out_dir: Path, m: Any) -> list[str]:
    b = storage_bytes(out_dir, m)
    what, entry = label_kind_named(m.label_kind).storage_words(m)
    line = (f"storage      labels {what}: {b['label_token']:.1f} bytes per labelled token, "
            f"{b['topk_entry']:.2f} per {entry} ({b['entries_per_token']:.1f} per token)")
    if m.hidden_layers:
        line += (f"; hidden {m.hidden_format}: {b['hidden_layer_token']:.0f} bytes per token "
                 "per layer")
    return [line]


METRICS = ("mean_logprob", "min_logprob", "mean_entropy", "mean_tail_mass", "repetition_rate",
           "completion_tokens")


def metric_lines(out_dir: Path, m: Any) -> list[str]:
    """Kept/dropped counts by reason and each confidence metric's spread over all generated samples."""
    t = m.totals()
    drops = ", ".join(f"{k}: {v}" for k, v in m.dropped_by_reason().items()) or "none"
    lines = [f"filtering    {t['generated']} generated, {t['samples']} kept, {t['dropped']} dropped "
             f"({drops})"]
    parts = [out_dir / part_name(i) for i in sorted(m.shards)]
    if not parts:
        return lines
    table = pa.concat_tables([pq.read_table(p) for p in parts if p.is_file()])
    kept = np.asarray(table["kept"].to_numpy(zero_copy_only=False), dtype=bool)
    lines.append(f"  {'metric':<18}{'p5':>9}{'p50':>9}{'p95':>9}   {'kept p50':>9}{'dropped p50':>12}")
    columns = {name: np.asarray(table[name].to_numpy(zero_copy_only=False), dtype=np.float64)
               for name in METRICS}
    if m.mode == "score":  # the teacher's judgement of the text itself
        columns["perplexity"] = np.exp(-columns["mean_logprob"])
    for name, v in columns.items():
        q = np.percentile(v, [5, 50, 95])
        k = f"{np.median(v[kept]):9.3f}" if kept.any() else f"{'-':>9}"
        d = f"{np.median(v[~kept]):12.3f}" if (~kept).any() else f"{'-':>12}"
        lines.append(f"  {name:<18}{q[0]:9.3f}{q[1]:9.3f}{q[2]:9.3f}   {k}{d}")
    return lines


def teacher_view_lines(reader: ShardReader, row: int) -> list[str]:
    """The two views of a sample labelled behind a teacher context: the stored one is the
    student's (shown above), these are the messages the teacher saw; none without one."""
    if "samples/teacher_contexts" not in [t.dataset for t in reader.sample_texts()]:
        return []
    context = reader.strings("samples/teacher_contexts")[row]
    if not context:
        return ["views:      the teacher saw the stored (student's) view"]
    return ["views:      the prompt above is the student's (stored); the teacher saw:",
            *(f"  teacher {m['role']:<10}{m['content']!r}" for m in json.loads(context))]


def summarise_output(out_dir: str | Path, sample_index: int = 0, positions: int = 3,
                     decode: Decode | None = None) -> str:
    out_dir = Path(out_dir)
    m = read_manifest(out_dir)
    t = m.totals()
    decode = decode or load_decoder(tokenizer_source(out_dir, m.teacher)[0])
    lines = [
        f"output       {out_dir} ({'complete' if m.complete else 'INCOMPLETE: resume with the same command'})",
        f"teacher      {m.teacher}",
        f"tokenizer    {m.tokenizer_fingerprint[:16]}  vocab {m.vocab_size}  top-k {m.top_k}",
        f"records      {m.input_records} read, {m.accepted_prompts} accepted, {m.rejected_prompts} rejected",
        f"rejects      {', '.join(f'{k}: {v}' for k, v in m.rejects_by_reason.items()) or 'none'}",
        f"mode         {m.mode} (schema v{m.schema_version})",
        f"shards       {t['shards']}  samples {t['samples']}  tokens {t['tokens']}  "
        f"labelled tokens {t['completion_tokens']}",
        f"disk         {t['bytes'] / 2**20:.1f} MiB, {t['bytes'] / max(t['completion_tokens'], 1):.0f} "
        "bytes per labelled token",
    ]
    if m.teacher_context:
        c = m.teacher_context
        lines.append(f"teacher view {c['kind']}: {c['records']} record(s) labelled behind a context "
                     f"the stored samples lack (sha256 {c['sha256'][:16]})")
    lines += storage_lines(out_dir, m)
    lines += metric_lines(out_dir, m)
    if not t["samples"]:
        return "\n".join(lines)
    reader, row = locate_sample(out_dir, m.shards, sample_index)
    s = reader.sample(row)
    ids, where = s["token_ids"].tolist(), s["positions"].tolist()
    p = s["prompt_length"]
    sid = reader.strings("samples/ids")[row]
    unlabelled = len(ids) - p - len(where)
    lines += ["", f"sample {sid} ({reader.path.name} row {row}, {len(where)} labelled tokens"
              + (f", {unlabelled} unlabelled after the first label" if unlabelled else "") + ")",
              f"prompt:     {decode(ids[:p])!r}", f"rest:       {decode(ids[p:])!r}"]
    lines += teacher_view_lines(reader, row)
    step = max(1, len(where) // max(positions, 1))
    token = "sampled" if m.mode == "generate" else "token"
    for j in list(range(0, len(where), step))[:positions]:
        alts = ", ".join(f"{decode([int(i)])!r} {math.exp(float(lp)):.3f}"
                         for i, lp in zip(s["topk_ids"][j][:5], s["topk_logprobs"][j][:5]))
        lines.append(f"  pos {where[j]:4d} {token} {decode([ids[where[j]]])!r} "
                     f"(p={math.exp(float(s['sampled_logprobs'][j])):.3f})  top: {alts}")
    return "\n".join(lines)
