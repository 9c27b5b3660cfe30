/* celeriac.h - the public plugin API of celeriac: values, task context, registry.
 *
 * A plugin is a shared object loaded with `celeriac worker --plugin PATH.so`. It
 * declares itself with CELERIAC_PLUGIN(init) and registers tasks from init():
 *
 *     static int add(celeriac_task *t, void *ud) {
 *         int64_t x = celeriac_value_int(celeriac_task_arg(t, 0, "x"));
 *         int64_t y = celeriac_value_int(celeriac_task_arg(t, 1, "y"));
 *         return celeriac_task_set_result(t, celeriac_value_new_int(x + y));
 *     }
 *     static int init(celeriac_registry *r) {
 *         return celeriac_register(r, "examples.add", add, NULL, 0);
 *     }
 *     CELERIAC_PLUGIN(init)
 *
 * Everything here is opaque: plugins never see struct layouts, so the ABI only
 * changes when CELERIAC_API_VERSION changes. Ownership is stated at each call in
 * fixed words: "takes ownership of", "borrowed until", "caller frees with".
 * Task functions run inside a pool child process, one task at a time.
 */
#ifndef CELERIAC_H
#define CELERIAC_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of this header. A plugin built against
 * another version is refused at load time with a clear message. */
#define CELERIAC_API_VERSION 1

#if defined(__GNUC__)
#define CELERIAC_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define CELERIAC_PRINTF(f, a)
#endif

/* ---- Error codes ------------------------------------------------------------
 * Functions return 0 on success and a negative CELERIAC_E* on failure. Numbers
 * are never reused. */
#define CELERIAC_ERRNO_MAP(X)                                                  \
    X(OK, 0, "success")                                                        \
    X(ENOMEM, -1, "out of memory")                                             \
    X(EINVAL, -2, "invalid argument")                                          \
    X(EPARSE, -3, "malformed input")                                           \
    X(ETOOBIG, -4, "input exceeds a size limit")                               \
    X(EDEPTH, -5, "input nested too deeply")                                   \
    X(ECOUNT, -6, "input has too many elements")                               \
    X(EIO, -7, "I/O error")                                                    \
    X(ECONN, -8, "connection failed or lost")                                  \
    X(EPROTO, -9, "protocol error")                                            \
    X(ECONTENT, -10, "content type refused")                                   \
    X(ENOTFOUND, -11, "not found")                                             \
    X(ETIMEDOUT, -12, "timed out")                                             \
    X(EUNSUPPORTED, -13, "not supported")                                      \
    X(ESTATE, -14, "operation not valid in this state")                        \
    X(ETASK, -15, "task failed")                                               \
    X(EVERSION, -16, "plugin API version mismatch")                            \
    X(EAUTH, -17, "authentication failed")

enum celeriac_errno {
#define CELERIAC_ERRNO_ENUM(name, num, text) CELERIAC_##name = (num),
    CELERIAC_ERRNO_MAP(CELERIAC_ERRNO_ENUM)
#undef CELERIAC_ERRNO_ENUM
};

/* Text for an error code; never NULL. The string is static. */
const char *celeriac_strerror(int err);

/* ---- Values -----------------------------------------------------------------
 * A value is what a Celery message carries: JSON or msgpack data. Decoded
 * arguments are borrowed from the task (valid until the task function returns);
 * values you build are yours until you hand them over. */
typedef struct celeriac_value celeriac_value;

typedef enum celeriac_type {
    CELERIAC_NULL = 0, /* JSON null / Python None; also any missing value */
    CELERIAC_BOOL,
    CELERIAC_INT, /* 64-bit signed */
    CELERIAC_DOUBLE,
    CELERIAC_STRING, /* UTF-8 text (may contain NUL; use the length) */
    CELERIAC_BYTES,  /* raw bytes (msgpack bin) */
    CELERIAC_ARRAY,
    CELERIAC_OBJECT /* string keys, insertion order kept */
} celeriac_type;

