"""Write an EAGLE-3 export in vllm-project/speculators' offline layout, row by row.

Each `add` writes `hidden_states/hs_{i}.safetensors` for row i at once (so memory
holds one sample's states) and keeps the row's ids and loss mask; `close` saves the
`datasets` table (`save_to_disk`, torch format, as speculators' preprocessing leaves
it) and `token_freq.pt`, the count of every loss-masked token id (what its
`--draft-vocab-size` mapping is built from). The caller commits the directory whole.

    >>> import numpy as np, tempfile, pathlib
    >>> from pipeline.interop.speculators_sink import SpeculatorsSink
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> s = {"token_ids": np.array([3, 4, 4]), "positions": np.array([1, 2]),
    ...      "hidden_2": np.ones((3, 8)), "hidden_9999": np.zeros((3, 8))}
    >>> with SpeculatorsSink(out, [2, 9999], "bf16") as sink:
    ...     sink.add(s)
    >>> sorted(p.name for p in (out / "hidden_states").iterdir()), dict(sink.token_freq)
    (['hs_0.safetensors'], {4: 2})
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from pipeline.interop.speculators_rows import dataset_row, hs_tensors

HS_DIR = "hidden_states"
TOKEN_FREQ = "token_freq.pt"


def hs_name(row: int) -> str:
    return f"hs_{row}.safetensors"


class SpeculatorsSink:
    """Rows in, speculators' directory out (see the module docstring)."""

    def __init__(self, out: str | Path, layers: list[int], hidden_dtype: str):
        self.out, self.layers, self.hidden_dtype = Path(out), layers, hidden_dtype
        (self.out / HS_DIR).mkdir(parents=True, exist_ok=True)
        self.columns: dict[str, list[Any]] = {"input_ids": [], "loss_mask": [], "seq_len": []}
        self.token_freq: Counter[int] = Counter()

    def __enter__(self) -> "SpeculatorsSink":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()

    @property
    def rows(self) -> int:
        return len(self.columns["seq_len"])

    def add(self, s: dict[str, Any]) -> None:
        row = dataset_row(s)
        save_file(hs_tensors(s, self.layers, self.hidden_dtype), self.out / HS_DIR / hs_name(self.rows))
        ids, mask = row["input_ids"], row["loss_mask"]
        self.token_freq.update(dict(zip(*np.unique(ids[mask == 1], return_counts=True))))
        for key, value in row.items():
            self.columns[key].append(value)

    def close(self) -> None:
        from datasets import Dataset, Features, Sequence, Value, disable_progress_bars

        disable_progress_bars()
        features = Features({"input_ids": Sequence(Value("int64")),
                             "loss_mask": Sequence(Value("int64")), "seq_len": Value("int64")})
        table = Dataset.from_dict(self.columns, features=features)
        table.set_format(type="torch")
        table.save_to_disk(str(self.out))
        self.token_freq = Counter({int(k): int(v) for k, v in self.token_freq.items()})
        torch.save(dict(self.token_freq), self.out / TOKEN_FREQ)
