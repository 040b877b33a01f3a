"""Named points of every commit protocol, where a test kills the process or fails a write.

Each commit (a shard, an index part, the manifest, a checkpoint, the exported
model) passes three points: `written` (the temporary file or directory is
complete, not yet fsynced), `fsynced` (about to be renamed into place) and
`renamed` (committed). Two environment variables, read here and nowhere else,
act on them:

    KD_CRASH_AT="renamed:shard-00001.h5"      SIGKILL this process there
    KD_FAIL_AT="written:manifest.json@3"      raise ENOSPC there (the 3rd time it is reached)

`<point>:<file name glob>[@<n>]`; n counts the matching passes of this process
(default 1). Outside tests neither is set and a pass costs two dict lookups.

    >>> from pipeline.store.fault_points import reach
    >>> reach("renamed", "shard-00000.h5")   # no variable set: nothing happens
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
from collections import Counter
from pathlib import Path

POINTS = ("written", "fsynced", "renamed")
_passes: Counter[tuple[str, str]] = Counter()


def parse(spec: str) -> tuple[str, str, int]:
    """"point:glob[@n]" -> (point, glob, n)."""
    point, _, rest = spec.partition(":")
    glob, _, nth = rest.partition("@")
    if point not in POINTS or not glob:
        raise ValueError(f"fault point {spec!r}: expected <{'|'.join(POINTS)}>:<glob>[@<n>]")
    return point, glob, int(nth or 1)


def reach(point: str, path: str | Path) -> None:
    """Pass fault point `point` for the file `path`; act if a variable names this pass."""
    for var in ("KD_CRASH_AT", "KD_FAIL_AT"):
        spec = os.environ.get(var)
        if not spec:
            continue
        want, glob, nth = parse(spec)
        name = Path(path).name
        if want != point or not fnmatch.fnmatch(name, glob):
            continue
        _passes[(var, spec)] += 1
        if _passes[(var, spec)] != nth:
            continue
        if var == "KD_CRASH_AT":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
