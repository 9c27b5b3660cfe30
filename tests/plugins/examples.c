/* examples.c - the examples plugin: a commented tour of the plugin API and the worker's test fixture; it deliberately uses nothing but include/celeriac.h and libc.
 *
 * Build it like any plugin:
 *
 *     cc -std=c11 -shared -fPIC -I/usr/include -o examples.so examples.c
 *     celeriac worker --plugin ./examples.so
 *
 * and call it from Python exactly as you would call a Python Celery task:
 *
 *     app.send_task("examples.add", args=[2, 3]).get()        # -> 5
 *     app.send_task("examples.echo", args=[1], kwargs={"k": "v"}).get()
 *
 * Every task below has the same shape: read arguments with celeriac_task_arg(),
 * check their types the way Python would, then either hand a result over with
 * celeriac_task_set_result() or raise with celeriac_task_fail().
 */
#if !defined(_GNU_SOURCE) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* nanosleep() under -std=c11 */
#endif

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "celeriac.h"

/* Python's name for a value's type, for TypeError messages. */
static const char *type_name(const celeriac_value *v)
{
    switch (celeriac_value_type(v)) {
    case CELERIAC_NULL: return "NoneType";
    case CELERIAC_BOOL: return "bool";
    case CELERIAC_INT: return "int";
    case CELERIAC_DOUBLE: return "float";
    case CELERIAC_STRING: return "str";
    case CELERIAC_BYTES: return "bytes";
    case CELERIAC_ARRAY: return "list";
    case CELERIAC_OBJECT: return "dict";
    }
    return "object";
}

/* Numbers as Python sees them: bool is an int subclass. */
static int is_number(const celeriac_value *v)
{
    celeriac_type ty = celeriac_value_type(v);
    return ty == CELERIAC_INT || ty == CELERIAC_DOUBLE || ty == CELERIAC_BOOL;
}

static double as_double(const celeriac_value *v)
{
    if (celeriac_value_type(v) == CELERIAC_BOOL)
        return celeriac_value_bool(v) ? 1.0 : 0.0;
    return celeriac_value_double(v);
}

static int64_t as_int(const celeriac_value *v)
{
    if (celeriac_value_type(v) == CELERIAC_BOOL)
        return celeriac_value_bool(v);
    return celeriac_value_int(v);
}

/* examples.add(x, y) -> x + y
 *
 * Tutorial: arguments. celeriac_task_arg(t, pos, name) answers like a Python
 * parameter: the keyword argument `name` if the caller passed one, else the
 * positional argument at `pos`, else NULL (missing). Values are borrowed from
 * the task; you never free them. Ints stay ints, a float on either side makes
 * a float, and anything else raises TypeError with Python's own wording, so
 * the producer sees the same exception a Python worker would raise. */
static int add(celeriac_task *t, void *ud)
{
    (void)ud;
    const celeriac_value *x = celeriac_task_arg(t, 0, "x");
    const celeriac_value *y = celeriac_task_arg(t, 1, "y");
    if (!x || !y)
        return celeriac_task_fail(t, "TypeError",
                                  "add() missing %d required positional argument%s: %s",
                                  !x && !y ? 2 : 1, !x && !y ? "s" : "",
                                  !x && !y ? "'x' and 'y'" : !x ? "'x'" : "'y'");
    if (!is_number(x) || !is_number(y))
        return celeriac_task_fail(t, "TypeError",
                                  "unsupported operand type(s) for +: '%s' and '%s'",
                                  type_name(x), type_name(y));
    if (celeriac_value_type(x) == CELERIAC_DOUBLE || celeriac_value_type(y) == CELERIAC_DOUBLE)
        return celeriac_task_set_result(t, celeriac_value_new_double(as_double(x) +
                                                                     as_double(y)));
    int64_t a = as_int(x), b = as_int(y), sum;
    /* Python ints do not overflow; ours are 64-bit, so say so rather than wrap. */
    if (__builtin_add_overflow(a, b, &sum))
        return celeriac_task_fail(t, "OverflowError", "int too large to add in 64 bits");
    return celeriac_task_set_result(t, celeriac_value_new_int(sum));
}

