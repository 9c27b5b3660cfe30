"""The real Celery worker app that validates compat/test_semantics.py.

The examples.* tasks behave like celeriac's examples plugin (tests/plugins/examples.c),
including what matters for time limits: examples.sleep gives up at the soft time
limit (SoftTimeLimitExceeded), examples.progress ignores it (only the hard limit
stops it). Settings celeriac takes as flags come from REF_* environment variables,
which test_semantics.py sets when COMPAT_WORKER=python:

  REF_TASK_ACKS_LATE=1, REF_TASK_TRACK_STARTED=1, REF_VISIBILITY_TIMEOUT=N,
  REF_RESULT_EXPIRES=N          as in reference/refworker.py
  REF_REJECT_ON_WORKER_LOST=1   task_reject_on_worker_lost
  REF_RATE_LIMITS=a=5/s,b=2/s   per-task rate limits (task_annotations)
"""
import ctypes
import os
import time

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Celery

app = Celery(
    "semantics_ref",
    broker=os.environ.get("CELERY_BROKER_URL"),
    backend=os.environ.get("CELERY_RESULT_BACKEND"),
)
_env = os.environ.get
_rate_limits = dict(item.split("=", 1)
                    for item in filter(None, _env("REF_RATE_LIMITS", "").split(",")))
app.conf.update(
    accept_content=["json", "msgpack"],
    task_acks_late=_env("REF_TASK_ACKS_LATE") == "1",
    task_reject_on_worker_lost=_env("REF_REJECT_ON_WORKER_LOST") == "1",
    task_track_started=_env("REF_TASK_TRACK_STARTED") == "1",
    result_expires=int(_env("REF_RESULT_EXPIRES", "86400")),
    broker_transport_options={"visibility_timeout": int(_env("REF_VISIBILITY_TIMEOUT", "3600"))},
    task_annotations={name: {"rate_limit": rate} for name, rate in _rate_limits.items()},
    worker_hijack_root_logger=True,
)


@app.task(name="examples.add")
def add(x, y):
    return x + y


@app.task(name="examples.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="examples.sleep", bind=True)
def sleep(self, seconds):
    """Sleeps in quarter seconds publishing PROCESSING; the soft limit interrupts it."""
    seconds = float(seconds)
    slept = 0.0
    while slept < seconds:
        step = min(0.25, seconds - slept)
        time.sleep(step)
        slept += step
        self.update_state(state="PROCESSING",
                          meta={"progress": int(slept * 100 / seconds),
                                "message": f"slept {slept:.0f} of {seconds:g} seconds"})
    return self.request.args[0] if self.request.args else seconds


@app.task(name="examples.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="examples.crash")
def crash():
    ctypes.string_at(0)


def _sleep_through_soft_limit(seconds):
    """time.sleep() that, like the C plugin's nanosleep loop, ignores SoftTimeLimitExceeded."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            time.sleep(left)
        except SoftTimeLimitExceeded:
            pass


@app.task(name="examples.progress", bind=True)
def progress(self, steps=5, delay=0):
    for i in range(1, int(steps) + 1):
        if delay:
            _sleep_through_soft_limit(float(delay))
        self.update_state(state="PROCESSING",
                          meta={"progress": (i * 100) // int(steps),
                                "message": f"step {i} of {steps}"})
    return "done"
