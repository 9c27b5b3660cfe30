/* canvas.c - owns the canvas duties of a pool process once a task ran (link callbacks, chain steps, errbacks, chord join and body, the retry message); it does not run tasks, store the task's own result (task_exec.c) or encode messages (task_publish.c). */
#include "canvas.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "task_publish.h"
#include "util.h"
#include "value.h"

/* How one signature is applied: Signature.apply_async's call-time options. */
struct apply {
    const celeriac_value *partial;     /* ARRAY prepended to args unless immutable, or NULL */
    const char *parent_id;             /* NULL = the signature's options.parent_id */
    const char *root_id;               /* NULL = options.root_id, else root_default */
    const char *root_default;
    const char *group_id;              /* group members and chord header parts */
    const celeriac_value *group_index; /* chord header parts: INT */
    int has_chain;                     /* chain below replaces options.chain */
    const celeriac_value *chain;       /* embed.chain to send (ARRAY or NULL = null) */
    const celeriac_value *chord;       /* embed.chord to send, or NULL = options.chord */
};

static int apply_sig(const struct canvas_env *e, const celeriac_value *sig, const struct apply *a,
                     celeriac_value *children);

/* ---- signature fields ------------------------------------------------------ */

static const celeriac_value *opt(const celeriac_value *sig, const char *key)
{
    return celeriac_value_get(celeriac_value_get(sig, "options"), key);
}

static const char *opt_str(const celeriac_value *sig, const char *key)
{
    const char *s = value_get_str(celeriac_value_get(sig, "options"), key);
    return s && *s ? s : NULL;
}

/* The value unless it is missing or null. */
static const celeriac_value *present(const celeriac_value *v)
{
    return celeriac_value_type(v) == CELERIAC_NULL ? NULL : v;
}

static int is_number(const celeriac_value *v)
{
    return celeriac_value_type(v) == CELERIAC_INT || celeriac_value_type(v) == CELERIAC_DOUBLE;
}

static const char *sig_type(const celeriac_value *sig)
{
    const char *t = value_get_str(sig, "subtask_type");
    return t && *t ? t : NULL;
}

/* A link option as a list: an ARRAY copied, one signature OBJECT wrapped.
 * Caller frees with celeriac_value_free(); NULL when absent or empty. */
static celeriac_value *as_list(const celeriac_value *v)
{
    celeriac_value *out = NULL;
    if (celeriac_value_type(v) == CELERIAC_ARRAY && celeriac_value_len(v) > 0) {
        out = celeriac_value_copy(v);
    } else if (celeriac_value_type(v) == CELERIAC_OBJECT) {
        out = celeriac_value_new_array();
        if (out)
            celeriac_value_append(out, celeriac_value_copy(v));
    }
    return out;
}

/* Sets options.key of a signature (an OBJECT we own); takes ownership of v. */
static int set_opt(celeriac_value *sig, const char *key, celeriac_value *v)
{
    const celeriac_value *o = celeriac_value_get(sig, "options");
    if (celeriac_value_type(o) != CELERIAC_OBJECT) {
        if (celeriac_value_set(sig, "options", celeriac_value_new_object()) < 0) {
            celeriac_value_free(v);
            return CELERIAC_ENOMEM;
        }
        o = celeriac_value_get(sig, "options");
    }
    return celeriac_value_set((celeriac_value *)o, key, v);
}

/* [[id, null], null]: a sent task in a result's children. */
static celeriac_value *result_tuple(const char *id, celeriac_value *parent)
{
    celeriac_value *t = celeriac_value_new_array(), *inner = celeriac_value_new_array();
    if (!t || !inner) {
        celeriac_value_free(t);
        celeriac_value_free(inner);
        celeriac_value_free(parent);
        return NULL;
    }
    celeriac_value_append(inner, celeriac_value_new_string(id));
    celeriac_value_append(inner, parent ? parent : celeriac_value_new_null());
    celeriac_value_append(t, inner);
    celeriac_value_append(t, celeriac_value_new_null());
    return t;
}

/* [[gid, null], [member tuples]]: a sent group. Takes ownership of members. */
static celeriac_value *group_tuple(const char *gid, celeriac_value *members)
{
    celeriac_value *t = result_tuple(gid, NULL);
    if (!t) {
        celeriac_value_free(members);
        return NULL;
    }
    celeriac_value_free(value_take_at(t, 1));
    if (celeriac_value_append(t, members) < 0) {
        celeriac_value_free(t);
        return NULL;
    }
    return t;
}

