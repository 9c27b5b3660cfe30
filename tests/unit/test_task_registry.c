/* test_task_registry.c - registration, aliases and plugin loading. */
#include <stdlib.h>

#include "test.h"
#include "task_context.h"
#include "task_registry.h"

static int noop(celeriac_task *t, void *ud)
{
    (void)t;
    (void)ud;
    return 0;
}

TEST(register_and_alias)
{
    celeriac_registry *r = task_registry_new();
    CHECK_EQ_INT(celeriac_register(r, "a.b", noop, NULL, CELERIAC_TASK_ACKS_LATE), 0);
    CHECK(celeriac_register(r, "a.b", noop, NULL, 0) == CELERIAC_EINVAL);
    CHECK(celeriac_register(r, "", noop, NULL, 0) == CELERIAC_EINVAL);
    CHECK_EQ_INT(task_registry_alias(r, "myapp.tasks.b", "a.b"), 0);
    const struct task_def *d = task_registry_find(r, "myapp.tasks.b");
    CHECK(d != NULL && strcmp(d->name, "a.b") == 0 && d->flags == CELERIAC_TASK_ACKS_LATE);
    CHECK(task_registry_find(r, "missing") == NULL);
    CHECK_EQ_INT(task_registry_count(r), 1);
    task_registry_free(r);
}

TEST(load_examples_plugin)
{
    celeriac_registry *r = task_registry_new();
    char err[512];
    CHECK_EQ_INT(task_registry_load_plugin(r, CELERIAC_EXAMPLES_SO, err, sizeof err), 0);
    const struct task_def *add = task_registry_find(r, "examples.add");
    CHECK(add != NULL);
    if (!add) {
        fprintf(stderr, "  %s\n", err);
        task_registry_free(r);
        return;
    }
    CHECK(task_registry_find(r, "examples.echo") && task_registry_find(r, "examples.sleep") &&
          task_registry_find(r, "examples.fail") && task_registry_find(r, "examples.crash"));
    /* Run examples.add(2, 3) through the real context. */
    celeriac_value *args = celeriac_value_new_array();
    celeriac_value_append(args, celeriac_value_new_int(2));
    celeriac_value_append(args, celeriac_value_new_int(3));
    celeriac_task t;
    task_context_init(&t, "id-1", "examples.add", 0, args, NULL, NULL);
    CHECK_EQ_INT(add->fn(&t, add->userdata), 0);
    celeriac_value *res = task_context_take_result(&t);
    CHECK_EQ_INT(celeriac_value_int(res), 5);
    celeriac_value_free(res);
    task_context_clear(&t);
    celeriac_value_free(args);
    task_registry_free(r);
}

TEST(plugin_errors)
{
    celeriac_registry *r = task_registry_new();
    char err[512];
    CHECK(task_registry_load_plugin(r, "/nonexistent/x.so", err, sizeof err) ==
          CELERIAC_ENOTFOUND);
    /* libc is a shared object without the plugin declaration. */
    CHECK(task_registry_load_plugin(r, "libm.so.6", err, sizeof err) == CELERIAC_EINVAL);
    CHECK(strstr(err, "not a celeriac plugin") != NULL);
    task_registry_free(r);
}
