/* task_registry.c - the table of tasks by name, aliases and plugin loading; it
 * does not run tasks. */
#include "task_registry.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct alias {
    char *from; /* owned */
    char *to;   /* owned */
};

struct celeriac_registry {
    struct task_def *tasks; /* owned array */
    size_t ntasks;
    struct alias *aliases;  /* owned array */
    size_t naliases;
};

celeriac_registry *task_registry_new(void)
{
    return calloc(1, sizeof(celeriac_registry));
}

void task_registry_free(celeriac_registry *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->ntasks; i++)
        free(r->tasks[i].name);
    for (size_t i = 0; i < r->naliases; i++) {
        free(r->aliases[i].from);
        free(r->aliases[i].to);
    }
    free(r->tasks);
    free(r->aliases);
    free(r);
}

static const struct task_def *find_exact(const celeriac_registry *r, const char *name)
{
    for (size_t i = 0; i < r->ntasks; i++)
        if (strcmp(r->tasks[i].name, name) == 0)
            return &r->tasks[i];
    return NULL;
}

int celeriac_register(celeriac_registry *r, const char *name, celeriac_task_fn fn,
                      void *userdata, unsigned flags)
{
    if (!r || !name || !*name || !fn || strlen(name) > 255)
        return CELERIAC_EINVAL;
    if (find_exact(r, name)) {
        log_error("task %s is registered twice", name);
        return CELERIAC_EINVAL;
    }
    struct task_def *t = realloc(r->tasks, (r->ntasks + 1) * sizeof *t);
    if (!t)
        return CELERIAC_ENOMEM;
    r->tasks = t;
    t[r->ntasks].name = strdup(name);
    if (!t[r->ntasks].name)
        return CELERIAC_ENOMEM;
    t[r->ntasks].fn = fn;
    t[r->ntasks].userdata = userdata;
    t[r->ntasks].flags = flags;
    r->ntasks++;
    return 0;
}

int task_registry_alias(celeriac_registry *r, const char *from, const char *to)
{
    struct alias *a = realloc(r->aliases, (r->naliases + 1) * sizeof *a);
    if (!a)
        return CELERIAC_ENOMEM;
    r->aliases = a;
    a[r->naliases].from = strdup(from);
    a[r->naliases].to = strdup(to);
    if (!a[r->naliases].from || !a[r->naliases].to) {
        free(a[r->naliases].from);
        free(a[r->naliases].to);
        return CELERIAC_ENOMEM;
    }
    r->naliases++;
    return 0;
}

const struct task_def *task_registry_find(const celeriac_registry *r, const char *name)
{
    if (!r || !name)
        return NULL;
    const struct task_def *t = find_exact(r, name);
    if (t)
        return t;
    for (size_t i = 0; i < r->naliases; i++)
        if (strcmp(r->aliases[i].from, name) == 0)
            return find_exact(r, r->aliases[i].to);
    return NULL;
}

size_t task_registry_count(const celeriac_registry *r) { return r ? r->ntasks : 0; }

const struct task_def *task_registry_at(const celeriac_registry *r, size_t i)
{
    return r && i < r->ntasks ? &r->tasks[i] : NULL;
}

int task_registry_load_plugin(celeriac_registry *r, const char *path, char *err, size_t errlen)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(err, errlen, "cannot load plugin %s: %s", path, dlerror());
        return CELERIAC_ENOTFOUND;
    }
    const unsigned *ver = dlsym(h, "celeriac_plugin_api_version");
    celeriac_plugin_init_fn init;
    *(void **)&init = dlsym(h, "celeriac_plugin_init");
    if (!ver || !init) {
        snprintf(err, errlen, "%s is not a celeriac plugin (no CELERIAC_PLUGIN declaration)", path);
        dlclose(h);
        return CELERIAC_EINVAL;
    }
    if (*ver != CELERIAC_API_VERSION) {
        snprintf(err, errlen, "plugin %s was built for API version %u, this worker has %u", path,
                 *ver, (unsigned)CELERIAC_API_VERSION);
        dlclose(h);
        return CELERIAC_EVERSION;
    }
    size_t before = r->ntasks;
    int rc = init(r);
    if (rc < 0) {
        snprintf(err, errlen, "plugin %s failed to initialise: %s", path, celeriac_strerror(rc));
        return rc; /* the handle stays open: it may have registered functions */
    }
    log_info("plugin %s: %zu task(s)", path, r->ntasks - before);
    return 0;
}