/* Accessors accept NULL and answer as for a null value. */
celeriac_type celeriac_value_type(const celeriac_value *v);
int celeriac_value_bool(const celeriac_value *v);     /* 0 unless a true BOOL */
int64_t celeriac_value_int(const celeriac_value *v);  /* INT, or DOUBLE truncated; else 0 */
double celeriac_value_double(const celeriac_value *v); /* DOUBLE or INT; else 0.0 */
/* STRING or BYTES: pointer borrowed from v (NUL-terminated), length in *len
 * when len is not NULL. Other types: NULL. */
const char *celeriac_value_string(const celeriac_value *v, size_t *len);
size_t celeriac_value_len(const celeriac_value *v); /* ARRAY or OBJECT count; else 0 */
/* i-th element of an ARRAY, or i-th member value of an OBJECT; NULL past the end.
 * Borrowed from v. */
const celeriac_value *celeriac_value_at(const celeriac_value *v, size_t i);
/* i-th key of an OBJECT; NULL otherwise. Borrowed from v. */
const char *celeriac_value_key_at(const celeriac_value *v, size_t i);
/* Member of an OBJECT by key; NULL if absent. Borrowed from v. */
const celeriac_value *celeriac_value_get(const celeriac_value *v, const char *key);

/* Builders: NULL when out of memory. Caller frees with celeriac_value_free()
 * unless ownership is handed over. Strings are copied. null, true and false
 * are shared read-only nodes (never NULL; freeing them does nothing). */
celeriac_value *celeriac_value_new_null(void);
celeriac_value *celeriac_value_new_bool(int b);
celeriac_value *celeriac_value_new_int(int64_t i);
celeriac_value *celeriac_value_new_double(double d);
celeriac_value *celeriac_value_new_string(const char *s);
celeriac_value *celeriac_value_new_stringn(const char *s, size_t len);
celeriac_value *celeriac_value_new_bytes(const void *p, size_t len);
celeriac_value *celeriac_value_new_array(void);
celeriac_value *celeriac_value_new_object(void);
/* Deep copy; caller frees with celeriac_value_free(). */
celeriac_value *celeriac_value_copy(const celeriac_value *v);
/* Appends item to an ARRAY. Takes ownership of item, also on failure
 * (CELERIAC_EINVAL if arr is not an array or item is NULL). */
int celeriac_value_append(celeriac_value *arr, celeriac_value *item);
/* Sets key in an OBJECT, replacing an existing member. Takes ownership of item,
 * also on failure. */
int celeriac_value_set(celeriac_value *obj, const char *key, celeriac_value *item);
void celeriac_value_free(celeriac_value *v);
/* JSON text of v; caller frees with free(). NULL when out of memory. */
char *celeriac_value_to_json(const celeriac_value *v);
/* Parses JSON text (depth and size limited); NULL if it is not valid JSON.
 * Caller frees with celeriac_value_free(). */
celeriac_value *celeriac_value_from_json(const char *text, size_t len);

/* ---- Task context -----------------------------------------------------------
 * A celeriac_task is borrowed by the task function for the duration of the call. */
typedef struct celeriac_task celeriac_task;

const char *celeriac_task_id(const celeriac_task *t);
const char *celeriac_task_name(const celeriac_task *t);
int celeriac_task_retries(const celeriac_task *t);
/* The positional arguments (an ARRAY) and keyword arguments (an OBJECT);
 * borrowed until the task function returns. Never NULL. */
const celeriac_value *celeriac_task_args(const celeriac_task *t);
const celeriac_value *celeriac_task_kwargs(const celeriac_task *t);
/* Python-style parameter lookup: the keyword argument `name` if given, else
 * positional argument `pos`; NULL when neither was passed. name may be NULL. */
const celeriac_value *celeriac_task_arg(const celeriac_task *t, size_t pos, const char *name);

/* Stores a custom state with meta in the result backend (Celery's
 * update_state). Takes ownership of meta (may be NULL for an empty object). */
int celeriac_task_update_state(celeriac_task *t, const char *state, celeriac_value *meta);
/* Convenience: state PROCESSING with meta {"progress": percent, "message": text}.
 * Progress does not wait for the backend: it is written (0 once written; a
 * negative code when it could not be) and its reply read before the task's
 * outcome is stored; a store the backend refused is logged. The first call of
 * a task is always written, later ones at most every --progress-interval
 * seconds (default 0.05). */
