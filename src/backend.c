/* backend.c - backend selection and Celery's result documents; the storage
 * itself is in backend_<kind>.c. */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "value.h"

struct backend *backend_redis_new(const char *url, char *err, size_t errlen);

struct backend *backend_new(const char *url, long expires, double retry_timeout,
                            const char *keyprefix, char *err, size_t errlen)
{
    struct backend *b = NULL;
    if (!url || !*url) {
        snprintf(err, errlen, "no result backend URL");
        return NULL;
    }
    if (strncmp(url, "redis", 5) == 0 || strncmp(url, "unix:", 5) == 0 ||
        strncmp(url, "socket:", 7) == 0) {
        b = backend_redis_new(url, err, errlen);
    } else {
        const char *colon = strchr(url, ':');
        snprintf(err, errlen, "result backend '%.*s' is not supported (use redis://)",
                 colon ? (int)(colon - url) : (int)strlen(url), url);
        return NULL;
    }
    if (b) {
        b->expires = expires;
        b->retry_timeout = retry_timeout;
        /* Celery's _add_global_keyprefix: a separator unless it ends in one. */
        if (keyprefix && *keyprefix)
            snprintf(b->keyprefix, sizeof b->keyprefix, "%s%s", keyprefix,
                     strchr(":_-.", keyprefix[strlen(keyprefix) - 1]) ? "" : "_");
    }
    return b;
}

void backend_free(struct backend *b)
{
    if (b)
        b->ops->free(b);
}

/* Appends ", \"key\": " and v as JSON (v borrowed; NULL is null). */
static int put_member(struct buf *b, const char *key, const celeriac_value *v)
{
    char *json = v ? celeriac_value_to_json(v) : NULL;
    int rc = v && !json ? -1 : 0;
    rc = rc ? rc : buf_puts(b, b->len > 1 ? ", \"" : "\"");
    rc = rc ? rc : buf_puts(b, key);
    rc = rc ? rc : buf_puts(b, "\": ");
    rc = rc ? rc : buf_puts(b, json ? json : "null");
    free(json);
    return rc;
}

static int put_string_member(struct buf *b, const char *key, const char *s)
{
    celeriac_value *v = s ? celeriac_value_new_string(s) : NULL;
    int rc = s && !v ? -1 : put_member(b, key, v);
    celeriac_value_free(v);
    return rc;
}

char *backend_encode_meta(const struct result_meta *m, size_t *len)
{
    /* Written member by member in Celery's key order; the result and
     * children are encoded where they are (borrowed, not copied). */
    struct buf b = {0};
    char date[40];
    static const celeriac_value no_children = {.type = CELERIAC_ARRAY};
    int ok = buf_puts(&b, "{") == 0;
    ok = ok && put_string_member(&b, "status", m->status) == 0;
    ok = ok && put_member(&b, "result", m->result) == 0;
    ok = ok && put_string_member(&b, "traceback", m->traceback) == 0;
    ok = ok && put_member(&b, "children", m->children ? m->children : &no_children) == 0;
    if (m->ready)
        util_iso8601_format(util_now(), date, sizeof date);
    ok = ok && put_string_member(&b, "date_done", m->ready ? date : NULL) == 0;
    if (m->group_id)
        ok = ok && put_string_member(&b, "group_id", m->group_id) == 0;
    if (m->parent_id)
        ok = ok && put_string_member(&b, "parent_id", m->parent_id) == 0;
    ok = ok && put_string_member(&b, "task_id", m->task_id) == 0;
    ok = ok && buf_puts(&b, "}") == 0;
    if (!ok) {
        buf_free(&b);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}

int backend_store_send(struct backend *b, size_t n, const char *const *task_ids,
                       const char *const *jsons, const size_t *lens)
{
    if (b->ops->store_many_send && b->ops->store_many_recv)
        return b->ops->store_many_send(b, n, task_ids, jsons, lens);
    double saved = b->retry_timeout;
    b->retry_timeout = -1;
    b->send_rc = backend_store_many(b, n, task_ids, jsons, lens);
    b->retry_timeout = saved;
    return 0;
}

int backend_store_recv(struct backend *b, size_t n, const char *const *task_ids,
                       const char *const *jsons, const size_t *lens)
{
    if (b->ops->store_many_send && b->ops->store_many_recv)
        return b->ops->store_many_recv(b, n, task_ids, jsons, lens);
    return b->send_rc;
}

int backend_store_fd(struct backend *b)
{
    return b && b->ops->store_many_fd ? b->ops->store_many_fd(b) : -1;
}

int backend_store_many(struct backend *b, size_t n, const char *const *task_ids,
                       const char *const *jsons, const size_t *lens)
{
    if (b->ops->store_many)
        return b->ops->store_many(b, n, task_ids, jsons, lens);
    int result = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = b->ops->store(b, task_ids[i], jsons[i], lens[i]);
        if (rc < 0)
            result = rc;
    }
    return result;
}

