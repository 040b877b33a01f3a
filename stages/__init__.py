"""Thin stage entry points: the only code that imports vLLM or loads models onto devices."""
