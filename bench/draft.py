"""Benchmark: EAGLE-3 draft-model training data from the teacher run (`--hidden-layers eagle3`).

Three measurements on the embedded teacher (SmolLM2-135M-Instruct, 30 blocks, width 576):

1. quality of the storage dtypes on the four eagle3 states (inputs of blocks 2, 15, 27 and
   the last block's output before the final norm), teacher-forced over corpus documents
   with transformers in float32 (the exact reference): int8 (offline-kd's square-root
   companded, one scale per token row and layer), fp8 per token across the four layers
   (speculators' merged layout), fp8 per token and layer, and bf16; per layer the cosine
   to the exact state, and the logits rebuilt through the teacher's final norm and head
   from the stored pre-norm state against the exact logits (top-1 agreement, KL);
2. bytes per token of a 4-layer capture: stored in the shards (fp16, int8) and exported
   for speculators (bf16, fp8), measured from the files, and projected to ShareGPT-68k
   at hidden size 4096 against the figures the issue quotes;
3. capture throughput: `kd teacher-labels` without hidden states against the same run with
   `--hidden-layers eagle3` (one warm engine, runs interleaved, every run kept).

Writes bench/results/draft.json with the machine and the command.

    python -m bench.draft                      # 16 documents, 32 prompts x 64 tokens, 2 repeats
    python -m bench.draft --docs 2 --prompts 4 --max-tokens 8 --repeats 1    # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.interop.speculators_rows import fp8_per_token
from pipeline.machine import describe_machine
from pipeline.store.codecs.hidden_int8 import decode_int8, encode_int8
from pipeline.store.manifest import read_manifest
from pipeline.store.summary import storage_bytes
from schemas.eagle3 import PRE_NORM_LAST, eagle3_layers
from schemas.interop_config import ExportConfig
from schemas.teacher_config import TeacherConfig
from stages.interop.label_export import run_export
from stages.teacher.hidden import pre_norm_capture
from stages.teacher.labels import EngineSource, run_teacher_labels

TEACHER = Path("data/models/smollm2-135m-instruct")
CORPUS = Path("data/corpus/train.jsonl")
WINDOW = 256
SHAREGPT = {
    "source": "EAGLE issue #30 as quoted in offline-kd issue 26: 740 GB for ShareGPT-68k at hidden size 4096",
    "gb": 740, "hidden_size": 4096,
    "assumption": "the 740 GB is one fp16 state per token (EAGLE-1's capture), so the token count "
                  "is 740e9 / (2 x 4096)",
}

def exact_states(docs: int) -> tuple[Any, list[dict[int, torch.Tensor]]]:
    """The teacher and, per corpus document, its float32 eagle3 states."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TEACHER)
    model = AutoModelForCausalLM.from_pretrained(TEACHER, dtype=torch.float32).eval()
    layers = eagle3_layers(model.config.num_hidden_layers)
    texts = [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()[:docs]]
    out = []
    with torch.no_grad(), pre_norm_capture(model, True) as pre_norm:
        for text in texts:
            pre_norm.clear()
            ids = tok(text, add_special_tokens=False)["input_ids"][:WINDOW]
            states = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            out.append({layer: (pre_norm[0] if layer == PRE_NORM_LAST else states[layer])[0]
                        for layer in layers})
    return model, out

def fp8_decoded(x: torch.Tensor) -> torch.Tensor:
    values, scale = fp8_per_token(x)
    return values.float() * scale

def decoders(stack: torch.Tensor) -> dict[str, torch.Tensor]:
    """[tokens, 4, H] exact -> each dtype's decoded float32 [tokens, 4, H]."""
    layers = range(stack.shape[1])
    int8 = torch.stack([torch.from_numpy(decode_int8(*encode_int8(stack[:, i].numpy())))
                        for i in layers], 1)
    return {"int8 (per token and layer)": int8, "fp8 (per token across layers)": fp8_decoded(stack),
            "fp8 (per token and layer)": torch.stack([fp8_decoded(stack[:, i]) for i in layers], 1),
            "bf16": stack.bfloat16().float()}

def quality(model: Any, docs: list[dict[int, torch.Tensor]]) -> dict[str, Any]:
    layers = list(docs[0])
    cos: dict[str, list[torch.Tensor]] = {}
    top1: dict[str, list[torch.Tensor]] = {}
    kl: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for d in docs:
            stack = torch.stack([d[layer] for layer in layers], 1)
            exact = model.lm_head(model.model.norm(stack[:, -1])).log_softmax(-1)
            for name, back in decoders(stack).items():
                cos.setdefault(name, []).append(torch.nn.functional.cosine_similarity(back, stack, dim=-1))
                logp = model.lm_head(model.model.norm(back[:, -1])).log_softmax(-1)
                top1.setdefault(name, []).append(logp.argmax(-1) == exact.argmax(-1))
                kl.setdefault(name, []).append((exact.exp() * (exact - logp)).sum(-1))
    out = {}
    for name in cos:
        c, k = torch.cat(cos[name]), torch.cat(kl[name]).double()
        out[name] = {
            "cosine_mean": {str(layer): float(c[:, i].mean()) for i, layer in enumerate(layers)},
            "cosine_min": {str(layer): float(c[:, i].min()) for i, layer in enumerate(layers)},
            "pre_norm_logits_top1_agreement": float(torch.cat(top1[name]).float().mean()),
            "pre_norm_logits_kl_mean": float(k.mean()), "pre_norm_logits_kl_max": float(k.max()),
        }
    return {"tokens": sum(len(d[layers[0]]) for d in docs), "layers": layers, "dtypes": out}

