/* task_context.c - owns the celeriac_task_* calls a task function makes (arguments, states, result, exception, log line); it does not run tasks, time them or talk to the backend (task_exec.c and backend_*.c do). */
#include "task_context.h"

#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "value.h"

/* Stand-ins for args/kwargs when the caller passes NULL; never freed. */
static const celeriac_value empty_args = {.type = CELERIAC_ARRAY};
static const celeriac_value empty_kwargs = {.type = CELERIAC_OBJECT};

/* The process name in log lines, as Celery prints it. */

/* Python 3.11 builtin exception classes (dir(builtins) filtered on
 * BaseException subclasses, plus the IOError/EnvironmentError aliases).
 * Kept sorted by strcmp for bsearch; a unit test checks the order. */
static const char *const builtin_exceptions[] = {
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BaseException",
    "BaseExceptionGroup",
    "BlockingIOError",
    "BrokenPipeError",
    "BufferError",
    "BytesWarning",
    "ChildProcessError",
    "ConnectionAbortedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "DeprecationWarning",
    "EOFError",
    "EncodingWarning",
    "EnvironmentError",
    "Exception",
    "ExceptionGroup",
    "FileExistsError",
    "FileNotFoundError",
    "FloatingPointError",
    "FutureWarning",
    "GeneratorExit",
    "IOError",
    "ImportError",
    "ImportWarning",
    "IndentationError",
    "IndexError",
    "InterruptedError",
    "IsADirectoryError",
    "KeyError",
    "KeyboardInterrupt",
    "LookupError",
    "MemoryError",
    "ModuleNotFoundError",
    "NameError",
    "NotADirectoryError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PendingDeprecationWarning",
    "PermissionError",
    "ProcessLookupError",
    "RecursionError",
    "ReferenceError",
    "ResourceWarning",
    "RuntimeError",
    "RuntimeWarning",
    "StopAsyncIteration",
    "StopIteration",
    "SyntaxError",
    "SyntaxWarning",
    "SystemError",
    "SystemExit",
    "TabError",
    "TimeoutError",
    "TypeError",
    "UnboundLocalError",
    "UnicodeDecodeError",
    "UnicodeEncodeError",
    "UnicodeError",
    "UnicodeTranslateError",
    "UnicodeWarning",
    "UserWarning",
    "ValueError",
    "Warning",
    "ZeroDivisionError",
};

static int cmp_name(const void *key, const void *elem)
{
    return strcmp((const char *)key, *(const char *const *)elem);
}

const char *task_context_exc_module(const char *exc_type)
{
    size_t n = sizeof builtin_exceptions / sizeof builtin_exceptions[0];
    if (exc_type && bsearch(exc_type, builtin_exceptions, n, sizeof builtin_exceptions[0],
                            cmp_name))
        return "builtins";
    return "celeriac.exceptions";
}


#include <signal.h>

/* Set from the SIGUSR1 handler; one task runs per process at a time. */
static volatile sig_atomic_t soft_limit_hit;

void task_context_soft_limit_signal(int sig)
{
    (void)sig;
    soft_limit_hit = 1;
}

int celeriac_task_soft_time_limit_exceeded(const celeriac_task *t)
{
    (void)t;
    return soft_limit_hit != 0;
}

int celeriac_task_check_time_limit(celeriac_task *t)
{
    if (!soft_limit_hit)
        return 0;
    return celeriac_task_fail_module(t, "billiard.exceptions", "SoftTimeLimitExceeded",
                                     "soft time limit exceeded");
}

void task_context_init(celeriac_task *t, const char *id, const char *name, int retries,
                       const celeriac_value *args, const celeriac_value *kwargs,
                       const struct task_sink *sink)
{
    memset(t, 0, sizeof *t);
    t->id = id ? id : "";
    t->name = name ? name : "";
    t->retries = retries;
    t->args = celeriac_value_type(args) == CELERIAC_ARRAY ? args : &empty_args;
    t->kwargs = celeriac_value_type(kwargs) == CELERIAC_OBJECT ? kwargs : &empty_kwargs;
    t->sink = sink;
    soft_limit_hit = 0;
}

void task_context_clear(celeriac_task *t)
{
    if (!t)
        return;
    celeriac_value_free(t->result);
    t->result = NULL;
    free(t->exc_message);
    t->exc_message = NULL;
}

celeriac_value *task_context_take_result(celeriac_task *t)
{
    celeriac_value *v = t->result;
    t->result = NULL;
    return v;
}

const char *celeriac_task_id(const celeriac_task *t)
{
    return t && t->id ? t->id : "";
}

const char *celeriac_task_name(const celeriac_task *t)
{
    return t && t->name ? t->name : "";
}

int celeriac_task_retries(const celeriac_task *t)
{
    return t ? t->retries : 0;
}

const celeriac_value *celeriac_task_args(const celeriac_task *t)
{
    return t && t->args ? t->args : &empty_args;
}

const celeriac_value *celeriac_task_kwargs(const celeriac_task *t)
{
    return t && t->kwargs ? t->kwargs : &empty_kwargs;
}

const celeriac_value *celeriac_task_arg(const celeriac_task *t, size_t pos, const char *name)
{
    const celeriac_value *v = NULL;
    if (name)
        v = celeriac_value_get(celeriac_task_kwargs(t), name);
    if (!v)
        v = celeriac_value_at(celeriac_task_args(t), pos);
    return v;
}