static void add_child(celeriac_value *children, celeriac_value *tuple)
{
    if (children)
        celeriac_value_append(children, tuple);
    else
        celeriac_value_free(tuple);
}

char *canvas_exception_repr(const celeriac_value *exc)
{
    const char *type = value_get_str(exc, "exc_type");
    if (!type)
        return value_repr(exc, 1024);
    const celeriac_value *args = celeriac_value_get(exc, "exc_message");
    struct buf b = {0};
    buf_printf(&b, "%s(", type);
    if (celeriac_value_type(args) == CELERIAC_ARRAY) {
        for (size_t i = 0; i < celeriac_value_len(args); i++) {
            char *r = value_repr(celeriac_value_at(args, i), 1024);
            buf_printf(&b, "%s%s", i ? ", " : "", r ? r : "?");
            free(r);
        }
    } else if (present(args)) {
        char *r = value_repr(args, 1024);
        buf_puts(&b, r ? r : "?");
        free(r);
    }
    buf_puts(&b, ")");
    return b.p;
}

/* ---- sending --------------------------------------------------------------- */

static int send_msg(const struct canvas_env *e, const struct task_publish *p)
{
    struct broker *b = e->publisher ? e->publisher(e->ud) : NULL;
    if (!b) {
        log_error("cannot send %s[%s]: no broker link in this process", p->task, p->id);
        return CELERIAC_ECONN;
    }
    int rc = task_publish_send(b, p);
    if (rc == CELERIAC_ECONN && b->ops->connect_publisher(b) == 0)
        rc = task_publish_send(b, p);
    if (rc < 0)
        log_error("cannot send %s[%s]: %s", p->task, p->id,
                  *b->errstr ? b->errstr : celeriac_strerror(rc));
    return rc;
}

/* A signature that cannot be applied: logged, and FAILURE stored under its
 * own id so nobody waits on it forever. */
static void fail_sig(const struct canvas_env *e, const celeriac_value *sig, const char *parent_id,
                     const char *why)
{
    const char *id = opt_str(sig, "task_id");
    const char *name = value_get_str(sig, "task");
    log_error("cannot apply signature %s[%s]: %s", name ? name : "?", id ? id : "no id", why);
    if (id && e->backend)
        backend_store_failure(e->backend, id, "builtins", "NotImplementedError", why, parent_id,
                              opt_str(sig, "group_id"));
}

static const char *route(const celeriac_value *sig)
{
    const char *q = opt_str(sig, "queue");
    return q ? q : opt_str(sig, "routing_key");
}

