/* task_registry.h - task name -> C function, aliases (Celery module paths onto
 * celeriac names), and plugin loading. */
#ifndef CELERIAC_TASK_REGISTRY_H
#define CELERIAC_TASK_REGISTRY_H

#include "celeriac.h"

struct task_def {
    char *name;          /* owned */
    celeriac_task_fn fn;
    void *userdata;      /* borrowed until the registry is freed */
    unsigned flags;      /* CELERIAC_TASK_* */
};

/* Caller frees with task_registry_free(). NULL when out of memory. */
celeriac_registry *task_registry_new(void);
void task_registry_free(celeriac_registry *r);
/* Adds an alias: messages for `from` run task `to`. Either may be registered
 * later; aliases resolve at lookup. */
int task_registry_alias(celeriac_registry *r, const char *from, const char *to);
/* Finds a task by name, following one alias. Borrowed until the registry is freed. */
const struct task_def *task_registry_find(const celeriac_registry *r, const char *name);
size_t task_registry_count(const celeriac_registry *r);
const struct task_def *task_registry_at(const celeriac_registry *r, size_t i);
/* dlopen()s a plugin, checks its API version and runs its init. On failure
 * writes a one-line reason in err. Handles stay open until exit. */
int task_registry_load_plugin(celeriac_registry *r, const char *path, char *err, size_t errlen);

#endif
