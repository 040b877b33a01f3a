"""What the teacher stage puts into the store, as pure functions and small classes.

What lives here: prompt reading and rejects, the split of vLLM's flat
logprobs into top-k soft labels, per-sample confidence metrics and the
keep/drop filter (with the index rows that record each decision), the
shard scheduler and background writer, worker partitions and per-prompt
seeds, and random schema-valid outputs for tests and benchmarks.

May import: `pipeline.store`, `schemas`. Never vLLM, never `pipeline.student`.
"""