static int apply_task(const struct canvas_env *e, const celeriac_value *sig, const struct apply *a,
                      celeriac_value *children)
{
    const char *name = value_get_str(sig, "task");
    if (!name || !*name) {
        fail_sig(e, sig, a->parent_id, "signature has no task name");
        return CELERIAC_EINVAL;
    }
    char idbuf[37], eta[48], expires[48];
    const char *id = opt_str(sig, "task_id");
    if (!id) {
        util_uuid4(idbuf);
        id = idbuf;
    }
    int rc = CELERIAC_ENOMEM;
    celeriac_value *args = celeriac_value_new_array();
    celeriac_value *callbacks = as_list(opt(sig, "link"));
    celeriac_value *errbacks = as_list(opt(sig, "link_error"));
    if (!args)
        goto out;
    const celeriac_value *sargs = celeriac_value_get(sig, "args");
    if (a->partial && !celeriac_value_bool(celeriac_value_get(sig, "immutable")))
        for (size_t i = 0; i < celeriac_value_len(a->partial); i++)
            if (celeriac_value_append(args, celeriac_value_copy(celeriac_value_at(a->partial, i))))
                goto out;
    if (celeriac_value_type(sargs) == CELERIAC_ARRAY)
        for (size_t i = 0; i < celeriac_value_len(sargs); i++)
            if (celeriac_value_append(args, celeriac_value_copy(celeriac_value_at(sargs, i))))
                goto out;
    const celeriac_value *kwargs = celeriac_value_get(sig, "kwargs");
    const char *eta_s = opt_str(sig, "eta");
    const celeriac_value *countdown = opt(sig, "countdown");
    if (!eta_s && is_number(countdown) && celeriac_value_double(countdown) > 0) {
        util_iso8601_format_tz(util_now() + celeriac_value_double(countdown), eta, sizeof eta);
        eta_s = eta;
    }
    const char *exp_s = opt_str(sig, "expires");
    if (!exp_s && is_number(opt(sig, "expires"))) {
        util_iso8601_format_tz(util_now() + celeriac_value_double(opt(sig, "expires")), expires,
                               sizeof expires);
        exp_s = expires;
    }
    const celeriac_value *prio = opt(sig, "priority");
    int64_t priority = celeriac_value_type(prio) == CELERIAC_INT ? celeriac_value_int(prio) : 0;
    const celeriac_value *gi = a->group_index ? a->group_index : present(opt(sig, "group_index"));
    const char *root = a->root_id ? a->root_id : opt_str(sig, "root_id");
    struct task_publish p = {
        .id = id,
        .task = name,
        .args = args,
        .kwargs = celeriac_value_type(kwargs) == CELERIAC_OBJECT ? kwargs : NULL,
        .callbacks = callbacks,
        .errbacks = errbacks,
        .chain = a->has_chain ? a->chain : present(opt(sig, "chain")),
        .chord = a->chord ? a->chord : present(opt(sig, "chord")),
        .shadow = opt_str(sig, "shadow"),
        .eta = eta_s,
        .expires = exp_s,
        .group_id = a->group_id ? a->group_id : opt_str(sig, "group_id"),
        .group_index = celeriac_value_type(gi) == CELERIAC_INT ? gi : NULL,
        .time_limit = is_number(opt(sig, "time_limit")) ? opt(sig, "time_limit") : NULL,
        .soft_time_limit = is_number(opt(sig, "soft_time_limit")) ? opt(sig, "soft_time_limit")
                                                                   : NULL,
        .root_id = root ? root : a->root_default,
        .parent_id = a->parent_id ? a->parent_id : opt_str(sig, "parent_id"),
        .origin = e->hostname,
        .ignore_result = celeriac_value_bool(opt(sig, "ignore_result")),
        .reply_to = opt_str(sig, "reply_to") ? opt_str(sig, "reply_to") : e->reply_to,
        .priority = priority < 0 ? 0 : priority > 255 ? 255 : (int)priority,
        .queue = route(sig),
    };
    rc = send_msg(e, &p);
    if (rc == 0)
        add_child(children, result_tuple(id, NULL));
out:
    celeriac_value_free(args);
    celeriac_value_free(callbacks);
    celeriac_value_free(errbacks);
    return rc;
}

/* Sends each signature of list as a member of group gid (nested groups are
 * unrolled into it, as Celery's group._prepared does); their result tuples go
 * to tuples. Returns the first error. */
static int apply_members(const struct canvas_env *e, const celeriac_value *list, const char *gid,
                         const struct apply *a, celeriac_value *tuples, unsigned depth)
{
    int rc = 0;
    struct apply m = *a;
    m.group_id = gid;
    m.group_index = NULL;
    m.has_chain = 0;
    m.chain = NULL;
    for (size_t i = 0; i < celeriac_value_len(list); i++) {
        const celeriac_value *sig = celeriac_value_at(list, i);
        const char *type = sig_type(sig);
        int one;
        if (type && strcmp(type, "group") == 0 && depth < 8)
            one = apply_members(e, celeriac_value_get(celeriac_value_get(sig, "kwargs"), "tasks"),
                                gid, a, tuples, depth + 1);
        else if (!type)
            one = apply_task(e, sig, &m, tuples);
        else
            one = apply_sig(e, sig, &m, tuples);
        if (one < 0 && rc == 0)
            rc = one;
    }
    return rc;
}

/* Sends list as one group (id gid, or a fresh one) and adds its tuple. */
static int apply_list_as_group(const struct canvas_env *e, const celeriac_value *list,
                               const char *gid, const struct apply *a, celeriac_value *children)
{
    char fresh[37];
    if (!gid) {
        util_uuid4(fresh);
        gid = fresh;
    }
    celeriac_value *tuples = celeriac_value_new_array();
    if (!tuples)
        return CELERIAC_ENOMEM;
    int rc = apply_members(e, list, gid, a, tuples, 0);
    add_child(children, group_tuple(gid, tuples));
    return rc;
}

