"""Storage formats on the demo teacher: bytes, read speed and reconstruction error, same samples.

The embedded teacher (SmolLM2-135M-Instruct, vocabulary 49,152, width 576) reads
corpus documents teacher-forced with transformers (float32, CPU); from its exact
logits and hidden states the same label rows are written in each format with the
pipeline's own writer (`pipeline.store.shard_writer.write_shard`) and read back
through the memmap reader (`ShardReader.sample`, what the student's batches use):

- labels: fp16 top-20 (today), q8 top-20, q8 top-128, q8poly top-128, sampled N = 50 (draws from the
  top-256 + tail bucket, as the teacher stage makes them). Per format: bytes per
  labelled token and per entry, label rows per second through the reader (median of
  --repeats, interleaved), and the error against the exact distribution:
  KL(stored top-k + tail || exact top-k + tail) for top-k formats, and for sampled the
  total variation between counts / N and the exact top-256 + tail distribution;
- hidden states (layers 15 and the last): bytes per token per layer and cosine to the
  exact float32 states on held-out documents (the pca basis is fitted on the first half
  of the documents, as the teacher stage fits it on its first shard) for fp16, int8 and
  pca at several ranks; the smallest rank with mean cosine >= 0.99 is reported. For pca
  the cosine is also given without the int8 step and on the fit documents themselves,
  and the explained variance with and without the massive-activation rows, which
  separates what truncation loses from what quantisation loses.

Writes bench/results/storage.json with the machine.

    python -m bench.storage                    # 48 documents (~2 min on 2 cores)
    python -m bench.storage --docs 8 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.result_file import write_result
from pipeline.store.hidden_basis import fit_basis, project, reconstruct
from pipeline.store.codecs.hidden_int8 import decode_int8, encode_int8
from pipeline.store.manifest import Manifest
from pipeline.store.sample import Sample
from pipeline.store.shard_reader import ShardReader
from pipeline.store.shard_writer import ShardAttrs, write_shard
from pipeline.store.summary import storage_bytes
from pipeline.teacher.label_sampling import SOURCE_K, sampled_sample

TEACHER = Path("data/models/smollm2-135m-instruct")
CORPUS = Path("data/corpus/train.jsonl")
LABELS = {"fp16 top-20": ("fp16", 20, "topk"), "q8 top-20": ("q8", 20, "topk"),
          "q8 top-128": ("q8", 128, "topk"), "q8poly top-128": ("q8poly", 128, "topk"),
          "sampled N=50": ("fp16", SOURCE_K, "sampled")}
RANKS = (16, 32, 64, 128, 192, 256, 284, 320, 384, 448, 512)  # 284 + 4 = 0.25 x fp16 at 576
MASSIVE = 10.0
"""A state whose norm exceeds this many times the median is a massive-activation row
(the first tokens of a document on SmolLM2: norms ~25,000 against ~150 at layer 15)."""
WINDOW = 256


def teacher_pass(docs: int, layers: tuple[int, ...]) -> tuple[list[dict[str, Any]], int, int]:
    """Per document: tokens, exact top-256 ids/logprobs per position, sampled logprob, states."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TEACHER)
    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    texts = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()[:docs]]
    out = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"][:WINDOW]
        with torch.no_grad():
            res = model(torch.tensor([ids]), output_hidden_states=True)
        logp = torch.log_softmax(res.logits[0, :-1].double(), -1)  # predicts tokens 1..
        top = logp.topk(SOURCE_K, -1)
        out.append({"ids": ids, "top_ids": top.indices.numpy(), "top_lps": top.values.numpy(),
                    "sampled": logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy(),
                    "hidden": {layer: res.hidden_states[layer][0].numpy() for layer in layers}})
    return out, model.config.vocab_size, model.config.hidden_size


def kl_with_tail(p_lp: np.ndarray, q_lp: np.ndarray) -> np.ndarray:
    """KL(p || q) per row over k entries plus the tail bucket (the rest of the mass)."""
    p, q = np.exp(p_lp.astype(np.float64)), np.exp(q_lp.astype(np.float64))
    pt, qt = np.clip(1 - p.sum(1), 1e-12, 1), np.clip(1 - q.sum(1), 1e-12, 1)
    return (p * (p_lp - q_lp)).sum(1) + pt * np.log(pt / qt)


