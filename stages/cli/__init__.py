"""The `kd` command line and what both stages share to run under it.

`main.py` is the click group (`kd = stages.cli.main:main`), `config_options.py`
maps a stage config's dataclass fields one-to-one onto click options,
`preemption.py` turns SIGTERM into a clean stop with exit status 143, and
`faults.py` turns an environment fault (disk, permissions, I/O, memory) into one
line with what is committed and the command that resumes (exit status 74).
"""