static int apply_group(const struct canvas_env *e, const celeriac_value *sig, const struct apply *a,
                       celeriac_value *children)
{
    const celeriac_value *tasks = celeriac_value_get(celeriac_value_get(sig, "kwargs"), "tasks");
    if (celeriac_value_type(tasks) != CELERIAC_ARRAY) {
        fail_sig(e, sig, a->parent_id, "group signature without kwargs.tasks");
        return CELERIAC_EINVAL;
    }
    return apply_list_as_group(e, tasks, opt_str(sig, "task_id"), a, children);
}

/* The header members of a chord signature (a group signature or a list). */
static const celeriac_value *chord_header(const celeriac_value *sig)
{
    const celeriac_value *h = celeriac_value_get(celeriac_value_get(sig, "kwargs"), "header");
    if (celeriac_value_type(h) == CELERIAC_OBJECT)
        h = celeriac_value_get(celeriac_value_get(h, "kwargs"), "tasks");
    return celeriac_value_type(h) == CELERIAC_ARRAY ? h : NULL;
}

/* chord(header, body) applied from a worker: the size is stored, then each
 * header part is sent with the group id, its index and the body in embed.chord;
 * the part that completes the join sends the body (canvas_chord_part). */
static int apply_chord(const struct canvas_env *e, const celeriac_value *sig, const struct apply *a,
                       celeriac_value *children)
{
    const celeriac_value *header = chord_header(sig);
    const celeriac_value *body0 = celeriac_value_get(celeriac_value_get(sig, "kwargs"), "body");
    if (!header || celeriac_value_type(body0) != CELERIAC_OBJECT) {
        fail_sig(e, sig, a->parent_id, "chord signature without header or body");
        return CELERIAC_EINVAL;
    }
    for (size_t i = 0; i < celeriac_value_len(header); i++)
        if (sig_type(celeriac_value_at(header, i))) {
            fail_sig(e, body0, a->parent_id,
                     "celeriac cannot apply a chord whose header holds groups, chains or chords");
            return CELERIAC_EUNSUPPORTED;
        }
    if (!e->backend) {
        fail_sig(e, body0, a->parent_id, "a chord needs a result backend");
        return CELERIAC_EUNSUPPORTED;
    }
    const celeriac_value *hsig = celeriac_value_get(celeriac_value_get(sig, "kwargs"), "header");
    char gidbuf[37], bodybuf[37];
    const char *gid =
        celeriac_value_type(hsig) == CELERIAC_OBJECT ? opt_str(hsig, "task_id") : NULL;
    if (!gid) {
        util_uuid4(gidbuf);
        gid = gidbuf;
    }
    /* body.freeze(chord task_id): the body keeps an id it already has. */
    const char *body_id = opt_str(body0, "task_id") ? opt_str(body0, "task_id")
                                                    : opt_str(sig, "task_id");
    if (!body_id) {
        util_uuid4(bodybuf);
        body_id = bodybuf;
    }
    int rc = CELERIAC_ENOMEM;
    celeriac_value *body = celeriac_value_copy(body0);
    celeriac_value *tuples = celeriac_value_new_array();
    if (!body || !tuples || set_opt(body, "task_id", celeriac_value_new_string(body_id)) < 0)
        goto out;
    /* The chord's own options (a chain after it, links) travel with the body. */
    if (a->has_chain && a->chain && set_opt(body, "chain", celeriac_value_copy(a->chain)) < 0)
        goto out;
    if (present(opt(sig, "link")) &&
        set_opt(body, "link", celeriac_value_copy(opt(sig, "link"))) < 0)
        goto out;
    if (present(opt(sig, "link_error")) &&
        set_opt(body, "link_error", celeriac_value_copy(opt(sig, "link_error"))) < 0)
        goto out;
    size_t n = celeriac_value_len(header);
    if (n == 0) {
        celeriac_value *empty = celeriac_value_new_array(), *partial = celeriac_value_new_array();
        if (empty && partial && celeriac_value_append(partial, empty) == 0) {
            empty = NULL;
            struct apply b = *a;
            b.partial = partial;
            b.has_chain = 0;
            rc = apply_sig(e, body, &b, NULL);
        }
        celeriac_value_free(empty);
        celeriac_value_free(partial);
    } else if ((rc = backend_chord_set_size(e->backend, gid, (long)n)) < 0) {
        fail_sig(e, body, a->parent_id, "cannot store the chord size in the result backend");
    } else {
        struct apply m = *a;
        m.group_id = gid;
        m.has_chain = 1;
        m.chain = NULL; /* chains never go to the header (Celery #3771) */
        m.chord = body;
        for (size_t i = 0; i < n; i++) {
            celeriac_value *index = celeriac_value_new_int((int64_t)i);
            m.group_index = index;
            int one = index ? apply_task(e, celeriac_value_at(header, i), &m, tuples)
                            : CELERIAC_ENOMEM;
            celeriac_value_free(index);
            if (one < 0 && rc == 0)
                rc = one;
        }
    }
    /* As in Celery, the header's group result is what joins the trail. */
    add_child(children, group_tuple(gid, tuples));
    tuples = NULL;
out:
    celeriac_value_free(body);
    celeriac_value_free(tuples);
    return rc;
}