int backend_store_meta(struct backend *b, const struct result_meta *m)
{
    size_t len;
    char *json = backend_encode_meta(m, &len);
    if (!json)
        return CELERIAC_ENOMEM;
    int rc = b->ops->store(b, m->task_id, json, len);
    free(json);
    return rc;
}

int backend_post_meta(struct backend *b, const struct result_meta *m)
{
    if (!b->ops->post || !b->ops->settle)
        return backend_store_meta(b, m);
    size_t len;
    char *json = backend_encode_meta(m, &len);
    if (!json)
        return CELERIAC_ENOMEM;
    int rc = b->ops->post(b, m->task_id, json, len);
    free(json);
    return rc;
}

void backend_settle(struct backend *b)
{
    if (b && b->ops->settle)
        b->ops->settle(b);
}

celeriac_value *backend_exception(const char *exc_module, const char *exc_type,
                                  const char *message)
{
    celeriac_value *e = celeriac_value_new_object();
    celeriac_value *args = celeriac_value_new_array();
    if (!e || !args) {
        celeriac_value_free(e);
        celeriac_value_free(args);
        return NULL;
    }
    celeriac_value_append(args, celeriac_value_new_string(message ? message : ""));
    if (celeriac_value_set(e, "exc_type", celeriac_value_new_string(exc_type)) < 0 ||
        celeriac_value_set(e, "exc_message", args) < 0 ||
        celeriac_value_set(e, "exc_module", celeriac_value_new_string(exc_module)) < 0) {
        celeriac_value_free(e);
        return NULL;
    }
    return e;
}

int backend_store_failure(struct backend *b, const char *task_id, const char *exc_module,
                          const char *exc_type, const char *message, const char *parent_id,
                          const char *group_id)
{
    celeriac_value *exc = backend_exception(exc_module, exc_type, message);
    if (!exc)
        return CELERIAC_ENOMEM;
    char *tb = backend_traceback(exc_module, exc_type, message);
    struct result_meta m = {.task_id = task_id, .status = "FAILURE", .result = exc,
                            .traceback = tb, .parent_id = parent_id, .group_id = group_id,
                            .ready = 1};
    int rc = backend_store_meta(b, &m);
    celeriac_value_free(exc);
    free(tb);
    return rc;
}

char *backend_traceback(const char *exc_module, const char *exc_type, const char *message)
{
    struct buf tb = {0};
    int builtin = !exc_module || strcmp(exc_module, "builtins") == 0;
    buf_printf(&tb, "Traceback (most recent call last):\n  File \"celeriac\", in worker\n%s%s%s: %s\n",
               builtin ? "" : exc_module, builtin ? "" : ".", exc_type, message ? message : "");
    return tb.p;
}

int backend_chord_part_return(struct backend *b, const char *group_id, const char *task_id,
                              const celeriac_value *group_index, const char *state,
                              const celeriac_value *result, celeriac_value **parts)
{
    *parts = NULL;
    if (!b->ops->chord_part_return)
        return CELERIAC_EUNSUPPORTED;
    celeriac_value *part = celeriac_value_new_array();
    if (!part)
        return CELERIAC_ENOMEM;
    celeriac_value_append(part, celeriac_value_new_int(1));
    celeriac_value_append(part, celeriac_value_new_string(task_id));
    celeriac_value_append(part, celeriac_value_new_string(state));
    celeriac_value_append(part, result ? celeriac_value_copy(result) : celeriac_value_new_null());
    char *json = celeriac_value_len(part) == 4 ? celeriac_value_to_json(part) : NULL;
    celeriac_value_free(part);
    if (!json)
        return CELERIAC_ENOMEM;
    char score[32] = "+inf";
    if (celeriac_value_type(group_index) == CELERIAC_INT)
        snprintf(score, sizeof score, "%lld", (long long)celeriac_value_int(group_index));
    int rc = b->ops->chord_part_return(b, group_id, json, strlen(json), score, parts);
    free(json);
    return rc;
}

int backend_chord_clear(struct backend *b, const char *group_id)
{
    return b->ops->chord_clear ? b->ops->chord_clear(b, group_id) : CELERIAC_EUNSUPPORTED;
}

int backend_chord_set_size(struct backend *b, const char *group_id, long size)
{
    return b->ops->chord_set_size ? b->ops->chord_set_size(b, group_id, size)
                                  : CELERIAC_EUNSUPPORTED;
}
