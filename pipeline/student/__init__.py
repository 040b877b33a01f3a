"""What the student stage does with a store, as pure functions and modules.

What lives here: the label set (the verified union of outputs, indexed at 24
bytes a sample), batch planning by token budget and the held-out split, the
memmap-backed batch dataset, the distillation losses and the fused LM head,
evaluation metrics, checkpoints, the learning-rate schedule and the PNG plot.

May import: `pipeline.store`, `schemas`, torch. Never `pipeline.teacher`;
models are placed on devices only in `stages/student/`.
"""