/* Appends the steps of a chain to out in execution order, flattening nested
 * chains. Borrowed pointers. */
static size_t flatten_steps(const celeriac_value *tasks, const celeriac_value **out, size_t max,
                            size_t n, unsigned depth)
{
    for (size_t i = 0; i < celeriac_value_len(tasks) && n < max; i++) {
        const celeriac_value *s = celeriac_value_at(tasks, i);
        const char *type = sig_type(s);
        if (type && strcmp(type, "chain") == 0 && depth < 8)
            n = flatten_steps(celeriac_value_get(celeriac_value_get(s, "kwargs"), "tasks"), out,
                              max, n, depth + 1);
        else
            out[n++] = s;
    }
    return n;
}

/* chain(...) applied from a worker: like the producer, every step gets an id,
 * a group followed by a step becomes a chord, the first step is sent and the
 * rest rides along reversed in embed.chain. */
static int apply_chain(const struct canvas_env *e, const celeriac_value *sig, const struct apply *a,
                       celeriac_value *children)
{
    enum { MAX_STEPS = 256 };
    const celeriac_value *flat[MAX_STEPS];
    const celeriac_value *tasks = celeriac_value_get(celeriac_value_get(sig, "kwargs"), "tasks");
    size_t n = flatten_steps(tasks, flat, MAX_STEPS, 0, 0);
    if (n == 0) {
        fail_sig(e, sig, a->parent_id, "chain signature without steps");
        return CELERIAC_EINVAL;
    }
    int rc = CELERIAC_ENOMEM;
    celeriac_value *steps = celeriac_value_new_array(); /* execution order, owned copies */
    celeriac_value *rest = NULL;
    if (!steps)
        goto out;
    for (size_t i = 0; i < n; i++) {
        celeriac_value *s = celeriac_value_copy(flat[i]);
        const char *type = sig_type(s);
        if (!s)
            goto out;
        if (type && strcmp(type, "group") == 0 && i + 1 < n) {
            /* group | task: Celery upgrades it to chord(group, task). */
            celeriac_value *c = celeriac_value_new_object(), *kw = celeriac_value_new_object();
            celeriac_value *body = celeriac_value_copy(flat[++i]);
            if (!c || !kw || !body) {
                celeriac_value_free(c);
                celeriac_value_free(kw);
                celeriac_value_free(body);
                celeriac_value_free(s);
                goto out;
            }
            celeriac_value_set(kw, "header", s);
            celeriac_value_set(kw, "body", body);
            celeriac_value_set(c, "task", celeriac_value_new_string("celery.chord"));
            celeriac_value_set(c, "args", celeriac_value_new_array());
            celeriac_value_set(c, "kwargs", kw);
            celeriac_value_set(c, "options", celeriac_value_new_object());
            celeriac_value_set(c, "subtask_type", celeriac_value_new_string("chord"));
            celeriac_value_set(c, "immutable", celeriac_value_new_bool(0));
            s = c;
        } else if (!type && !opt_str(s, "task_id")) {
            char id[37];
            util_uuid4(id);
            if (set_opt(s, "task_id", celeriac_value_new_string(id)) < 0) {
                celeriac_value_free(s);
                goto out;
            }
        }
        if (celeriac_value_append(steps, s) < 0)
            goto out;
    }
    /* The chain's link goes to its last step, link_error to every step. */
    size_t count = celeriac_value_len(steps);
    const celeriac_value *link = present(opt(sig, "link"));
    const celeriac_value *link_error = present(opt(sig, "link_error"));
    if (link && set_opt((celeriac_value *)celeriac_value_at(steps, count - 1), "link",
                        celeriac_value_copy(link)) < 0)
        goto out;
    for (size_t i = 0; link_error && i < count; i++)
        if (set_opt((celeriac_value *)celeriac_value_at(steps, i), "link_error",
                    celeriac_value_copy(link_error)) < 0)
            goto out;
    /* embed.chain: an outer chain's remaining steps, then ours reversed. */
    rest = a->has_chain && a->chain ? celeriac_value_copy(a->chain) : celeriac_value_new_array();
    if (!rest)
        goto out;
    for (size_t i = count; i > 1; i--)
        if (celeriac_value_append(rest, celeriac_value_copy(celeriac_value_at(steps, i - 1))) < 0)
            goto out;
    struct apply first = *a;
    first.has_chain = 1;
    first.chain = rest;
    rc = apply_sig(e, celeriac_value_at(steps, 0), &first, children);
out:
    celeriac_value_free(steps);
    celeriac_value_free(rest);
    return rc;
}