def label_formats(docs: list[dict[str, Any]], vocab: int, work: Path, repeats: int) -> dict:
    results: dict[str, Any] = {}
    readers = {}
    for name, (fmt, k, kind) in LABELS.items():
        samples = [Sample(f"d{i}", 0, d["ids"][:1], d["ids"][1:], d["top_ids"][:, :k],
                          d["top_lps"][:, :k].astype(np.float32), d["sampled"].astype(np.float32),
                          "scored") for i, d in enumerate(docs)]
        attrs = ShardAttrs("bench", "f" * 64, vocab, k, {"mode": "score"}, label_format=fmt)
        if kind == "sampled":
            attrs = replace(attrs, label_kind="sampled", samples_per_position=50,
                            label_source_k=SOURCE_K)
            samples = [sampled_sample(s, 50, 0) for s in samples]
        path = work / f"{name.replace(' ', '_')}.h5"
        record = write_shard(path, 0, samples, attrs)
        m = Manifest("bench", "f" * 64, vocab, k, label_format=fmt, label_kind=kind,
                     samples_per_position=attrs.samples_per_position, shards={0: record})
        b = storage_bytes(work, m)
        reader = ShardReader(path)
        readers[name] = reader
        exact = np.concatenate([d["top_lps"] for d in docs])
        stored = np.concatenate([reader.sample(i)["topk_logprobs"] for i in range(len(reader))])
        ids = np.concatenate([reader.sample(i)["topk_ids"] for i in range(len(reader))])
        if kind == "topk":
            kl = kl_with_tail(stored.astype(np.float64), exact[:, :k])
            err = np.abs(stored.astype(np.float64) - exact[:, :k])
            error = {"mean_kl_stored_to_exact_topk_tail": float(kl.mean()),
                     "max_kl": float(kl.max()), "mean_abs_logprob_error": float(err.mean()),
                     "max_abs_logprob_error": float(err.max())}
        else:
            error = sampled_error(ids, stored, np.concatenate([d["top_ids"] for d in docs]), exact)
        results[name] = {"bytes_per_labelled_token": round(b["label_token"], 2),
                         "bytes_per_entry": round(b["topk_entry"], 3),
                         "entries_per_token": round(b["entries_per_token"], 2), **error}
    times: dict[str, list[float]] = {n: [] for n in LABELS}
    for _ in range(repeats):
        for name, reader in readers.items():
            start = time.perf_counter()
            for i in range(len(reader)):
                reader.sample(i)["topk_logprobs"].sum()  # touch the decoded rows
            times[name].append(time.perf_counter() - start)
    rows = sum(len(d["sampled"]) for d in docs)
    for name in LABELS:
        results[name]["label_rows_per_second"] = round(rows / statistics.median(times[name]))
        results[name]["read_seconds_runs"] = times[name]
    return results


def sampled_error(ids: np.ndarray, lps: np.ndarray, exact_ids: np.ndarray,
                  exact_lps: np.ndarray) -> dict[str, float]:
    """Total variation between counts / N and the exact top-256 + tail, per row, and the
    same for the fp16 top-20 renormalised (what top-k caching trains on), for scale."""
    tvd, top20 = [], []
    for r in range(len(ids)):
        p = dict(zip(exact_ids[r].tolist(), np.exp(exact_lps[r]).tolist()))
        p_tail = 1 - sum(p.values())
        est: dict[int, float] = {}
        for i, lp in zip(ids[r].tolist(), lps[r].tolist()):
            if np.isfinite(lp):
                est[i] = np.exp(lp)
        est_tail = 1 - sum(est.values())
        keys = set(p) | set(est)
        tvd.append(0.5 * (sum(abs(p.get(i, 0) - est.get(i, 0)) for i in keys)
                          + abs(p_tail - est_tail)))
        top = np.exp(exact_lps[r][:20]) / np.exp(exact_lps[r][:20]).sum()
        top20.append(0.5 * (np.abs(top - np.exp(exact_lps[r][:20])).sum()
                            + sum(np.exp(exact_lps[r][20:])) + p_tail))
    return {"mean_tvd_to_exact_top256_tail": float(np.mean(tvd)),
            "mean_tvd_renormalised_top20_to_exact": float(np.mean(top20))}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def explained_without_massive_rows(fit: np.ndarray, rank: int) -> float:
    """Explained variance of a rank-R basis fitted on the rows that are not massive."""
    norms = np.linalg.norm(fit, axis=1)
    return float(fit_basis(fit[norms <= MASSIVE * np.median(norms)], rank)[2].sum())


