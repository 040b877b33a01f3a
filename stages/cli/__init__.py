"""The `kd` command line and what both stages share to run under it.

`main.py` is the click group (`kd = stages.cli.main:main`), `config_options.py`
maps a stage config's dataclass fields one-to-one onto click options, and
`preemption.py` turns SIGTERM into a clean stop with exit status 143.
"""