static int apply_sig(const struct canvas_env *e, const celeriac_value *sig, const struct apply *a,
                     celeriac_value *children)
{
    if (celeriac_value_type(sig) != CELERIAC_OBJECT) {
        log_error("cannot apply a signature that is not an object");
        return CELERIAC_EINVAL;
    }
    const char *type = sig_type(sig);
    if (!type)
        return apply_task(e, sig, a, children);
    if (strcmp(type, "group") == 0) {
        if (a->has_chain && celeriac_value_len(a->chain) > 0) {
            fail_sig(e, sig, a->parent_id, "a group followed by more chain steps");
            return CELERIAC_EUNSUPPORTED;
        }
        return apply_group(e, sig, a, children);
    }
    if (strcmp(type, "chain") == 0)
        return apply_chain(e, sig, a, children);
    if (strcmp(type, "chord") == 0)
        return apply_chord(e, sig, a, children);
    char why[160];
    snprintf(why, sizeof why, "celeriac cannot apply signatures of subtask_type '%s'", type);
    fail_sig(e, sig, a->parent_id, why);
    return CELERIAC_EUNSUPPORTED;
}

/* ---- after a task ran ------------------------------------------------------ */

static const celeriac_value *embed(const struct task_message *m, const char *key)
{
    return present(celeriac_value_get(m->embed, key));
}

int canvas_on_success(const struct canvas_env *e, const struct task_message *m,
                      const celeriac_value *retval, celeriac_value *children)
{
    const celeriac_value *callbacks = embed(m, "callbacks");
    const celeriac_value *chain = embed(m, "chain");
    size_t ncb =
        celeriac_value_type(callbacks) == CELERIAC_ARRAY ? celeriac_value_len(callbacks) : 0;
    size_t nchain = celeriac_value_type(chain) == CELERIAC_ARRAY ? celeriac_value_len(chain) : 0;
    if (ncb == 0 && nchain == 0)
        return 0;
    int rc = CELERIAC_ENOMEM;
    celeriac_value *partial = celeriac_value_new_array(), *plain = NULL, *rest = NULL;
    if (!partial || celeriac_value_append(partial, retval ? celeriac_value_copy(retval)
                                                          : celeriac_value_new_null()) < 0)
        goto out;
    const char *root = m->root_id ? m->root_id : m->id;
    struct apply a = {.partial = partial, .parent_id = m->id, .root_id = root,
                      .root_default = root};
    rc = 0;
    if (ncb == 1) {
        rc = apply_sig(e, celeriac_value_at(callbacks, 0), &a, children);
    } else if (ncb > 1) {
        /* Groups go out on their own, the other callbacks as one group. */
        if (!(plain = celeriac_value_new_array())) {
            rc = CELERIAC_ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < ncb; i++) {
            const celeriac_value *cb = celeriac_value_at(callbacks, i);
            const char *type = sig_type(cb);
            int one = 0;
            if (type && strcmp(type, "group") == 0)
                one = apply_group(e, cb, &a, children);
            else
                celeriac_value_append(plain, celeriac_value_copy(cb));
            if (one < 0 && rc == 0)
                rc = one;
        }
        if (celeriac_value_len(plain) > 0) {
            int one = apply_list_as_group(e, plain, NULL, &a, children);
            if (one < 0 && rc == 0)
                rc = one;
        }
    }
    if (nchain > 0) {
        /* The next step is the last element; the rest stays reversed ([] at the end). */
        rest = celeriac_value_copy(chain);
        celeriac_value *next = rest ? value_take_at(rest, nchain - 1) : NULL;
        if (!next) {
            rc = CELERIAC_ENOMEM;
            goto out;
        }
        struct apply c = a;
        c.has_chain = 1;
        c.chain = rest;
        int one = apply_sig(e, next, &c, children);
        celeriac_value_free(next);
        if (one < 0 && rc == 0)
            rc = one;
    }
out:
    celeriac_value_free(partial);
    celeriac_value_free(plain);
    celeriac_value_free(rest);
    return rc;
}

