"""`kd add-text-layout OUT`: give an output written before schema v3 its text layout.

From the stored token ids and the teacher's tokenizer alone (no weights, no
engine): each token's byte length (`pipeline.teacher.text_layouts.TokenBytes`)
and each sample's regions, parsed back from ChatML markers
(`pipeline.teacher.chatml_layout`). The tokenizer is `--tokenizer`, else the
output's `tokenizer/` folder, else the manifest's teacher path; its fingerprint
must be the manifest's.

Every sample of every shard is parsed first, so an output with one sample that
cannot be parsed is refused untouched (naming the sample). Then each shard is
rewritten whole (`rewrite_with_layout`: copied as stored, plus the two
datasets, under a temporary name, renamed) and its new sha256 and size go into
the manifest, which is committed after every shard; the manifest becomes v3
with `text_layout: true` after the last. A killed run leaves some shards v3
under a v2 manifest (`kd verify` names them); the same command finishes the
job: a shard that holds the layout but not the manifest's checksum (rewritten,
then killed before the manifest commit) is checked in full (structure, values,
layout against its ids) and its new checksum recorded.

    kd add-text-layout data/labels/demo
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.store.atomic_commit import remove_stale_temps, sha256_file
from pipeline.store.fingerprint import tokenizer_fingerprint
from pipeline.store.manifest import Manifest, read_manifest, write_manifest
from pipeline.store.output_lock import OutputLock
from pipeline.store.shard_reader import ShardReader
from pipeline.store.text_layout import TextRegion
from pipeline.store.text_layout_datasets import (BYTE_LENGTHS, layout_errors, rewrite_with_layout,
                                                 teacher_tokenizer_source)
from pipeline.store.verify import check_structure, check_values
from pipeline.teacher.chatml_layout import ChatMarkers, LayoutUnparsable, upgraded_layout
from pipeline.teacher.text_layouts import TokenBytes
from schemas import SHARD_SCHEMA_VERSION


class LayoutRefused(ValueError):
    """The output cannot be given a text layout; the message says why (and what to do)."""


@dataclass
class LayoutSummary:
    """What one `kd add-text-layout` run did."""

    out: Path
    rewritten: int
    kept: int
    samples: int
    tokens: int
    added_bytes: int

    def line(self) -> str:
        return (f"add-text-layout: {self.rewritten} shard(s) rewritten, {self.kept} already had "
                f"it; {self.samples} samples, {self.added_bytes} bytes added "
                f"({self.added_bytes / max(self.tokens, 1):.2f} B/token) -> {self.out} "
                f"(schema v{SHARD_SCHEMA_VERSION})")


def load_tokenizer(out: Path, manifest: Manifest, given: str | None) -> Any:
    """The teacher's tokenizer, checked against the manifest's fingerprint."""
    from transformers import AutoTokenizer

    source = given or teacher_tokenizer_source(out, manifest.teacher)
    if source is None:
        raise LayoutRefused(f"{out}: no tokenizer in {out / 'tokenizer'} or at the teacher path "
                            f"{manifest.teacher}; pass --tokenizer DIR (the teacher's tokenizer files)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise LayoutRefused(f"--tokenizer {source}: does not load ({exc})") from exc
    if tokenizer_fingerprint(tokenizer) != manifest.tokenizer_fingerprint:
        raise LayoutRefused(f"--tokenizer {source}: its fingerprint is not the output's "
                            f"({manifest.tokenizer_fingerprint[:12]}...): another tokenizer's bytes "
                            "would not be these ids' text")
    return tokenizer


def shard_layouts(reader: ShardReader, mode: str, tb: TokenBytes, markers: ChatMarkers | None
                  ) -> Iterator[tuple[np.ndarray, list[TextRegion]]]:
    """(byte lengths, regions) of every sample of one shard, in order."""
    ids = reader.strings("samples/ids")
    for i, sid in enumerate(ids):
        s = reader.sample(i)
        try:
            yield upgraded_layout(tb, markers, sid, s["token_ids"].tolist(), s["prompt_length"],
                                  s["positions"].tolist(), mode)
        except LayoutUnparsable as exc:
            raise LayoutUnparsable(f"{reader.path}: {exc}") from exc


def adopt_rewritten(out: Path, m: Manifest, index: int, tb: TokenBytes) -> None:
    """A shard a killed run rewrote after its last manifest commit: checked in full (structure,
    values, layout against its ids), then its new sha256 and size go into the manifest."""
    rec = m.shards[index]
    path = out / rec.name
    if path.stat().st_size == rec.bytes and sha256_file(path) == rec.sha256:
        return
    reader = ShardReader(path)
    ids = reader.strings("samples/ids")
    errors = check_structure(reader) or check_values(reader) or layout_errors(
        reader, ids, True, tb.lengths)
    if errors:
        raise LayoutRefused(f"{path}: holds a text layout but differs from the manifest, and "
                            f"{errors[0]}; restore the output from a copy")
    rec.sha256, rec.bytes = sha256_file(path), path.stat().st_size
    write_manifest(out, m)


def refusal_of_format(out: Path, m: Manifest) -> str | None:
    if m.schema_version < 2:
        return (f"{out} is a schema v1 output (labels without positions): score its records again "
                "with kd teacher-labels --mode score to get a v3 output")
    if not m.complete:
        return f"{out}: the run is not complete; finish it (rerun its command) first"
    return None


def run_add_text_layout(out: str | Path, tokenizer_path: str | None = None) -> LayoutSummary:
    """Add the text layout to every shard of `out` that lacks it (module docstring)."""
    out = Path(out)
    with OutputLock(out):
        remove_stale_temps(out)
        m = read_manifest(out)
        summary = LayoutSummary(out, 0, 0, m.totals()["samples"], m.totals()["tokens"], 0)
        if m.text_layout:
            summary.kept = len(m.shards)
            return summary
        refusal = refusal_of_format(out, m)
        if refusal:
            raise LayoutRefused(refusal)
        tokenizer = load_tokenizer(out, m, tokenizer_path)
        tb, markers = TokenBytes.of(tokenizer), ChatMarkers.of(tokenizer)
        todo = [i for i in sorted(m.shards)
                if BYTE_LENGTHS not in ShardReader(out / m.shards[i].name).arrays]
        for index in sorted(set(m.shards) - set(todo)):
            adopt_rewritten(out, m, index, tb)
        for index in todo:  # every sample parses before any file changes
            for _ in shard_layouts(ShardReader(out / m.shards[index].name), m.mode, tb, markers):
                pass
        for index in todo:
            rec = m.shards[index]
            before = rec.bytes
            layouts = list(shard_layouts(ShardReader(out / rec.name), m.mode, tb, markers))
            lengths = (np.concatenate([lengths for lengths, _ in layouts]) if layouts
                       else np.zeros(0, np.int64))
            rewrite_with_layout(out / rec.name, lengths, [r for _, r in layouts],
                                SHARD_SCHEMA_VERSION)
            rec.sha256, rec.bytes = sha256_file(out / rec.name), (out / rec.name).stat().st_size
            write_manifest(out, m)
            summary.added_bytes += rec.bytes - before
            summary.rewritten += 1
        m.schema_version, m.text_layout = SHARD_SCHEMA_VERSION, True
        write_manifest(out, m)
        summary.kept = len(m.shards) - summary.rewritten
        return summary
