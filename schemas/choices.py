"""The allowed values of every choice flag, defined once.

The stage configs validate against these tuples and list them per field in
their `CHOICES` (which the CLI turns into `click.Choice` options); the loss
functions, codecs and readers in `pipeline/` import them from here rather than
keeping copies. A new loss, tail, format or mode is one edit in this file (plus
the code that implements it).

    >>> from schemas.choices import KD_LOSSES, LABEL_FORMATS
    >>> "jsd" in KD_LOSSES, LABEL_FORMATS
    (True, ('fp16', 'q8', 'q8poly'))
"""

from __future__ import annotations

# Teacher stage (`kd teacher-labels`, `kd student-samples`)
MODES = ("generate", "score")
LABEL_FORMATS = ("fp16", "q8", "q8poly")
HIDDEN_FORMATS = ("fp16", "int8", "pca")
LABEL_KINDS = ("topk", "sampled")
ENGINE_DTYPES = ("auto", "float32", "bfloat16", "float16")

# Student stage (`kd train-student`, `kd eval`)
KD_LOSSES = ("forward_kl", "reverse_kl", "jsd", "tvd")
TAILS = ("bucket", "renormalize")
HIDDEN_LOSSES = ("mse", "cosine")
STUDENT_KINDS = ("from-teacher", "narrow")
TRAINING_DTYPES = ("auto", "float32", "bfloat16")
NON_FINITE_POLICIES = ("stop", "skip")
VERIFY_MODES = ("lazy", "full")
TEMPERATURE_SCHEDULES = ("constant", "linear", "cosine")
ALARM_POLICIES = ("stop", "warn")
REPORT_TO = ("tensorboard", "wandb", "none")
PHASE_KINDS = ("hidden", "kd", "full", "qat")
CROSS_TOKENIZER_LOSSES = ("alm",)
