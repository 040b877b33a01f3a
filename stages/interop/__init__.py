"""`kd export` and `kd import`: thin wiring of `pipeline.interop` to label sets, tokenizers and outputs."""
