"""The real Celery worker app used to validate the compat tests.

Registers the same task names as celeriac (built-in process_document, the examples
plugin) and reads the settings celeriac takes as flags from REF_* environment
variables, which compat/conftest.py sets when COMPAT_WORKER=python.
"""
import ctypes
import os
import time

from celery import Celery

from reference.documents import process_document as _process_document

app = Celery(
    "refworker",
    broker=os.environ.get("CELERY_BROKER_URL"),
    backend=os.environ.get("CELERY_RESULT_BACKEND"),
)
_env = os.environ.get
app.conf.update(
    accept_content=["json", "msgpack"],
    task_acks_late=_env("REF_TASK_ACKS_LATE") == "1",
    task_track_started=_env("REF_TASK_TRACK_STARTED") == "1",
    result_expires=int(_env("REF_RESULT_EXPIRES", "86400")),
    broker_transport_options={"visibility_timeout": int(_env("REF_VISIBILITY_TIMEOUT", "3600"))},
    worker_hijack_root_logger=True,
)


def _process(self, source, filename=None, document_type="generic", options=None):
    return _process_document(self, source, filename, document_type, options)


def _add(x, y):
    return x + y


process_document = app.task(name="process_document", bind=True)(_process)
add = app.task(name="examples.add")(_add)

# --task-alias PYNAME=NAME: the same function registered under the Python name.
_ALIASABLE = {"process_document": (_process, True), "examples.add": (_add, False)}
for _alias in filter(None, _env("REF_TASK_ALIASES", "").split(",")):
    _py, _target = _alias.split("=", 1)
    _fn, _bind = _ALIASABLE[_target]
    app.task(name=_py, bind=_bind)(_fn)


@app.task(name="examples.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="examples.sleep")
def sleep(seconds):
    time.sleep(float(seconds))
    return seconds


@app.task(name="examples.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="examples.crash")
def crash():
    ctypes.string_at(0)


@app.task(name="examples.progress", bind=True)
def progress(self, steps=5, delay=0):
    for i in range(1, int(steps) + 1):
        if delay:
            time.sleep(float(delay))
        self.update_state(state="PROCESSING",
                          meta={"progress": (i * 100) // int(steps), "message": f"step {i} of {steps}"})
    return "done"