static int update_state(celeriac_task *t, const char *state, celeriac_value *meta, int post)
{
    int rc = 0;
    if (!t || !state || !*state) {
        rc = CELERIAC_EINVAL;
        goto out;
    }
    if (!meta && !(meta = celeriac_value_new_object())) {
        rc = CELERIAC_ENOMEM;
        goto out;
    }
    if (t->sink && post && t->sink->post_state)
        rc = t->sink->post_state(t->sink->ud, t, state, meta);
    else if (t->sink && t->sink->store_state)
        rc = t->sink->store_state(t->sink->ud, t, state, meta);
out:
    celeriac_value_free(meta);
    return rc;
}

int celeriac_task_update_state(celeriac_task *t, const char *state, celeriac_value *meta)
{
    return update_state(t, state, meta, 0);
}

/* vsnprintf into a fresh string; caller frees with free(). NULL on OOM. */
static char *vformat(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt ? fmt : "", ap2);
    va_end(ap2);
    if (n < 0)
        n = 0;
    char *s = malloc((size_t)n + 1);
    if (!s)
        return NULL;
    if (n == 0)
        s[0] = '\0';
    else
        vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

/* Progress throttle: the first PROCESSING of a task is always stored, later
 * ones at most every progress_interval seconds (a 2 ms document needs no six
 * backend writes; a 2 minute one still reports every stage). */
static double progress_interval = 0.05;
static double last_progress;

void task_context_set_progress_interval(double seconds)
{
    progress_interval = seconds < 0 ? 0 : seconds;
}

int celeriac_task_progress(celeriac_task *t, int percent, const char *fmt, ...)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = (double)ts.tv_sec + ts.tv_nsec / 1e9;
    if (t && t->progress_sent && now - last_progress < progress_interval)
        return 0;
    if (t)
        t->progress_sent = 1;
    last_progress = now;
    int rc = CELERIAC_ENOMEM;
    char *text = NULL;
    celeriac_value *meta = celeriac_value_new_object();
    va_list ap;
    va_start(ap, fmt);
    text = vformat(fmt, ap);
    va_end(ap);
    if (!meta || !text)
        goto out;
    if (percent < 0)
        percent = 0;
    if (percent > 100)
        percent = 100;
    if (celeriac_value_set(meta, "progress", celeriac_value_new_int(percent)) < 0 ||
        celeriac_value_set(meta, "message", celeriac_value_new_string(text)) < 0)
        goto out;
    rc = update_state(t, "PROCESSING", meta, 1); /* not waited for */
    meta = NULL; /* update_state took ownership */
out:
    celeriac_value_free(meta);
    free(text);
    return rc;
}

int celeriac_task_set_result(celeriac_task *t, celeriac_value *result)
{
    if (!t) {
        celeriac_value_free(result);
        return CELERIAC_EINVAL;
    }
    /* Builders return NULL only when out of memory, so NULL is reported
     * rather than silently turned into None. */
    if (!result)
        return CELERIAC_ENOMEM;
    celeriac_value_free(t->result);
    t->result = result;
    return 0;
}

static int vfail(celeriac_task *t, const char *exc_module, const char *exc_type,
                 const char *fmt, va_list ap)
{
    if (!t)
        return CELERIAC_ETASK;
    if (!exc_type || !*exc_type)
        exc_type = "RuntimeError";
    snprintf(t->exc_type, sizeof t->exc_type, "%s", exc_type);
    if (!exc_module || !*exc_module)
        exc_module = task_context_exc_module(t->exc_type);
    snprintf(t->exc_module, sizeof t->exc_module, "%s", exc_module);
    free(t->exc_message);
    t->exc_message = vformat(fmt, ap); /* NULL on OOM: sent as an empty message */
    t->failed = 1;
    t->retry = 0;
    return CELERIAC_ETASK;
}

int celeriac_task_fail(celeriac_task *t, const char *exc_type, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(t, NULL, exc_type, fmt, ap);
    va_end(ap);
    return rc;
}

int celeriac_task_fail_module(celeriac_task *t, const char *exc_module, const char *exc_type,
                              const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vfail(t, exc_module, exc_type, fmt, ap);
    va_end(ap);
    return rc;
}

int celeriac_task_retry(celeriac_task *t, const char *exc_type, const char *message,
                        double countdown, int max_retries)
{
    if (!t)
        return CELERIAC_ETASK;
    celeriac_task_fail(t, exc_type, "%s", message ? message : "");
    t->retry = 1;
    t->retry_countdown = countdown != countdown ? -1 : countdown; /* NaN = default */
    t->retry_max = max_retries;
    return CELERIAC_ETASK;
}

/* The one place task log lines leave the process; log.c may take it over. */
/* Task log lines go through the worker's log (level, file, process name). */
static void log_emit(int level, const char *task, const char *id, const char *text)
{
    if (level < LOG_DEBUG)
        level = LOG_DEBUG;
    if (level > LOG_ERROR)
        level = LOG_ERROR;
    log_msg((enum log_level)level, "%s[%s]: %s", task, id, text);
}

void celeriac_task_log(const celeriac_task *t, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = vformat(fmt, ap);
    va_end(ap);
    log_emit(level, celeriac_task_name(t), celeriac_task_id(t), text ? text : "(out of memory)");
    free(text);
}
