"""The teacher stage: `kd teacher-labels` (`labels.py`), its hidden-state pass after the
engine shuts down (`hidden.py`) and the embedded teacher's one-time conversion
(`embedded_model.py`). The only place that imports vLLM.
"""
