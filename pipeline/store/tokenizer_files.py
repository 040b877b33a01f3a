"""The teacher's tokenizer files, stored in the output so a label set stands on its own.

The teacher stage copies the files that define the teacher's tokenizer (and
the teacher's `config.json`, which a `narrow` student is shaped from) into
`<out>/tokenizer/`, and the manifest lists each with its sha256
(`Manifest.tokenizer_files`, checked by `kd verify`). Readers load the
tokenizer from there when present, else from the teacher path the manifest
names, so a label set copied to another machine trains, evaluates and
exports without the teacher's checkpoint. Only a `from-teacher` student still
needs the teacher's weights.

Every helper that adds to a label set's tokenizer relies on this exact folder
name: `TOKENIZER_DIR`.

    >>> import tempfile, pathlib
    >>> teacher = pathlib.Path(tempfile.mkdtemp()); out = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (teacher / "tokenizer.json").write_text("{}")
    >>> _ = (teacher / "model.safetensors").write_bytes(b"weights are not copied")
    >>> sorted(copy_tokenizer_files(teacher, out))
    ['tokenizer/tokenizer.json']
    >>> stored_tokenizer_dir(out) == out / "tokenizer"
    True
    >>> stored_tokenizer_dir(tempfile.mkdtemp()) is None
    True
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.store.atomic_commit import sha256_file

TOKENIZER_DIR = "tokenizer"
"""The folder of an output that holds the teacher's tokenizer files (never renamed)."""
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json", "chat_template.jinja", "chat_template.json",
    "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model", "config.json",
)
"""What is copied when the teacher has it: the tokenizer (fast and slow forms), its chat
template when kept apart, the generation config, and the model config (architecture only:
what a `narrow` student is shaped from and what AutoTokenizer falls back on)."""


def stored_tokenizer_dir(out: str | Path) -> Path | None:
    """`<out>/tokenizer/` when it holds a tokenizer, else None (outputs written before it existed)."""
    folder = Path(out) / TOKENIZER_DIR
    if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json",
                                                  "tokenizer.model", "vocab.json")):
        return folder
    return None


def copy_tokenizer_files(teacher: str | Path, out: str | Path) -> dict[str, str]:
    """Copy the teacher's tokenizer files into `<out>/tokenizer/`; {path in out: sha256}.

    A teacher given as a hub id (no local directory) copies nothing. Each file is
    written under a temporary name and renamed, so a killed run leaves no torn copy.
    """
    teacher, folder = Path(teacher), Path(out) / TOKENIZER_DIR
    if not teacher.is_dir():
        return {}
    listed = {}
    for name in TOKENIZER_FILES:
        source = teacher / name
        if not source.is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        shutil.copyfile(source, tmp)
        os.replace(tmp, folder / name)
        listed[f"{TOKENIZER_DIR}/{name}"] = sha256_file(folder / name)
    return listed


def tokenizer_source(out: str | Path, teacher: str) -> tuple[str, str]:
    """(where to load the labels' tokenizer from, which it is: `stored` or `teacher path`)."""
    stored = stored_tokenizer_dir(out)
    return (str(stored), "stored") if stored is not None else (teacher, "teacher path")