/* examples.echo(*args, **kwargs) -> {"args": [...], "kwargs": {...}}
 *
 * Tutorial: building a result. celeriac_value_new_*() make values you own;
 * celeriac_value_set()/append() take ownership of what you pass them (even
 * when they fail), and celeriac_task_set_result() takes ownership of the
 * whole tree. So there is exactly one free on the error path: of the object
 * we still hold. */
static int echo(celeriac_task *t, void *ud)
{
    (void)ud;
    celeriac_value *out = celeriac_value_new_object();
    if (!out ||
        celeriac_value_set(out, "args", celeriac_value_copy(celeriac_task_args(t))) < 0 ||
        celeriac_value_set(out, "kwargs", celeriac_value_copy(celeriac_task_kwargs(t))) < 0) {
        celeriac_value_free(out);
        return celeriac_task_fail(t, "MemoryError", "out of memory");
    }
    return celeriac_task_set_result(t, out);
}

/* Sleeps for `seconds`, resuming after signals (EINTR) with the time left. */
static void sleep_for(double seconds)
{
    struct timespec req, rem;
    req.tv_sec = (time_t)seconds;
    req.tv_nsec = (long)((seconds - (double)req.tv_sec) * 1e9);
    while (nanosleep(&req, &rem) < 0 && errno == EINTR)
        req = rem;
}

/* examples.sleep(seconds) -> seconds
 *
 * Tutorial: long-running tasks and progress. celeriac_task_progress() stores
 * the custom state PROCESSING with meta {"progress": percent, "message": ...}
 * in the result backend, where the producer reads it as
 * AsyncResult(id).state / .info, just like a Python task calling
 * self.update_state(). Here we publish every quarter second. Time limits:
 * the worker kills us at the hard limit; at the soft limit
 * celeriac_task_check_time_limit() turns into SoftTimeLimitExceeded. */
static int sleep_task(celeriac_task *t, void *ud)
{
    (void)ud;
    const celeriac_value *v = celeriac_task_arg(t, 0, "seconds");
    if (!v)
        return celeriac_task_fail(t, "TypeError",
                                  "sleep() missing 1 required positional argument: 'seconds'");
    if (!is_number(v))
        return celeriac_task_fail(t, "TypeError",
                                  "'%s' object cannot be interpreted as a number",
                                  type_name(v));
    double seconds = as_double(v);
    if (isnan(seconds) || seconds < 0)
        return celeriac_task_fail(t, "ValueError", "sleep length must be non-negative");
    if (seconds > 3600)
        return celeriac_task_fail(t, "ValueError", "sleep length must be at most 3600 seconds");
    double slept = 0;
    int rc;
    while (slept < seconds) {
        /* Soft time limit: fail with SoftTimeLimitExceeded, as Python would. */
        if ((rc = celeriac_task_check_time_limit(t)) < 0)
            return rc;
        double step = seconds - slept < 0.25 ? seconds - slept : 0.25;
        sleep_for(step);
        slept += step;
        celeriac_task_progress(t, (int)(slept * 100.0 / seconds), "slept %.0f of %g seconds",
                               slept, seconds);
    }
    /* Return what we were given: an int stays an int. */
    return celeriac_task_set_result(t, celeriac_value_copy(v));
}

/* examples.fail(message) raises ValueError(message)
 *
 * Tutorial: exceptions. celeriac_task_fail() records the exception and returns
 * CELERIAC_ETASK, so `return celeriac_task_fail(...)` ends the task. Builtin
 * Python names (ValueError, KeyError, ...) reach the producer as the real
 * builtin class; any other name arrives as a class of that name from module
 * celeriac.exceptions. */
static int fail(celeriac_task *t, void *ud)
{
    (void)ud;
    const celeriac_value *m = celeriac_task_arg(t, 0, "message");
    const char *text = celeriac_value_string(m, NULL);
    if (m && !text) {
        /* Not a string: show it as JSON, the closest we have to str(). */
        char *json = celeriac_value_to_json(m);
        int rc = celeriac_task_fail(t, "ValueError", "%s", json ? json : "?");
        free(json);
        return rc;
    }
    return celeriac_task_fail(t, "ValueError", "%s", text ? text : "examples.fail was called");
}

