#!/usr/bin/python3
"""celeriac end to end: a real Celery producer, a private Redis, the C worker.

    /usr/bin/python3 compat/demo.py [DOCUMENT]      (compat/demo.sh builds first)

1. starts a private redis-server on a free 127.0.0.1 port, data in a temp dir;
2. starts build/celeriac (or $CELERIAC_BIN) as the worker;
3. sends DOCUMENT (default compat/data/quarterly-report.md) with the unmodified
   Python Celery client: app.send_task("process_document", ...);
4. prints every progress update as it arrives, then the result as JSON;
5. stops the worker and redis. Exit status 0 on success, 1 on any failure.
"""
import argparse
import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

COMPAT = Path(__file__).resolve().parent
sys.path.insert(0, str(COMPAT))

from celery import Celery  # noqa: E402

from helpers import RedisServer, tail, wait_exit, wait_for  # noqa: E402

REPO = COMPAT.parent
DEFAULT_DOC = COMPAT / "data" / "quarterly-report.md"


def pretty(doc):
    """Valid JSON, one top-level key per line, each value compact."""
    if not isinstance(doc, dict):
        return json.dumps(doc, indent=2, ensure_ascii=False)
    rows = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in doc.items()]
    return "{\n" + ",\n".join(rows) + "\n}"


def start_worker(binary, redis, workdir):
    log = workdir / "celeriac.log"
    cmd = [binary, "worker", "-b", redis.url(0), "--result-backend", redis.url(1),
           "-c", "2", "-n", "demo@%h", "-l", "info", "--logfile", str(log),
           "--task-track-started", "--progress-interval", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "celeriac.stderr", "wb"), env=env,
                            start_new_session=True)

    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with status {proc.returncode}:\n"
                               + tail(log, 30) + "\n" + tail(workdir / "celeriac.stderr", 30))
        return log.exists() and re.search(r"@\S* ready\.", log.read_text(errors="replace"))

    wait_for(ready, 20, "the worker to log 'ready.'")
    return proc, log


def stop_worker(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        if wait_exit(proc, 20) is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def run(doc, binary, timeout):
    workdir = Path(tempfile.mkdtemp(prefix="celeriac-demo-"))
    redis = RedisServer(workdir)
    worker = None
    try:
        redis.start()
        print(f"redis-server   127.0.0.1:{redis.port} (data in {redis.dir})")
        worker, log = start_worker(binary, redis, workdir)
        print(f"celeriac       pid {worker.pid}, log {log}")

        # The producer side, exactly as in a FastAPI/Flask app: plain Celery.
        app = Celery("demo", broker=redis.url(0), backend=redis.url(1))
        app.conf.update(task_serializer="json", result_serializer="json",
                        accept_content=["json"])
        data = doc.read_bytes()
        task_id = str(uuid.uuid4())
        # Every state change is also PUBLISHed on celery-task-meta-<id> (that is how
        # AsyncResult.get() waits); listening there shows even sub-millisecond stages.
        updates = app.backend.client.pubsub(ignore_subscribe_messages=True)
        updates.subscribe(f"celery-task-meta-{task_id}")
        result = app.send_task("process_document", task_id=task_id,
                               args=[base64.b64encode(data).decode()],
                               kwargs={"filename": doc.name, "document_type": "report"})
        print(f"sent           process_document({doc.name}, {len(data)} bytes) "
              f"task id {result.id}")

        shown = []
        started = time.monotonic()

        def show(state, info):
            if shown and shown[-1] == (state, info) or state == "PENDING" and shown:
                return
            shown.append((state, info))
            elapsed = time.monotonic() - started
            if state == "PROCESSING" and isinstance(info, dict):
                print(f"  {elapsed:6.2f}s  {state:<10} {info.get('progress', '?'):>3}%  "
                      f"{info.get('message', '')}")
            else:
                print(f"  {elapsed:6.2f}s  {state}")

        def drain(wait):
            msg = updates.get_message(timeout=wait)
            while msg is not None:
                if msg["type"] == "message":
                    meta = json.loads(msg["data"])
                    show(meta["status"], meta.get("result"))
                msg = updates.get_message(timeout=0)

        # Updates are printed from the PUBLISH stream, which keeps their order;
        # polling the stored state (as a dashboard would) only tells when to stop.
        state = "PENDING"
        while state not in ("SUCCESS", "FAILURE", "REVOKED"):
            drain(0.1)
            state = result.backend.get_task_meta(result.id)["status"]
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"no result after {timeout}s (last state {state})")
        drain(0.2)  # what was published just before the final state was read
        updates.close()

        if state != "SUCCESS":
            print(f"task failed: {state}: {result.result!r}", file=sys.stderr)
            if result.traceback:
                print(result.traceback, file=sys.stderr)
            return 1
        if shown[-1][0] != "SUCCESS":
            show("SUCCESS", None)
        print("result:")
        print(pretty(result.result))
        app.close()
        status = stop_worker(worker)
        worker = None
        print(f"worker stopped (exit status {status})")
        return 0 if status == 0 else 1
    finally:
        if worker is not None:
            stop_worker(worker)
        redis.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("document", nargs="?", type=Path, default=DEFAULT_DOC)
    parser.add_argument("--bin", default=os.environ.get("CELERIAC_BIN",
                                                        str(REPO / "build" / "celeriac")))
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    if not os.access(args.bin, os.X_OK):
        print(f"demo: no worker binary at {args.bin}; run compat/demo.sh to build it",
              file=sys.stderr)
        return 1
    try:
        return run(args.document, args.bin, args.timeout)
    except Exception as exc:  # noqa: BLE001 - a demo reports, it does not trace back
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