/* Stores ChordError on the body and sends the body's errbacks, as Celery's
 * chord_error_from_stack does. */
static void chord_error(const struct canvas_env *e, const celeriac_value *body, const char *msg)
{
    const char *body_id = opt_str(body, "task_id");
    log_error("Chord callback %s[%s] failed: ChordError(%s)", value_get_str(body, "task"),
              body_id ? body_id : "?", msg);
    if (!body_id)
        return;
    celeriac_value *errbacks = as_list(opt(body, "link_error"));
    celeriac_value *partial = celeriac_value_new_array();
    if (errbacks && partial &&
        celeriac_value_append(partial, celeriac_value_new_string(body_id)) == 0) {
        struct apply a = {.partial = partial, .parent_id = body_id, .root_id = body_id,
                          .root_default = body_id};
        apply_list_as_group(e, errbacks, NULL, &a, NULL);
    }
    celeriac_value_free(errbacks);
    celeriac_value_free(partial);
    if (e->backend)
        backend_store_failure(e->backend, body_id, "celery.exceptions", "ChordError", msg, NULL,
                              NULL);
}

/* on_chord_part_return for part tid of group gid with body sig. */
static void chord_join(const struct canvas_env *e, const char *gid, const char *tid,
                       const celeriac_value *group_index, const celeriac_value *body,
                       const char *state, const celeriac_value *result, const char *root_id)
{
    if (!e->backend) {
        log_warning("chord part %s of group %s: no result backend to join in", tid, gid);
        return;
    }
    celeriac_value *parts = NULL, *results = NULL, *partial = NULL;
    int rc = backend_chord_part_return(e->backend, gid, tid, group_index, state, result, &parts);
    if (rc < 0) {
        log_error("chord join of group %s (part %s): %s", gid, tid,
                  *e->backend->errstr ? e->backend->errstr : celeriac_strerror(rc));
        return;
    }
    if (rc == 0)
        return;
    char *failed = NULL;
    results = celeriac_value_new_array();
    partial = celeriac_value_new_array();
    for (size_t i = 0; results && i < celeriac_value_len(parts) && !failed; i++) {
        const celeriac_value *p = celeriac_value_at(parts, i);
        const char *pid = celeriac_value_string(celeriac_value_at(p, 1), NULL);
        const char *pstate = celeriac_value_string(celeriac_value_at(p, 2), NULL);
        const celeriac_value *pres = celeriac_value_at(p, 3);
        if (pstate && (strcmp(pstate, "FAILURE") == 0 || strcmp(pstate, "REVOKED") == 0)) {
            char *repr = canvas_exception_repr(pres);
            struct buf b = {0};
            buf_printf(&b, "Dependency %s raised %s", pid ? pid : "?", repr ? repr : "?");
            free(repr);
            failed = b.p ? b.p : strdup("Dependency raised");
        } else {
            celeriac_value_append(results, celeriac_value_copy(pres));
        }
    }
    if (failed) {
        chord_error(e, body, failed);
    } else if (results && partial && celeriac_value_append(partial, results) == 0) {
        results = NULL;
        struct apply a = {.partial = partial, .parent_id = tid, .root_default = root_id};
        rc = apply_sig(e, body, &a, NULL);
        if (rc == CELERIAC_ECONN || rc == CELERIAC_ENOMEM || rc == CELERIAC_EIO) {
            char msg[200];
            snprintf(msg, sizeof msg, "Callback error: cannot send the chord body (%s)",
                     celeriac_strerror(rc));
            chord_error(e, body, msg);
        }
    }
    backend_chord_clear(e->backend, gid);
    free(failed);
    celeriac_value_free(parts);
    celeriac_value_free(results);
    celeriac_value_free(partial);
}

int canvas_in_chord(const struct task_message *m)
{
    return embed(m, "chord") && m->group && m->id;
}

