"""A rank that fails stops every rank within seconds, each with the failed rank's error, without a launcher
that watches them."""

from __future__ import annotations

import time

from tests.parallel.launch import start
from tests.parallel.workers import failing_worker

DEADLINE_S = 30.0  # far below the collective timeout (300 s): the ranks stop because they are told, not timed out


def test_a_failing_rank_stops_every_rank_with_its_error(tmp_path, capfd):
    processes = start(failing_worker, 2, str(tmp_path))
    begin = time.monotonic()
    for process in processes:
        process.join(timeout=max(0.1, DEADLINE_S - (time.monotonic() - begin)))
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, "a rank still runs after the other failed"
    assert all(process.exitcode != 0 for process in processes), [p.exitcode for p in processes]
    assert not list(tmp_path.glob("rank*-finished"))
    errors = capfd.readouterr().err
    assert "rank 1: rank one's velocity is broken" in errors
    assert "rank 0 stops too" in errors or errors.count("rank one's velocity is broken") >= 2
