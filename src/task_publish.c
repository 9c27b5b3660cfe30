/* task_publish.c - encodes and sends protocol 2 task messages the worker originates; it does not decide what to send (canvas.c, task_exec.c do) nor decode messages (task_message.c). */
#include "task_publish.h"

#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "value.h"

static celeriac_value *str_or_null(const char *s)
{
    return s ? celeriac_value_new_string(s) : celeriac_value_new_null();
}

static celeriac_value *copy_or_null(const celeriac_value *v)
{
    return v ? celeriac_value_copy(v) : celeriac_value_new_null();
}

/* Headers in the order Celery 5.2's as_task_v2 writes them. */
static celeriac_value *build_headers(const struct task_publish *p, const char *argsrepr,
                                     const char *kwargsrepr)
{
    celeriac_value *h = celeriac_value_new_object();
    celeriac_value *tl = celeriac_value_new_array();
    if (!h || !tl) {
        celeriac_value_free(h);
        celeriac_value_free(tl);
        return NULL;
    }
    int ok = celeriac_value_append(tl, copy_or_null(p->time_limit)) == 0;
    ok = ok && celeriac_value_append(tl, copy_or_null(p->soft_time_limit)) == 0;
    ok = ok && celeriac_value_set(h, "lang", celeriac_value_new_string("py")) == 0;
    ok = ok && celeriac_value_set(h, "task", celeriac_value_new_string(p->task)) == 0;
    ok = ok && celeriac_value_set(h, "id", celeriac_value_new_string(p->id)) == 0;
    ok = ok && celeriac_value_set(h, "shadow", str_or_null(p->shadow)) == 0;
    ok = ok && celeriac_value_set(h, "eta", str_or_null(p->eta)) == 0;
    ok = ok && celeriac_value_set(h, "expires", str_or_null(p->expires)) == 0;
    ok = ok && celeriac_value_set(h, "group", str_or_null(p->group_id)) == 0;
    ok = ok && celeriac_value_set(h, "group_index", copy_or_null(p->group_index)) == 0;
    ok = ok && celeriac_value_set(h, "retries", celeriac_value_new_int(p->retries)) == 0;
    ok = ok && celeriac_value_set(h, "timelimit", tl) == 0;
    tl = NULL;
    ok = ok && celeriac_value_set(h, "root_id", celeriac_value_new_string(p->root_id ? p->root_id
                                                                                   : p->id)) == 0;
    ok = ok && celeriac_value_set(h, "parent_id", str_or_null(p->parent_id)) == 0;
    ok = ok && celeriac_value_set(h, "argsrepr", celeriac_value_new_string(argsrepr)) == 0;
    ok = ok && celeriac_value_set(h, "kwargsrepr", celeriac_value_new_string(kwargsrepr)) == 0;
    ok = ok && celeriac_value_set(h, "origin", str_or_null(p->origin)) == 0;
    ok = ok &&
         celeriac_value_set(h, "ignore_result", celeriac_value_new_bool(p->ignore_result)) == 0;
    if (!ok) {
        celeriac_value_free(h);
        return NULL;
    }
    return h;
}

static celeriac_value *build_body(const struct task_publish *p)
{
    celeriac_value *body = celeriac_value_new_array();
    celeriac_value *embed = celeriac_value_new_object();
    if (!body || !embed) {
        celeriac_value_free(body);
        celeriac_value_free(embed);
        return NULL;
    }
    int ok = celeriac_value_set(embed, "callbacks", copy_or_null(p->callbacks)) == 0;
    ok = ok && celeriac_value_set(embed, "errbacks", copy_or_null(p->errbacks)) == 0;
    ok = ok && celeriac_value_set(embed, "chain", copy_or_null(p->chain)) == 0;
    ok = ok && celeriac_value_set(embed, "chord", copy_or_null(p->chord)) == 0;
    ok = ok && celeriac_value_append(body, p->args ? celeriac_value_copy(p->args)
                                                   : celeriac_value_new_array()) == 0;
    ok = ok && celeriac_value_append(body, p->kwargs ? celeriac_value_copy(p->kwargs)
                                                     : celeriac_value_new_object()) == 0;
    ok = ok && celeriac_value_append(body, embed) == 0;
    embed = NULL;
    if (!ok) {
        celeriac_value_free(body);
        return NULL;
    }
    return body;
}

static celeriac_value *build_properties(const struct task_publish *p)
{
    celeriac_value *props = celeriac_value_new_object();
    if (!props)
        return NULL;
    int ok = celeriac_value_set(props, "correlation_id", celeriac_value_new_string(p->id)) == 0;
    ok = ok && celeriac_value_set(props, "reply_to",
                                  celeriac_value_new_string(p->reply_to ? p->reply_to : "")) == 0;
    for (size_t i = 0; ok && i < celeriac_value_len(p->properties_extra); i++)
        ok = celeriac_value_set(props, celeriac_value_key_at(p->properties_extra, i),
                                celeriac_value_copy(celeriac_value_at(p->properties_extra, i))) ==
             0;
    ok = ok && celeriac_value_set(props, "priority", celeriac_value_new_int(p->priority)) == 0;
    if (!ok) {
        celeriac_value_free(props);
        return NULL;
    }
    return props;
}

const char *task_publish_queue(const struct task_publish *p)
{
    return p->queue && *p->queue ? p->queue : "celery";
}

int task_publish_encode(const struct task_publish *p, struct buf *out)
{
    int rc = CELERIAC_ENOMEM;
    char *argsrepr = NULL, *kwargsrepr = NULL;
    celeriac_value *headers = NULL, *body = NULL, *props = NULL;
    celeriac_value *empty_kwargs = NULL;
    if (!p || !p->id || !p->task || !*p->id || !*p->task ||
        (p->args && celeriac_value_type(p->args) != CELERIAC_ARRAY) ||
        (p->kwargs && celeriac_value_type(p->kwargs) != CELERIAC_OBJECT))
        return CELERIAC_EINVAL;
    if (!p->kwargs && !(empty_kwargs = celeriac_value_new_object()))
        goto out;
    argsrepr = value_repr_tuple(p->args, TASK_PUBLISH_REPR_MAX);
    kwargsrepr = value_repr(p->kwargs ? p->kwargs : empty_kwargs, TASK_PUBLISH_REPR_MAX);
    if (!argsrepr || !kwargsrepr)
        goto out;
    headers = build_headers(p, argsrepr, kwargsrepr);
    body = build_body(p);
    props = build_properties(p);
    if (!headers || !body || !props)
        goto out;
    rc = envelope_encode(body, headers, props, 2, "", task_publish_queue(p), out);
out:
    free(argsrepr);
    free(kwargsrepr);
    celeriac_value_free(empty_kwargs);
    celeriac_value_free(headers);
    celeriac_value_free(body);
    celeriac_value_free(props);
    return rc;
}

int task_publish_send(struct broker *b, const struct task_publish *p)
{
    struct buf env = {0};
    int rc = task_publish_encode(p, &env);
    if (rc == 0)
        rc = b->ops->publish(b, task_publish_queue(p), p->priority, env.p, env.len);
    buf_free(&env);
    return rc;
}