def hidden_formats(docs: list[dict[str, Any]], layers: tuple[int, ...], width: int) -> dict:
    fit_docs = max(1, len(docs) // 2)
    results: dict[str, Any] = {"fp16_bytes_per_token_layer": 2 * width,
                               "fit_tokens": sum(len(d["ids"]) for d in docs[:fit_docs]),
                               "eval_tokens": sum(len(d["ids"]) for d in docs[fit_docs:])}
    for layer in layers:
        fit = np.concatenate([d["hidden"][layer] for d in docs[:fit_docs]])
        held = np.concatenate([d["hidden"][layer] for d in docs[fit_docs:]])
        norms = np.linalg.norm(fit, axis=1)
        massive = norms > MASSIVE * np.median(norms)
        centred = fit - fit.mean(0)
        row: dict[str, Any] = {
            "massive_rows_fit": int(massive.sum()),
            "massive_rows_share_of_fit_variance": float((centred[massive] ** 2).sum()
                                                        / (centred ** 2).sum()),
            "fp16": {"bytes": 2 * width,
                     "cosine_mean": float(cosine(held.astype(np.float16).astype(np.float32),
                                                 held).mean())}}
        back = decode_int8(*encode_int8(held))
        c = cosine(back, held)
        row["int8"] = {"bytes": width + 4, "cosine_mean": float(c.mean()),
                       "cosine_min": float(c.min())}
        for rank in RANKS:
            if rank > min(fit.shape):
                continue
            mean, basis, explained = fit_basis(fit, rank)
            exact = project(held, mean, basis)
            c = cosine(reconstruct(decode_int8(*encode_int8(exact)), mean, basis), held)
            row[f"pca r={rank}"] = {
                "bytes": rank + 4, "bytes_vs_fp16": round((rank + 4) / (2 * width), 3),
                "cosine_mean": float(c.mean()), "cosine_p5": float(np.percentile(c, 5)),
                "cosine_mean_without_int8": float(cosine(reconstruct(exact, mean, basis),
                                                         held).mean()),
                "cosine_mean_on_fit_tokens_without_int8": float(cosine(reconstruct(
                    project(fit, mean, basis), mean, basis), fit).mean()),
                "explained_variance_fit": float(explained.sum()),
                "explained_variance_fit_without_massive_rows":
                    explained_without_massive_rows(fit, rank)}
        ok = [r for r in RANKS if row.get(f"pca r={r}", {}).get("cosine_mean", 0) >= 0.99]
        row["pca_rank_for_cosine_0.99"] = ok[0] if ok else None
        row["pca_bytes_vs_fp16_at_that_rank"] = round((ok[0] + 4) / (2 * width), 3) if ok else None
        results[f"layer {layer}"] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/storage.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="kd-bench-storage-"))
    docs, vocab, width = teacher_pass(args.docs, (15, 30))
    result = {
        "teacher": str(TEACHER), "vocab_size": vocab, "hidden_size": width,
        "documents": len(docs), "labelled_tokens": sum(len(d["sampled"]) for d in docs),
        "labels": label_formats(docs, vocab, work, args.repeats),
        "hidden": hidden_formats(docs, (15, 30), width),
        "quality_at_equal_bytes": "make bench-storage-quality (bench/results/storage_quality.json)",
    }
    write_result(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
