"""The atomic-commit protocol: every file or directory the pipeline commits appears whole or not at all.

Every file is written under a hidden temporary name in the same directory,
flushed, fsynced and renamed, then the directory is fsynced: a crash leaves
either the old file or the new one, never a torn one (`commit_path`, with the
fault points of `pipeline.store.fault_points`). The sha256 of the committed file
(`sha256_file`) is what the manifest records and `kd verify` checks.

    >>> from pipeline.store.atomic_commit import sha256_file
    >>> len(sha256_file(__file__))
    64
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from pipeline.store.fault_points import reach

TMP_SUFFIX = ".tmp"


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def temp_path_for(path: str | Path) -> Path:
    """Hidden temporary sibling of `path`, unique per process (readers never list dotfiles)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fresh_temp_dir(path: str | Path) -> Path:
    """An empty temporary directory to build `path` in, then `commit_path` it (a dead run's
    leftover of this name is removed first)."""
    tmp = temp_path_for(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_path(tmp: str | Path, final: str | Path) -> None:
    """fsync `tmp` (a file, or every file of a directory), atomically rename it to `final`,
    then fsync the parent directory, passing the fault points `written`, `fsynced`, `renamed`.

    A directory replaces `final` whole: os.replace cannot replace a non-empty
    directory, so an existing one is removed first (a crash between the two
    leaves `final` missing, never torn).
    """
    tmp, final = Path(tmp), Path(final)
    reach("written", final)
    for f in [tmp] if tmp.is_file() else [p for p in tmp.rglob("*") if p.is_file()]:
        fsync_path(f)
    reach("fsynced", final)
    if tmp.is_dir():
        shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_path(final.parent)
    reach("renamed", final)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new content, never a mix."""
    tmp = temp_path_for(path)
    tmp.write_text(text)
    commit_path(tmp, path)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temporary files a killed run left behind; return what was removed."""
    removed = []
    for p in Path(directory).glob(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
