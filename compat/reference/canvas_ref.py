"""Real Celery tasks for the canvas compat tests (compat/test_canvas.py).

The refworker app plus the examples tasks canvas tests use (mul, tsum, flaky,
mirroring tests/plugins/examples.c) and pyonly.double, a task only Python
workers have (the mixed-fleet test routes it to queue "py").
"""
from reference.refworker import app


@app.task(name="examples.mul")
def mul(x, y):
    return x * y


@app.task(name="examples.tsum")
def tsum(numbers):
    return sum(numbers)


@app.task(name="examples.flaky", bind=True)
def flaky(self, fail_times, max_retries=None):
    if self.request.retries < fail_times:
        options = {} if max_retries is None else {"max_retries": max_retries}
        raise self.retry(exc=RuntimeError("transient failure"), countdown=0.5, **options)
    return f"ok after {self.request.retries} retries"


@app.task(name="examples.log_error")
def log_error(task_id):
    return f"logged failure of {task_id}"


@app.task(name="pyonly.double")
def double(x):
    return x * 2
