"""Resumable training checkpoints, written atomically.

A checkpoint is a directory `checkpoints/step-0000100/` holding `state.pt`
(model, optimizer, adapter, RNG states, data cursor, step) and `meta.json`.
It is written as `.step-0000100.tmp/`, fsynced and renamed, so a crash while
saving leaves the previous checkpoint as the latest; the oldest are pruned.

    >>> from pipeline.student.checkpoint import latest_checkpoint
    >>> latest_checkpoint("/nonexistent") is None
    True
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.store.atomic_commit import commit_path

PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prime_adamw_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter the AdamW state a first step would create (step 0, zero moments).

    AdamW creates a parameter's state at its first update; one frozen so far (the
    head in a `hidden` phase) would be missing from a checkpoint, which a strict
    load refuses. Primed state is what the first step starts from anyway, so
    training is bit-identical.
    """
    from torch.optim.optimizer import _get_scalar_dtype

    for group in optimizer.param_groups:
        for p in group["params"]:
            if not optimizer.state[p]:
                optimizer.state[p] = {"step": torch.tensor(0.0, dtype=_get_scalar_dtype()),
                                      "exp_avg": torch.zeros_like(p),
                                      "exp_avg_sq": torch.zeros_like(p)}


def save_checkpoint(root: str | Path, step: int, state: dict[str, Any], meta: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint `step` under `root` atomically; keep the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".{checkpoint_name(step)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state | {"rng": rng_state(), "step": step}, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps(meta | {"step": step}, indent=1) + "\n")
    commit_path(tmp, final)
    for old in sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """Newest complete checkpoint directory, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob(f"{PREFIX}*") if (p / "state.pt").is_file())
    return done[-1] if done else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    # weights_only=False: the state holds RNG tuples and the data cursor, written by us.
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