void canvas_chord_part(const struct canvas_env *e, const struct task_message *m,
                       const char *state, const celeriac_value *result)
{
    const celeriac_value *body = embed(m, "chord");
    if (!body || !m->group || !m->id)
        return;
    celeriac_value *index = m->has_group_index ? celeriac_value_new_int(m->group_index) : NULL;
    chord_join(e, m->group, m->id, index, body, state, result, m->root_id ? m->root_id : m->id);
    celeriac_value_free(index);
}

void canvas_on_failure(const struct canvas_env *e, const struct task_message *m,
                       const celeriac_value *exc, const char *traceback, int stored)
{
    canvas_chord_part(e, m, "FAILURE", exc);
    const char *root = m->root_id ? m->root_id : m->id;
    const celeriac_value *chain = embed(m, "chain");
    for (size_t i = 0; i < celeriac_value_len(chain); i++) {
        const celeriac_value *step = celeriac_value_at(chain, i);
        const char *id = opt_str(step, "task_id");
        if (!id)
            continue; /* a complex step without an id of its own (as Celery skips it) */
        if (stored && e->backend) {
            struct result_meta rm = {.task_id = id, .status = "FAILURE", .result = exc,
                                     .traceback = traceback, .group_id = opt_str(step, "group_id"),
                                     .parent_id = opt_str(step, "parent_id"), .ready = 1};
            backend_store_meta(e->backend, &rm);
        }
        const celeriac_value *chord = present(opt(step, "chord"));
        const char *gid = opt_str(step, "group_id");
        if (chord && gid)
            chord_join(e, gid, id, present(opt(step, "group_index")), chord, "FAILURE", exc, root);
    }
    const celeriac_value *errbacks = embed(m, "errbacks");
    if (celeriac_value_type(errbacks) != CELERIAC_ARRAY || celeriac_value_len(errbacks) == 0)
        return;
    /* Old-style errbacks: sent as tasks with (failed task id,), as one group. */
    celeriac_value *partial = celeriac_value_new_array();
    if (partial && celeriac_value_append(partial, celeriac_value_new_string(m->id)) == 0) {
        struct apply a = {.partial = partial, .parent_id = m->id, .root_id = root,
                          .root_default = root};
        apply_list_as_group(e, errbacks, NULL, &a, NULL);
    }
    celeriac_value_free(partial);
}

int canvas_retry(const struct canvas_env *e, const struct task_message *m, double countdown,
                 celeriac_value *children)
{
    char eta[48];
    if (countdown > 0)
        util_iso8601_format_tz(util_now() + countdown, eta, sizeof eta);
    const celeriac_value *h = m->headers;
    const celeriac_value *tl = celeriac_value_get(h, "timelimit");
    celeriac_value *index = m->has_group_index ? celeriac_value_new_int(m->group_index) : NULL;
    celeriac_value *props = celeriac_value_new_object();
    if (!props) {
        celeriac_value_free(index);
        return CELERIAC_ENOMEM;
    }
    /* What Celery 5.2's retry adds to the properties (unused by workers). */
    celeriac_value_set(props, "replaced_task_nesting", celeriac_value_new_int(0));
    if (m->origin)
        celeriac_value_set(props, "origin", celeriac_value_new_string(m->origin));
    const char *expires = value_get_str(h, "expires");
    struct task_publish p = {
        .id = m->id,
        .task = m->task,
        .args = m->args,
        .kwargs = m->kwargs,
        .callbacks = embed(m, "callbacks"),
        .errbacks = embed(m, "errbacks"),
        .chain = embed(m, "chain"),
        .chord = embed(m, "chord"),
        .shadow = m->shadow,
        .eta = countdown > 0 ? eta : NULL,
        .expires = expires,
        .group_id = m->group,
        .group_index = index,
        .retries = m->retries + 1,
        .time_limit = is_number(celeriac_value_at(tl, 0)) ? celeriac_value_at(tl, 0) : NULL,
        .soft_time_limit = is_number(celeriac_value_at(tl, 1)) ? celeriac_value_at(tl, 1) : NULL,
        .root_id = m->root_id ? m->root_id : m->id,
        .parent_id = m->parent_id ? m->parent_id : m->id,
        .origin = e->hostname,
        .ignore_result = m->ignore_result,
        .reply_to = m->reply_to ? m->reply_to : e->reply_to,
        .priority = m->priority,
        .queue = m->routing_key,
        .properties_extra = props,
    };
    int rc = send_msg(e, &p);
    if (rc == 0)
        add_child(children, result_tuple(m->id, NULL));
    celeriac_value_free(index);
    celeriac_value_free(props);
    return rc;
}
