/* test_task_context.c - tests task_context.c: argument lookup, states through a fake sink, results, exceptions and their modules, the log line; not the executor around it. */
#include "test.h"

#include <stdlib.h>
#include <unistd.h>

#include "log.h"
#include "task_context.h"

/* A sink that keeps a copy of every state and meta. */
struct fake_sink {
    char *state[16];
    celeriac_value *meta[16];
    int n;
    int rc; /* what store_state returns */
};

static int fake_store(void *ud, const celeriac_task *t, const char *state,
                      const celeriac_value *meta)
{
    struct fake_sink *f = ud;
    (void)t;
    if (f->n < 16) {
        f->state[f->n] = strdup(state);
        f->meta[f->n] = celeriac_value_copy(meta);
        f->n++;
    }
    return f->rc;
}

static void fake_free(struct fake_sink *f)
{
    for (int i = 0; i < f->n; i++) {
        free(f->state[i]);
        celeriac_value_free(f->meta[i]);
    }
}

/* Checks one PROCESSING state: {"progress": percent, "message": text} exactly. */
static void check_progress(const struct fake_sink *f, int i, int percent, const char *text)
{
    CHECK(i < f->n);
    if (i >= f->n)
        return;
    CHECK_STR(f->state[i], "PROCESSING");
    CHECK_EQ_INT(celeriac_value_len(f->meta[i]), 2);
    CHECK_EQ_INT(celeriac_value_type(celeriac_value_get(f->meta[i], "progress")), CELERIAC_INT);
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(f->meta[i], "progress")), percent);
    CHECK_STR(celeriac_value_string(celeriac_value_get(f->meta[i], "message"), NULL), text);
}

/* JSON from a literal: test inputs. */
static celeriac_value *J(const char *json)
{
    celeriac_value *v = celeriac_value_from_json(json, strlen(json));
    CHECK(v != NULL);
    return v;
}

TEST(args_positional_and_keyword)
{
    celeriac_value *args = J("[1, \"two\"]");
    celeriac_value *kwargs = J("{\"y\": 20, \"z\": null}");
    celeriac_task t;
    task_context_init(&t, "id-1", "examples.add", 3, args, kwargs, NULL);
    CHECK_STR(celeriac_task_id(&t), "id-1");
    CHECK_STR(celeriac_task_name(&t), "examples.add");
    CHECK_EQ_INT(celeriac_task_retries(&t), 3);
    CHECK_EQ_INT(celeriac_value_int(celeriac_task_arg(&t, 0, "x")), 1);
    /* The keyword wins over the positional argument at the same place. */
    CHECK_EQ_INT(celeriac_value_int(celeriac_task_arg(&t, 1, "y")), 20);
    CHECK_STR(celeriac_value_string(celeriac_task_arg(&t, 1, NULL), NULL), "two");
    /* Passed as None is not missing. */
    CHECK(celeriac_task_arg(&t, 5, "z") != NULL);
    CHECK_EQ_INT(celeriac_value_type(celeriac_task_arg(&t, 5, "z")), CELERIAC_NULL);
    CHECK(celeriac_task_arg(&t, 2, "w") == NULL);
    CHECK(celeriac_task_arg(&t, 2, NULL) == NULL);
    task_context_clear(&t);
    celeriac_value_free(args);
    celeriac_value_free(kwargs);
}

TEST(args_default_to_empty)
{
    celeriac_task t;
    task_context_init(&t, NULL, NULL, 0, NULL, NULL, NULL);
    CHECK_EQ_INT(celeriac_value_type(celeriac_task_args(&t)), CELERIAC_ARRAY);
    CHECK_EQ_INT(celeriac_value_type(celeriac_task_kwargs(&t)), CELERIAC_OBJECT);
    CHECK_EQ_INT(celeriac_value_len(celeriac_task_args(&t)), 0);
    CHECK(celeriac_task_arg(&t, 0, "x") == NULL);
    CHECK_STR(celeriac_task_id(&t), "");
    task_context_clear(&t);
}

TEST(update_state_goes_to_sink)
{
    struct fake_sink f = {0};
    struct task_sink sink = {fake_store, &f, NULL};
    celeriac_task t;
    task_context_init(&t, "id", "n", 0, NULL, NULL, &sink);
    CHECK_EQ_INT(celeriac_task_update_state(&t, "CUSTOM", J("{\"a\": 1}")), 0);
    CHECK_EQ_INT(celeriac_task_update_state(&t, "EMPTY", NULL), 0);
    f.rc = CELERIAC_ECONN;
    CHECK_EQ_INT(celeriac_task_update_state(&t, "DOWN", NULL), CELERIAC_ECONN);
    CHECK_EQ_INT(celeriac_task_update_state(&t, NULL, J("{}")), CELERIAC_EINVAL); /* meta freed */
    CHECK_EQ_INT(f.n, 3);
    CHECK_STR(f.state[0], "CUSTOM");
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(f.meta[0], "a")), 1);
    CHECK_STR(f.state[1], "EMPTY");
    CHECK_EQ_INT(celeriac_value_type(f.meta[1]), CELERIAC_OBJECT);
    CHECK_EQ_INT(celeriac_value_len(f.meta[1]), 0);
    task_context_clear(&t);
    fake_free(&f);
}

