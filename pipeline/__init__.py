"""offline-kd library: the pure logic of both stages, importable and testable on a CPU.

Three domains, one folder each; dependencies run one way:

    schemas/           the on-disk contract and the stage configs (imports nothing of ours)
      ^
    pipeline/store/    the label store: write, read, verify and describe an output directory
      ^         ^
    pipeline/teacher/  pipeline/student/
    what the teacher   what the student stage does with a store: the label set,
    stage puts in it:  batches, losses, the fused head, evaluation metrics,
    prompts, soft      checkpoints
    labels, filters,
    scheduling

The teacher writes a shard with `pipeline.store.shard_writer.write_shard`; the
student reads a batch through `pipeline.student.batches.PlannedBatches`; the
contract between them is `schemas/shard_v1.json` (prose: `schemas/shard_v1.md`),
checked by `pipeline.store.verify`. `pipeline/machine.py` describes the machine a
report or benchmark ran on, for both.

Nothing here imports vLLM, places a model on a device or imports `stages/`;
`stages/` wires these pieces to the engines.
"""