class WarmEngine(EngineSource):
    """One engine for every run (released by the caller at the end)."""

    def release(self) -> None:
        pass

def capture_runs(prompts: int, max_tokens: int, repeats: int, tmp: Path) -> dict[str, Any]:
    base = dict(teacher=str(TEACHER), prompts="data/prompts/demo.jsonl", limit=prompts,
                max_tokens=max_tokens, top_k=20, max_model_len=1024, shard_size=32,
                enforce_eager=True, min_mean_logprob=None, drop_truncated=False)
    engine = WarmEngine(TeacherConfig(out=str(tmp / "warm"), **base).validate())
    run_teacher_labels(TeacherConfig(out=str(tmp / "warm"), **{**base, "limit": 4}), engine)
    runs: list[dict[str, Any]] = []
    for r in range(repeats):
        for name, layers in (("no hidden states", None), ("eagle3", "eagle3")):
            out = tmp / f"{name.replace(' ', '_')}-{r}"
            s = run_teacher_labels(TeacherConfig(out=str(out), hidden_layers=layers, **base), engine)
            seconds = s.generation.seconds + s.hidden_seconds
            runs.append({"run": name, "repeat": r, "completion_tokens": s.generation.completion_tokens,
                         "tokens": s.manifest.totals()["tokens"],
                         "generation_seconds": s.generation.seconds, "hidden_seconds": s.hidden_seconds,
                         "completion_tokens_per_second": s.generation.completion_tokens / seconds,
                         "hidden_stage_tokens_per_second_model_load_included": (
                             s.manifest.totals()["tokens"] / s.hidden_seconds
                                                           if layers else None),
                         "out": str(out)})
    EngineSource.release(engine)
    ratio = [e["completion_tokens_per_second"] / n["completion_tokens_per_second"]
             for n, e in zip(runs[::2], runs[1::2])]
    return {"settings": base, "runs": runs, "eagle3_vs_no_hidden_throughput": ratio}

def bytes_per_token(eagle3_out: Path, tmp: Path) -> dict[str, Any]:
    """Per token of a 4-layer capture: the shard's hidden datasets (int8 as stored, and the
    fp16 it would take), and speculators' hs files in bf16 and fp8."""
    m = read_manifest(eagle3_out)
    tokens = m.totals()["tokens"]
    stored = storage_bytes(eagle3_out, m)["hidden_layer_token"] * len(m.hidden_layers)
    out = {"tokens": tokens, "layers": len(m.hidden_layers), "hidden_size": m.hidden_size,
           f"stored {m.hidden_format}": stored, "stored fp16 (2 bytes a value)": 2 * 4 * m.hidden_size}
    for dtype in ("bf16", "fp8"):
        export = tmp / f"spec-{dtype}"
        run_export(ExportConfig(labels=(str(eagle3_out),), format="speculators", out=str(export),
                                hidden_dtype=dtype))
        size = sum(p.stat().st_size for p in (export / "hidden_states").iterdir())
        out[f"speculators {dtype} (hs files, token_ids and headers included)"] = size / tokens
    return out

def projection(per_token: dict[str, Any]) -> dict[str, Any]:
    """ShareGPT-68k at hidden 4096, scaling the measured per-value overheads to that width."""
    h, width = SHAREGPT["hidden_size"], per_token["hidden_size"]
    tokens = SHAREGPT["gb"] * 1e9 / (2 * h)
    per_value = {"fp16": 2 * 4 * h, "bf16": 2 * 4 * h, "int8": 4 * (h + 4), "fp8": 4 * h + 4}
    return {**SHAREGPT, "implied_tokens": tokens,
            "eagle3_4_layer_bytes_per_token_at_4096": per_value,
            "projected_gb": {k: v * tokens / 1e9 for k, v in per_value.items()},
            "check_at_measured_width": {"int8": 4 * (width + 4), "fp8": 4 * width + 4}}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=16, help="corpus documents for the quality part")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/results/draft.json")
    args = parser.parse_args()
    start = time.time()
    model, docs = exact_states(args.docs)
    q = quality(model, docs)
    del model, docs
    with tempfile.TemporaryDirectory(prefix="bench-draft-") as tmp:
        capture = capture_runs(args.prompts, args.max_tokens, args.repeats, Path(tmp))
        eagle3 = next(Path(r["out"]) for r in capture["runs"] if r["run"] == "eagle3")
        sizes = bytes_per_token(eagle3, Path(tmp))
    result = {"machine": describe_machine(), "command": " ".join(["python -m bench.draft", *sys.argv[1:]]),
              "teacher": str(TEACHER), "quality": q, "bytes_per_token": sizes,
              "sharegpt_68k": projection(sizes), "capture": capture,
              "seconds": time.time() - start}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "capture")}, indent=1))

if __name__ == "__main__":
    main()
