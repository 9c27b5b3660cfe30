#!/usr/bin/python3
"""Throughput of 1, 2, 3 celeriac workers on one Redis (a benchmark: prints, asserts nothing).

    /usr/bin/python3 compat/bench/fleet.py [--tasks N] [--max-workers K] [--celeriac PATH]

Each round pre-fills the queue with N examples.add tasks, starts k workers
(-c 1 each, different -n), and reports tasks/s from the first to the last
date_done the workers wrote. On one small machine the workers compete for the
same cores as Redis, so the curve flattens where CPU (or Redis) saturates.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from celery import Celery  # noqa: E402

from helpers import RedisServer, wait_exit, wait_for  # noqa: E402

REPO = HERE.parent.parent


def run_round(binary, plugin, redis, k, n, workdir):
    redis.client(0).flushall()
    app = Celery("fleet", broker=redis.url(0))
    with app.producer_or_acquire() as producer:
        ids = [app.send_task("examples.add", args=[i, i], producer=producer).id
               for i in range(n)]
    app.close()
    env = {key: v for key, v in os.environ.items() if not key.startswith("CELERY_")}
    procs = [subprocess.Popen([binary, "worker", "-b", redis.url(0), "--result-backend",
                               redis.url(1), "-c", "1", "-n", f"fleet{k}-{i}@%h", "-l", "warning",
                               "--plugin", plugin, "--without-heartbeat"],
                              stdout=subprocess.DEVNULL, stderr=open(workdir / f"w{k}-{i}.err", "wb"),
                              env=env, start_new_session=True) for i in range(k)]
    backend = redis.client(1)
    try:
        wait_for(lambda: backend.exists(f"celery-task-meta-{ids[-1]}") and
                 backend.dbsize() >= n, 300, f"{n} results with {k} worker(s)")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            if wait_exit(p, 20) is None:
                os.killpg(p.pid, signal.SIGKILL)
    done = []
    for i in range(0, n, 500):
        for raw in backend.mget([f"celery-task-meta-{t}" for t in ids[i:i + 500]]):
            done.append(datetime.fromisoformat(json.loads(raw)["date_done"]).timestamp())
    return (n - 1) / (max(done) - min(done))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--max-workers", type=int, default=3)
    parser.add_argument("--celeriac", default=os.environ.get("CELERIAC_BIN",
                                                             str(REPO / "build" / "celeriac")))
    args = parser.parse_args()
    plugin = str(Path(args.celeriac).with_name("examples.so"))
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-fleet-"))
    redis = RedisServer(workdir).start()
    try:
        print(f"{'workers':>8}  {'tasks/s':>9}  {'vs 1 worker':>11}")
        base = None
        for k in range(1, args.max_workers + 1):
            rate = run_round(args.celeriac, plugin, redis, k, args.tasks, workdir)
            base = base or rate
            print(f"{k:>8}  {rate:>9.0f}  {rate / base:>10.2f}×")
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
