/* task_context.h - the internal side of celeriac_task: what a task function is
 * given, and what it leaves behind (result or exception). States a task
 * publishes while running go to a sink supplied by the executor. */
#ifndef CELERIAC_TASK_CONTEXT_H
#define CELERIAC_TASK_CONTEXT_H

#include "celeriac.h"

/* Where update_state() goes. store_state gets the meta borrowed for the call. */
struct task_sink {
    int (*store_state)(void *ud, const celeriac_task *t, const char *state,
                       const celeriac_value *meta);
    void *ud;
    /* The same without waiting for the backend's reply (progress reports);
     * NULL = store_state. */
    int (*post_state)(void *ud, const celeriac_task *t, const char *state,
                      const celeriac_value *meta);
};

struct celeriac_task {
    const char *id;                /* borrowed from the message */
    const char *name;              /* borrowed: the registered name */
    int retries;
    const celeriac_value *args;    /* borrowed, ARRAY (never NULL) */
    const celeriac_value *kwargs;  /* borrowed, OBJECT (never NULL) */
    const struct task_sink *sink;  /* borrowed; NULL = states are dropped */
    celeriac_value *result;        /* owned: set by celeriac_task_set_result */
    int failed;                    /* set by celeriac_task_fail* */
    char exc_type[128];
    char exc_module[128];
    char *exc_message;             /* owned */
    int progress_sent;             /* a PROCESSING state was stored (throttle) */
    int retry;                     /* set by celeriac_task_retry (failed is set too) */
    double retry_countdown;        /* seconds; < 0 = Celery's default_retry_delay */
    int retry_max;                 /* max_retries; < 0 = Celery's default (3) */
};

/* Initialises t for one call. args/kwargs may be NULL (empty ones are used).
 * All pointers are borrowed until task_context_clear(). */
void task_context_init(celeriac_task *t, const char *id, const char *name, int retries,
                       const celeriac_value *args, const celeriac_value *kwargs,
                       const struct task_sink *sink);
/* Frees the result and exception text. */
void task_context_clear(celeriac_task *t);
/* Takes the result out of t (caller frees); NULL if none was set. */
celeriac_value *task_context_take_result(celeriac_task *t);
/* Module for a Python exception class name: "builtins" for Python's builtin
 * exception names, else "celeriac.exceptions". Static string. */
const char *task_context_exc_module(const char *exc_type);

/* Minimum seconds between two stored progress updates of one task (the
 * first is always stored). */
void task_context_set_progress_interval(double seconds);
/* SIGUSR1 handler for pool processes: marks the running task's soft time
 * limit as exceeded. Async-signal-safe. */
void task_context_soft_limit_signal(int sig);

#endif
