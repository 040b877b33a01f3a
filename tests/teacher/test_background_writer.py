import threading

import pytest

from pipeline.teacher.background_writer import BackgroundWriter


def test_jobs_are_written_and_committed_in_order_off_the_caller_thread():
    seen, threads = [], set()

    def write(job):
        threads.add(threading.current_thread().name)
        return job * 10

    with BackgroundWriter(write, seen.append) as w:
        for i in range(20):
            w.submit(i)
    assert seen == [i * 10 for i in range(20)]
    assert threads == {"shard-writer"}


def test_writer_failure_surfaces_in_the_caller():
    def write(job):
        if job == 2:
            raise OSError("disk full")
        return job

    committed = []
    w = BackgroundWriter(write, committed.append)
    with pytest.raises(RuntimeError, match="disk full"):
        for i in range(50):
            w.submit(i)
        w.close()
    assert committed == [0, 1]  # nothing after the failure is committed
