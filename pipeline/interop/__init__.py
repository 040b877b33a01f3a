"""Formats of other trainers: exporting offline-kd labels to them, importing theirs.

Pure, CPU-only format logic (no vLLM, no torch): the plain Parquet view
(`parquet_view`), axolotl's pre-tokenized KD rows (`axolotl_rows`), DistillKit's
compressed-logit codec and rows (`distillkit_config`, `distillkit_codec`,
`distillkit_rows`) and the atomic Parquet sink they are written through
(`table_sink`). Modules here may import `pipeline.store`, `schemas`, numpy and
pyarrow; the CLI wiring (opening label sets, tokenizers, manifests) lives in
`stages/interop/`.
"""
