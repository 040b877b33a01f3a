"""Check a model folder before a library reads it: there at all, and its weight files whole.

transformers reports a missing folder as a plain OSError about repo ids, and a
truncated safetensors file fails deep inside the vLLM worker process, where the
stage only learns that the engine did not start. Checked here first, both are
one line naming the file (`stages.cli.faults.EnvironmentFault`, exit 74):

- `looks_local`: a path (absolute, relative, or deeper than `org/name`) and
  not a hub id, so its absence is a fault and not a download to try;
- a `.safetensors` file must be as long as its own header says (8-byte header
  length, JSON header, then the tensors up to the largest end offset);
- a `.gguf` file must start with the GGUF magic.

    >>> looks_local("data/models/smollm2-135m-instruct"), looks_local("HuggingFaceTB/SmolLM2")
    (True, False)
    >>> import tempfile, pathlib, json, struct
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "model.safetensors"
    >>> header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    >>> _ = f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    >>> weights_problem(f) is None
    True
    >>> _ = f.write_bytes(f.read_bytes()[:-3])
    >>> weights_problem(f)
    'corrupt safetensors file: 5 bytes of tensor data, its header promises 8 (truncated or partly copied): copy the checkpoint again'
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from stages.cli.faults import EnvironmentFault

GGUF_MAGIC = b"GGUF"


def looks_local(name: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, relative to here, or deeper."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"corrupt safetensors file: {size} bytes, shorter than its header length field"
        length = struct.unpack("<Q", head)[0]
        if length > size - 8:
            return (f"corrupt safetensors file: its header claims {length} bytes, the file has "
                    f"{size} (truncated or partly copied): copy the checkpoint again")
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            return "corrupt safetensors file: its header is not JSON: copy the checkpoint again"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size - 8 - length < end:
        return (f"corrupt safetensors file: {size - 8 - length} bytes of tensor data, its header "
                f"promises {end} (truncated or partly copied): copy the checkpoint again")
    return None


def weights_problem(path: Path) -> str | None:
    """What is wrong with a weight file, or None (only what can be told without loading it)."""
    if path.suffix == ".safetensors":
        return safetensors_problem(path)
    if path.suffix == ".gguf":
        with open(path, "rb") as fh:
            if fh.read(4) != GGUF_MAGIC:
                return "unreadable GGUF file (no GGUF magic): copy or convert the checkpoint again"
    return None


def require_model_dir(name: str, flag: str) -> None:
    """Raise EnvironmentFault when a local model folder is missing or holds a broken weight file."""
    path = Path(name).expanduser()
    if not looks_local(name) and not path.exists():
        return  # a hub id: the library resolves it (from its cache, offline)
    if not path.is_dir():
        raise EnvironmentFault(f"no model folder there (moved, or not copied to this machine?): "
                               f"pass {flag} the checkpoint's current path", path)
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.gguf")):
        problem = weights_problem(weights)
        if problem:
            raise EnvironmentFault(problem, weights)