TEST(update_state_without_sink_is_dropped)
{
    celeriac_task t;
    task_context_init(&t, "id", "n", 0, NULL, NULL, NULL);
    CHECK_EQ_INT(celeriac_task_update_state(&t, "CUSTOM", J("[1]")), 0);
    CHECK_EQ_INT(celeriac_task_progress(&t, 50, "half"), 0);
    task_context_clear(&t);
}

TEST(progress_meta_and_clamping)
{
    task_context_set_progress_interval(0); /* store every update */
    struct fake_sink f = {0};
    struct task_sink sink = {fake_store, &f, NULL};
    celeriac_task t;
    task_context_init(&t, "id", "n", 0, NULL, NULL, &sink);
    CHECK_EQ_INT(celeriac_task_progress(&t, 42, "step %d of %s", 3, "five"), 0);
    CHECK_EQ_INT(celeriac_task_progress(&t, -7, "below"), 0);
    CHECK_EQ_INT(celeriac_task_progress(&t, 250, "above"), 0);
    CHECK_EQ_INT(celeriac_task_progress(&t, 100, "%s", ""), 0);
    CHECK_EQ_INT(f.n, 4);
    check_progress(&f, 0, 42, "step 3 of five");
    check_progress(&f, 1, 0, "below");
    check_progress(&f, 2, 100, "above");
    check_progress(&f, 3, 100, "");
    task_context_clear(&t);
    fake_free(&f);
}

TEST(result_set_replace_take)
{
    celeriac_task t;
    task_context_init(&t, "id", "n", 0, NULL, NULL, NULL);
    CHECK(task_context_take_result(&t) == NULL);
    CHECK_EQ_INT(celeriac_task_set_result(&t, celeriac_value_new_int(1)), 0);
    CHECK_EQ_INT(celeriac_task_set_result(&t, celeriac_value_new_int(2)), 0); /* 1 freed */
    CHECK_EQ_INT(celeriac_task_set_result(&t, NULL), CELERIAC_ENOMEM);        /* 2 kept */
    celeriac_value *r = task_context_take_result(&t);
    CHECK_EQ_INT(celeriac_value_int(r), 2);
    CHECK(task_context_take_result(&t) == NULL);
    celeriac_value_free(r);
    /* A result still held at clear is freed there (ASan checks). */
    celeriac_task_set_result(&t, celeriac_value_new_string("left behind"));
    task_context_clear(&t);
    task_context_clear(&t);
}

