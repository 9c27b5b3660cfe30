"""Several celeriac workers on one broker: every task runs exactly once.

A fleet shares one queue the way Python workers do. This test fills the queue
while three workers (different -n, one with --task-acks-late) consume it with a
2 s visibility timeout and restore scans every 0.5 s, and tasks that keep
prefetched messages waiting longer than that; it checks from the workers' own
logs that each task id ran exactly once and that every worker took part. Throughput as workers are added is measured by compat/bench/fleet.py (a
benchmark, not a test: no timing is asserted here).
"""
import collections
import re

import pytest

from conftest import WORKER_KIND, close_celery_app, make_celery_app
from helpers import wait_for

pytestmark = pytest.mark.skipif(WORKER_KIND == "python", reason="celeriac fleet")

TASKS = 60
SUCCEEDED = re.compile(r"Task examples\.sleep\[([0-9a-f-]+)\] succeeded")
# Every worker of a fleet must use the same visibility timeout (as with Celery).
SHORT_VT = ["--visibility-timeout", "2", "--unacked-restore-interval", "0.5",
            "--prefetch-multiplier", "8"]


def test_fleet_shares_a_queue_exactly_once(redis_factory, make_worker):
    redis = redis_factory()
    workers = [
        make_worker(redis, name="fleet1", concurrency=2, extra=SHORT_VT),
        make_worker(redis, name="fleet2", concurrency=2, extra=SHORT_VT + ["--task-acks-late"]),
        make_worker(redis, name="fleet3", concurrency=1, extra=SHORT_VT),
    ]
    app = make_celery_app(redis)
    try:
        # 60 x 0.3 s over 5 processes, 8 prefetched per process: the last
        # prefetched messages wait ~2.4 s, longer than the visibility timeout.
        results = [app.send_task("examples.sleep", args=[0.3]) for _ in range(TASKS)]
        for r in results:
            assert r.get(timeout=120) == 0.3
        broker = redis.client(0)
        wait_for(lambda: broker.llen("celery") == 0 and broker.hlen("unacked") == 0, 20,
                 "the queue and unacked to drain")
    finally:
        close_celery_app(app)

    # As in Celery, a pool process may store a result before its line is logged.
    wait_for(lambda: sum(len(SUCCEEDED.findall(w.logfile.read_text(errors="replace")))
                         for w in workers) >= TASKS, 20, "every succeeded line in the logs")
    runs = collections.Counter()
    per_worker = {}
    for w in workers:
        ids = SUCCEEDED.findall(w.logfile.read_text(errors="replace"))
        per_worker[w.name] = len(ids)
        runs.update(ids)
    expected = {r.id for r in results}
    assert set(runs) == expected, "some task never ran"
    twice = {tid: n for tid, n in runs.items() if n > 1}
    assert not twice, f"tasks ran more than once: {list(twice.items())[:5]}"
    assert all(n > 0 for n in per_worker.values()), f"a worker took no task: {per_worker}"
    assert sum(per_worker.values()) == TASKS