/* examples.crash(now=True) kills the pool process with SIGSEGV
 *
 * Tutorial (of what not to do): a plugin runs inside the pool child, so a
 * crash takes that child down. The worker notices, replaces the child, and
 * reports WorkerLostError for the task, as Celery does. Tests use this to
 * check exactly that. With now false it returns None at once (tests run it
 * so that the process knows it as a short task before it crashes). */
static int crash(celeriac_task *t, void *ud)
{
    (void)ud;
    const celeriac_value *now = celeriac_task_arg(t, 0, "now");
    if (celeriac_value_type(now) == CELERIAC_BOOL && !celeriac_value_bool(now))
        return 0;
    celeriac_task_log(t, 3, "crashing on purpose");
    signal(SIGSEGV, SIG_DFL);
    raise(SIGSEGV);
    abort(); /* not reached unless SIGSEGV is blocked */
}

/* examples.progress(steps=5, delay=0) -> "done"
 *
 * Tutorial: progress with counts. Publishes steps PROCESSING states with
 * progress rising to 100, waiting `delay` seconds (at most 10) between them,
 * then returns "done". */
static int progress(celeriac_task *t, void *ud)
{
    (void)ud;
    const celeriac_value *s = celeriac_task_arg(t, 0, "steps");
    const celeriac_value *d = celeriac_task_arg(t, 1, "delay");
    int64_t steps = 5;
    double delay = 0;
    if (s && celeriac_value_type(s) != CELERIAC_NULL) {
        if (celeriac_value_type(s) != CELERIAC_INT)
            return celeriac_task_fail(t, "TypeError", "steps must be an int, not %s",
                                      type_name(s));
        steps = celeriac_value_int(s);
    }
    if (steps < 0 || steps > 1000)
        return celeriac_task_fail(t, "ValueError", "steps must be between 0 and 1000");
    if (d && celeriac_value_type(d) != CELERIAC_NULL) {
        if (!is_number(d))
            return celeriac_task_fail(t, "TypeError", "delay must be a number, not %s",
                                      type_name(d));
        delay = as_double(d);
        if (isnan(delay) || delay < 0 || delay > 10)
            return celeriac_task_fail(t, "ValueError", "delay must be between 0 and 10");
    }
    for (int64_t i = 1; i <= steps; i++) {
        if (delay > 0)
            sleep_for(delay);
        celeriac_task_progress(t, (int)(i * 100 / steps), "step %lld of %lld", (long long)i,
                               (long long)steps);
    }
    return celeriac_task_set_result(t, celeriac_value_new_string("done"));
}

/* examples.mul(x, y) -> x * y (integers, or floats when either is a float) */
static int mul(celeriac_task *t, void *ud)
{
    (void)ud;
    const celeriac_value *x = celeriac_task_arg(t, 0, "x");
    const celeriac_value *y = celeriac_task_arg(t, 1, "y");
    if (!x || !y || !is_number(x) || !is_number(y))
        return celeriac_task_fail(t, "TypeError",
                                  "unsupported operand type(s) for *: '%s' and '%s'",
                                  type_name(x), type_name(y));
    if (celeriac_value_type(x) == CELERIAC_DOUBLE || celeriac_value_type(y) == CELERIAC_DOUBLE)
        return celeriac_task_set_result(t, celeriac_value_new_double(as_double(x) *
                                                                     as_double(y)));
    int64_t product;
    if (__builtin_mul_overflow(as_int(x), as_int(y), &product))
        return celeriac_task_fail(t, "OverflowError", "int too large to multiply in 64 bits");
    return celeriac_task_set_result(t, celeriac_value_new_int(product));
}

/* examples.tsum(numbers) -> sum(numbers)
 *
 * Tutorial: a chord body. chord(header, examples.tsum.s()) calls it with one
 * argument, the list of the header's results in header order. */
