"""What an export format's writer put into its temporary directory, and the samples it walks.

Shared by `stages.interop.label_export` (the Parquet formats) and
`stages.interop.export_speculators`, so neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from pipeline.student.label_set import LabelSet


@dataclass
class Written:
    """What a format's writer put into the temporary directory."""

    row_ids: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    samples: int = 0
    labelled: int = 0
    split: int = 0

    def count(self, s: dict[str, Any], split: bool = False) -> None:
        self.samples, self.labelled = self.samples + 1, self.labelled + len(s["positions"])
        self.split += split


def labelled_samples(labels: LabelSet) -> Iterator[tuple[str, dict[str, Any]]]:
    """(sample id, `ShardReader.sample` dict) of every sample, shard by shard."""
    for s in range(len(labels.shard_paths)):
        reader = labels.open_shard(s)
        for i, sample_id in enumerate(reader.strings("samples/ids")):
            yield sample_id, reader.sample(i)