TEST(fail_records_exception_last_wins)
{
    celeriac_task t;
    task_context_init(&t, "id", "n", 0, NULL, NULL, NULL);
    CHECK_EQ_INT(t.failed, 0);
    CHECK_EQ_INT(celeriac_task_fail(&t, "ValueError", "bad value %d", 7), CELERIAC_ETASK);
    CHECK_EQ_INT(t.failed, 1);
    CHECK_STR(t.exc_type, "ValueError");
    CHECK_STR(t.exc_module, "builtins");
    CHECK_STR(t.exc_message, "bad value 7");
    CHECK_EQ_INT(celeriac_task_fail(&t, "DocumentTooLarge", "%s", "too big"), CELERIAC_ETASK);
    CHECK_STR(t.exc_type, "DocumentTooLarge");
    CHECK_STR(t.exc_module, "celeriac.exceptions");
    CHECK_STR(t.exc_message, "too big");
    CHECK_EQ_INT(celeriac_task_fail_module(&t, "myapp.errors", "Boom", "x"), CELERIAC_ETASK);
    CHECK_STR(t.exc_type, "Boom");
    CHECK_STR(t.exc_module, "myapp.errors");
    /* No type: RuntimeError, like a bare raise of an unknown failure. */
    celeriac_task_fail(&t, NULL, "no type");
    CHECK_STR(t.exc_type, "RuntimeError");
    CHECK_STR(t.exc_module, "builtins");
    /* An absurdly long name is cut, not overflowed. */
    char longname[400];
    memset(longname, 'E', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    celeriac_task_fail(&t, longname, "long");
    CHECK_EQ_INT(strlen(t.exc_type), sizeof t.exc_type - 1);
    task_context_clear(&t);
    CHECK(t.exc_message == NULL);
}

TEST(exc_module_knows_every_builtin)
{
    /* dir(builtins) of Python 3.11, BaseException subclasses: if the table in
     * task_context.c were not sorted, bsearch would miss some of these. */
    static const char *const names[] = {
        "ArithmeticError", "AssertionError", "AttributeError", "BaseException",
        "BaseExceptionGroup", "BlockingIOError", "BrokenPipeError", "BufferError",
        "BytesWarning", "ChildProcessError", "ConnectionAbortedError", "ConnectionError",
        "ConnectionRefusedError", "ConnectionResetError", "DeprecationWarning", "EOFError",
        "EncodingWarning", "EnvironmentError", "Exception", "ExceptionGroup", "FileExistsError",
        "FileNotFoundError", "FloatingPointError", "FutureWarning", "GeneratorExit", "IOError",
        "ImportError", "ImportWarning", "IndentationError", "IndexError", "InterruptedError",
        "IsADirectoryError", "KeyError", "KeyboardInterrupt", "LookupError", "MemoryError",
        "ModuleNotFoundError", "NameError", "NotADirectoryError", "NotImplementedError",
        "OSError", "OverflowError", "PendingDeprecationWarning", "PermissionError",
        "ProcessLookupError", "RecursionError", "ReferenceError", "ResourceWarning",
        "RuntimeError", "RuntimeWarning", "StopAsyncIteration", "StopIteration", "SyntaxError",
        "SyntaxWarning", "SystemError", "SystemExit", "TabError", "TimeoutError", "TypeError",
        "UnboundLocalError", "UnicodeDecodeError", "UnicodeEncodeError", "UnicodeError",
        "UnicodeTranslateError", "UnicodeWarning", "UserWarning", "ValueError", "Warning",
        "ZeroDivisionError",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(task_context_exc_module(names[i]), "builtins") != 0)
            fprintf(stderr, "  %s not known as a builtin\n", names[i]);
        CHECK_STR(task_context_exc_module(names[i]), "builtins");
    }
    CHECK_STR(task_context_exc_module("valueerror"), "celeriac.exceptions");
    CHECK_STR(task_context_exc_module("WorkerLostError"), "celeriac.exceptions");
    CHECK_STR(task_context_exc_module(""), "celeriac.exceptions");
    CHECK_STR(task_context_exc_module(NULL), "celeriac.exceptions");
}

TEST(log_line_format)
{
    celeriac_task t;
    char line[512] = "";
    int fds[2];
    CHECK(pipe(fds) == 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fds[1], 2);
    log_set_process("ForkPoolWorker-3");
    task_context_init(&t, "0123-abcd", "process_document", 0, NULL, NULL, NULL);
    celeriac_task_log(&t, 1, "hello %d", 42);
    celeriac_task_log(&t, 9, "clamped");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    ssize_t n = read(fds[0], line, sizeof line - 1);
    close(fds[0]);
    CHECK(n > 0);
    line[n > 0 ? n : 0] = '\0';
    /* "[2026-11-23 17:00:00,123: INFO/ForkPoolWorker-3] process_document[0123-abcd]: hello 42" */
    CHECK(line[0] == '[' && line[5] == '-' && line[11] == ' ' && line[20] == ',' &&
          line[24] == ':');
    CHECK(strstr(line, ": INFO/ForkPoolWorker-3] process_document[0123-abcd]: hello 42\n"));
    CHECK(strstr(line, ": ERROR/ForkPoolWorker-3] process_document[0123-abcd]: clamped\n"));
    task_context_clear(&t);
}

TEST(progress_is_throttled)
{
    /* First update always stored; the next ones within the interval are not. */
    task_context_set_progress_interval(3600);
    struct fake_sink f = {0};
    struct task_sink sink = {fake_store, &f, NULL};
    celeriac_task t;
    task_context_init(&t, "id-t", "throttle", 0, NULL, NULL, &sink);
    CHECK_EQ_INT(celeriac_task_progress(&t, 10, "first"), 0);
    CHECK_EQ_INT(celeriac_task_progress(&t, 50, "second"), 0);
    CHECK_EQ_INT(celeriac_task_progress(&t, 90, "third"), 0);
    CHECK_EQ_INT(f.n, 1);
    task_context_clear(&t);
    /* A new task starts with its first update stored again. */
    task_context_init(&t, "id-u", "throttle", 0, NULL, NULL, &sink);
    CHECK_EQ_INT(celeriac_task_progress(&t, 5, "next task"), 0);
    CHECK_EQ_INT(f.n, 2);
    task_context_clear(&t);
    fake_free(&f);
    task_context_set_progress_interval(0.05);
}
