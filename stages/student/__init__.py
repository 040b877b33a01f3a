"""The student stage: `kd train-student` (`train.py`) and `kd eval` (`evaluate.py`), with the
model built or derived from the teacher (`model.py`), the forward pass and losses
(`forward.py`), DDP/FSDP plumbing (`distributed.py`) and the report (`report.py`).
"""
