"""The label store: one output directory of shards, index parts and a manifest.

What lives here: the in-memory `Sample`, the shard writer and its memmap
reader, the codec registry (`codecs/`: one object per label format, label kind,
hidden-state format and optional per-row dataset), the manifest (the commit
point), the per-sample index, the atomic-commit protocol (`atomic_commit`:
checksums and crash-safe file replacement) with its named fault points, the
writer lock of an output directory, stable fingerprints, verification (`kd verify` and every
reader run the same `verify_outputs`), the cache of shards verified in full,
and the summary `kd inspect` prints.

May import: `schemas` only. Both stages use the store; the store uses neither.
"""