static int tsum(celeriac_task *t, void *ud)
{
    (void)ud;
    const celeriac_value *list = celeriac_task_arg(t, 0, "numbers");
    if (celeriac_value_type(list) != CELERIAC_ARRAY)
        return celeriac_task_fail(t, "TypeError", "'%s' object is not iterable", type_name(list));
    int64_t isum = 0;
    double dsum = 0;
    int is_float = 0;
    for (size_t i = 0; i < celeriac_value_len(list); i++) {
        const celeriac_value *v = celeriac_value_at(list, i);
        if (!is_number(v))
            return celeriac_task_fail(t, "TypeError",
                                      "unsupported operand type(s) for +: 'int' and '%s'",
                                      type_name(v));
        if (celeriac_value_type(v) == CELERIAC_DOUBLE)
            is_float = 1;
        dsum += as_double(v);
        if (!is_float && __builtin_add_overflow(isum, as_int(v), &isum))
            return celeriac_task_fail(t, "OverflowError", "int too large to add in 64 bits");
    }
    return celeriac_task_set_result(t, is_float ? celeriac_value_new_double(dsum)
                                                : celeriac_value_new_int(isum));
}

/* examples.flaky(fail_times, max_retries=None) -> "ok after N retries"
 *
 * Tutorial: retries. celeriac_task_retry() is Celery's self.retry(): the
 * worker sends the same task again (same id, retries + 1) after the countdown
 * and stores RETRY meanwhile; once max_retries is used up (-1 = Celery's
 * default 3) the task fails with the exception given. Here every run before
 * the fail_times-th retry asks for another try half a second later. */
static int flaky(celeriac_task *t, void *ud)
{
    (void)ud;
    const celeriac_value *n = celeriac_task_arg(t, 0, "fail_times");
    const celeriac_value *m = celeriac_task_arg(t, 1, "max_retries");
    if (celeriac_value_type(n) != CELERIAC_INT)
        return celeriac_task_fail(t, "TypeError", "fail_times must be an int, not %s",
                                  type_name(n));
    int max_retries = celeriac_value_type(m) == CELERIAC_INT ? (int)celeriac_value_int(m) : -1;
    int retries = celeriac_task_retries(t);
    if (retries < celeriac_value_int(n))
        return celeriac_task_retry(t, "RuntimeError", "transient failure", 0.5, max_retries);
    char text[64];
    snprintf(text, sizeof text, "ok after %d retries", retries);
    return celeriac_task_set_result(t, celeriac_value_new_string(text));
}

/* examples.log_error(task_id) -> "logged failure of <task_id>"
 *
 * Tutorial: an errback. link_error=examples.log_error.s() makes the worker
 * send this task with the failed task's id when that task fails (Celery's
 * old-style errback: one argument, sent as a task). */
static int log_error(celeriac_task *t, void *ud)
{
    (void)ud;
    const char *id = celeriac_value_string(celeriac_task_arg(t, 0, "task_id"), NULL);
    if (!id)
        return celeriac_task_fail(t, "TypeError", "log_error() needs the failed task's id");
    celeriac_task_log(t, 2, "task %s failed", id);
    char text[300];
    snprintf(text, sizeof text, "logged failure of %s", id);
    return celeriac_task_set_result(t, celeriac_value_new_string(text));
}

/* The plugin's init: register each task under its Celery name. userdata
 * (NULL here) is handed back to the task on every call; flags are Celery's
 * task attributes (CELERIAC_TASK_ACKS_LATE, ...). A negative return refuses
 * the plugin and the worker does not start. */
static int init(celeriac_registry *r)
{
    static const struct {
        const char *name;
        celeriac_task_fn fn;
        unsigned flags;
    } tasks[] = {
        {"examples.add", add, 0},
        {"examples.echo", echo, 0},
        {"examples.sleep", sleep_task, CELERIAC_TASK_TRACK_STARTED},
        {"examples.fail", fail, 0},
        {"examples.crash", crash, 0},
        {"examples.progress", progress, 0},
        {"examples.mul", mul, 0},
        {"examples.tsum", tsum, 0},
        {"examples.flaky", flaky, 0},
        {"examples.log_error", log_error, 0},
    };
    for (size_t i = 0; i < sizeof tasks / sizeof tasks[0]; i++) {
        int rc = celeriac_register(r, tasks[i].name, tasks[i].fn, NULL, tasks[i].flags);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Exports the entry point and the API version the worker checks at load. */
CELERIAC_PLUGIN(init)
