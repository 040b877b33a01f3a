"""offline-kd library: pure logic (prompt reading, soft labels, shards, manifest, verification).

Nothing here imports vLLM or places a model on a device; `stages/` wires these
pieces to the engines. Everything is importable and testable on a CPU.
"""
