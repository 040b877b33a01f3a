"""The stages: thin wiring of `pipeline/` to the engines, mirroring its domains.

    stages/cli/      the `kd` command (one click group), the config-to-options mapping,
                     and the run control both stages share (SIGTERM preemption, exit codes)
    stages/teacher/  `kd teacher-labels`: vLLM generation, the hidden-state pass, the
                     embedded teacher's conversion
    stages/student/  `kd train-student` and `kd eval`: model building, the forward pass,
                     DDP/FSDP, the training loop, evaluation and the report

Only `stages/` imports vLLM or places models on devices.
"""