int celeriac_task_progress(celeriac_task *t, int percent, const char *fmt, ...) CELERIAC_PRINTF(3, 4);
/* Sets the return value. Takes ownership of result. A task that returns 0
 * without setting a result returns None. */
int celeriac_task_set_result(celeriac_task *t, celeriac_value *result);
/* Marks the task failed with a Python exception type. Names of Python builtin
 * exceptions (ValueError, TypeError, RuntimeError, ...) are sent with module
 * "builtins" so the producer re-raises the real class; other names are sent
 * with module "celeriac.exceptions". Returns CELERIAC_ETASK so a task can write
 * `return celeriac_task_fail(...)`. */
int celeriac_task_fail(celeriac_task *t, const char *exc_type, const char *fmt, ...)
    CELERIAC_PRINTF(3, 4);
/* As celeriac_task_fail with an explicit module for the exception class. */
int celeriac_task_fail_module(celeriac_task *t, const char *exc_module, const char *exc_type,
                              const char *fmt, ...) CELERIAC_PRINTF(4, 5);
/* Time limits. When the soft time limit passes, the worker signals the task's
 * process and this returns nonzero; the task should clean up and end. */
int celeriac_task_soft_time_limit_exceeded(const celeriac_task *t);
/* Celery's behaviour in one call: once the soft limit has passed, fails the
 * task with SoftTimeLimitExceeded and returns CELERIAC_ETASK; else 0. Use it as
 * `if ((rc = celeriac_task_check_time_limit(t)) < 0) return rc;`. A task that
 * never checks keeps running until the hard limit kills its process. */
int celeriac_task_check_time_limit(celeriac_task *t);
/* Retries the task later, as Celery's self.retry(exc=exc_type(message),
 * countdown=countdown, max_retries=max_retries): the worker publishes the same
 * message again (same task id, retries + 1, eta = now + countdown; countdown
 * < 0 means Celery's default of 180 seconds) and stores RETRY with the
 * exception. Once the task has been retried max_retries times (max_retries < 0
 * means Celery's default of 3) it fails with that exception instead. exc_type
 * follows celeriac_task_fail's rules (NULL = "RuntimeError"); message may be
 * NULL. Returns CELERIAC_ETASK so a task can write `return celeriac_task_retry(...)`;
 * a later celeriac_task_fail() replaces the retry with a failure. */
int celeriac_task_retry(celeriac_task *t, const char *exc_type, const char *message,
                        double countdown, int max_retries);
/* Logs a line in the worker's log, prefixed with the task name and id.
 * level: 0 debug, 1 info, 2 warning, 3 error. */
void celeriac_task_log(const celeriac_task *t, int level, const char *fmt, ...) CELERIAC_PRINTF(3, 4);

/* ---- Registry and plugins ---------------------------------------------------- */
typedef struct celeriac_registry celeriac_registry;

/* A task function. Return 0 for success (result as set, or None), or a
 * negative code for failure (the exception set with celeriac_task_fail, or a
 * RuntimeError naming the code). */
typedef int (*celeriac_task_fn)(celeriac_task *t, void *userdata);

/* Task flags (Celery task attributes). */
#define CELERIAC_TASK_ACKS_LATE 0x1u     /* acknowledge after the task ran */
#define CELERIAC_TASK_IGNORE_RESULT 0x2u /* store no result */
#define CELERIAC_TASK_TRACK_STARTED 0x4u /* store STARTED before running */

/* Registers fn under name. userdata is borrowed until the worker exits.
 * CELERIAC_EINVAL for a duplicate or empty name. */
int celeriac_register(celeriac_registry *r, const char *name, celeriac_task_fn fn,
                      void *userdata, unsigned flags);

/* Plugin entry point: declared with CELERIAC_PLUGIN(init). init returns 0 or a
 * negative code (the plugin is then refused and the worker does not start). */
typedef int (*celeriac_plugin_init_fn)(celeriac_registry *r);

#define CELERIAC_PLUGIN(init_fn)                                               \
    const unsigned celeriac_plugin_api_version = CELERIAC_API_VERSION;         \
    int celeriac_plugin_init(celeriac_registry *r);                            \
    int celeriac_plugin_init(celeriac_registry *r) { return init_fn(r); }

#ifdef __cplusplus
}
#endif
#endif /* CELERIAC_H */
