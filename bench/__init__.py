"""Benchmarks (`make bench-*`): speed and memory targets, measured side by side in one process."""
