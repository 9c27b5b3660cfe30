/* task_message.c - owns the decoding of a kombu Redis envelope into a struct task_message (protocol 2, 1 and hybrid); it does no I/O, reads no clock, and never runs, acks or stores anything. */
#include "task_message.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "util.h"
#include "value.h"

const struct task_message_limits task_message_limits_default = {
    .max_message_bytes = 64u * 1024 * 1024,
    .max_body_bytes = 64u * 1024 * 1024,
    .max_depth = 64,
    .max_items = 1000000,
};

/* Decoding state: the first error wins, later ones are not reported. */
struct dec {
    struct task_message *m;
    char *err;
    size_t errlen;
    int rc;
};

static void fail(struct dec *d, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void fail(struct dec *d, int rc, const char *fmt, ...)
{
    if (d->rc)
        return;
    d->rc = rc;
    if (d->err && d->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->err, d->errlen, fmt, ap);
        va_end(ap);
    }
}

static const char *type_name(const celeriac_value *v)
{
    switch (celeriac_value_type(v)) {
    case CELERIAC_NULL:
        return "null";
    case CELERIAC_BOOL:
        return "bool";
    case CELERIAC_INT:
        return "int";
    case CELERIAC_DOUBLE:
        return "float";
    case CELERIAC_STRING:
        return "string";
    case CELERIAC_BYTES:
        return "bytes";
    case CELERIAC_ARRAY:
        return "array";
    case CELERIAC_OBJECT:
        return "object";
    }
    return "?";
}

/* A member that is absent or null counts as missing (Python sends null for
 * unused headers; other producers omit them). */
static const celeriac_value *member(const celeriac_value *obj, const char *key)
{
    const celeriac_value *v = celeriac_value_get(obj, key);
    return celeriac_value_type(v) == CELERIAC_NULL ? NULL : v;
}

/* The string fields of a message share one block (m->strings) when they
 * fit: a message has about a dozen short ones (ids, names, tags). A string
 * outside the block has an allocation of its own. */
#define STRINGS_BLOCK 768

static int in_block(const struct task_message *m, const char *s)
{
    return m->strings && s >= m->strings && s < m->strings + STRINGS_BLOCK;
}

static void free_field(struct task_message *m, char *s)
{
    if (!in_block(m, s))
        free(s);
}

static char *dup_bytes(struct dec *d, const char *p, size_t len)
{
    struct task_message *m = d->m;
    char *s;
    if (!m->strings && (m->strings = malloc(STRINGS_BLOCK)) != NULL)
        m->strings_used = 0;
    if (m->strings && len < STRINGS_BLOCK - m->strings_used) {
        s = m->strings + m->strings_used;
        m->strings_used += len + 1;
    } else if ((s = malloc(len + 1)) == NULL) {
        fail(d, CELERIAC_ENOMEM, "out of memory");
        return NULL;
    }
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

static char *dup_text(struct dec *d, const celeriac_value *v)
{
    return dup_bytes(d, v->u.s.p, v->u.s.len);
}

/* Optional string member: a STRING replaces *dst (owned copy); missing leaves
 * *dst as it is; any other type is an error. */
static void opt_str(struct dec *d, const celeriac_value *obj, const char *where, const char *key,
                    char **dst)
{
    const celeriac_value *v = member(obj, key);
    if (!v)
        return;
    if (v->type != CELERIAC_STRING) {
        fail(d, CELERIAC_EPARSE, "%s.%s is not a string (%s)", where, key, type_name(v));
        return;
    }
    char *s = dup_text(d, v);
    if (s) {
        free_field(d->m, *dst);
        *dst = s;
    }
}

static int opt_int(struct dec *d, const celeriac_value *obj, const char *where, const char *key,
                   long long *dst)
{
    const celeriac_value *v = member(obj, key);
    if (!v)
        return 0;
    if (v->type != CELERIAC_INT) {
        fail(d, CELERIAC_EPARSE, "%s.%s is not an integer (%s)", where, key, type_name(v));
        return 0;
    }
    *dst = v->u.i;
    return 1;
}

static void opt_bool(struct dec *d, const celeriac_value *obj, const char *where, const char *key,
                     int *dst)
{
    const celeriac_value *v = member(obj, key);
    if (!v)
        return;
    if (v->type != CELERIAC_BOOL) {
        fail(d, CELERIAC_EPARSE, "%s.%s is not a boolean (%s)", where, key, type_name(v));
        return;
    }
    *dst = v->u.b;
}

static void opt_time(struct dec *d, const celeriac_value *obj, const char *where, const char *key,
                     double *dst)
{
    const celeriac_value *v = member(obj, key);
    if (!v)
        return;
    if (v->type != CELERIAC_STRING) {
        fail(d, CELERIAC_EPARSE, "%s.%s is not an ISO-8601 string (%s)", where, key,
             type_name(v));
        return;
    }
    double t;
    if (util_iso8601_parse(v->u.s.p, &t) < 0 || strlen(v->u.s.p) != v->u.s.len) {
        fail(d, CELERIAC_EPARSE, "%s.%s is not a valid ISO-8601 time: '%.64s'", where, key,
             v->u.s.p);
        return;
    }
    *dst = t;
}

/* timelimit: [hard, soft], each seconds or null. */
static void opt_timelimit(struct dec *d, const celeriac_value *obj, const char *where)
{
    const celeriac_value *v = member(obj, "timelimit");
    if (!v)
        return;
    if (v->type != CELERIAC_ARRAY || v->u.a.len > 2) {
        fail(d, CELERIAC_EPARSE, "%s.timelimit is not a [hard, soft] pair (%s)", where,
             type_name(v));
        return;
    }
    double *dst[2] = {&d->m->time_limit, &d->m->soft_time_limit};
    for (size_t i = 0; i < v->u.a.len; i++) {
        const celeriac_value *e = v->u.a.items[i];
        celeriac_type t = celeriac_value_type(e);
        if (t == CELERIAC_NULL)
            continue;
        if (t != CELERIAC_INT && t != CELERIAC_DOUBLE) {
            fail(d, CELERIAC_EPARSE, "%s.timelimit[%zu] is not a number (%s)", where, i,
                 type_name(e));
            return;
        }
        double s = celeriac_value_double(e);
        *dst[i] = s > 0 && s == s ? s : 0.0;
    }
}

/* The task metadata that protocol 2 keeps in headers and protocol 1 in the
 * body (same names). Members present in obj override what is already set. */
static void read_meta(struct dec *d, const celeriac_value *obj, const char *where)
{
    struct task_message *m = d->m;
    long long n;
    opt_str(d, obj, where, "shadow", &m->shadow);
    opt_str(d, obj, where, "root_id", &m->root_id);
    opt_str(d, obj, where, "parent_id", &m->parent_id);
    if (!member(obj, "group"))
        opt_str(d, obj, where, "taskset", &m->group); /* protocol 1 name */
    opt_str(d, obj, where, "group", &m->group);
    if (opt_int(d, obj, where, "group_index", &n)) {
        m->group_index = n > LONG_MAX ? LONG_MAX : n < LONG_MIN ? LONG_MIN : (long)n;
        m->has_group_index = 1;
    }
    if (opt_int(d, obj, where, "retries", &n))
        m->retries = n < 0 ? 0 : n > INT_MAX ? INT_MAX : (int)n;
    opt_time(d, obj, where, "eta", &m->eta);
    opt_time(d, obj, where, "expires", &m->expires);
    opt_timelimit(d, obj, where);
    opt_bool(d, obj, where, "ignore_result", &m->ignore_result);
    opt_str(d, obj, where, "origin", &m->origin);
    opt_str(d, obj, where, "argsrepr", &m->argsrepr);
    opt_str(d, obj, where, "kwargsrepr", &m->kwargsrepr);
}

/* Moves the member key out of obj when it has type want (or is null/absent:
 * then a new empty value of type want). Wrong type: error, NULL. */
static celeriac_value *take_typed(struct dec *d, celeriac_value *obj, const char *key,
                                  celeriac_type want, const char *where)
{
    celeriac_value *v = value_take(obj, key);
    if (celeriac_value_type(v) == CELERIAC_NULL) {
        celeriac_value_free(v);
        v = want == CELERIAC_ARRAY ? celeriac_value_new_array() : celeriac_value_new_object();
        if (!v)
            fail(d, CELERIAC_ENOMEM, "out of memory");
        return v;
    }
    if (v->type != want) {
        fail(d, CELERIAC_EPARSE, "%s.%s is not an %s (%s)", where, key,
             want == CELERIAC_ARRAY ? "array" : "object", type_name(v));
        celeriac_value_free(v);
        return NULL;
    }
    return v;
}

/* Makes sure embed has callbacks, errbacks, chain and chord (null if absent). */
static void complete_embed(struct dec *d, celeriac_value *embed)
{
    static const char *const keys[] = {"callbacks", "errbacks", "chain", "chord"};
    for (size_t i = 0; i < 4 && !d->rc; i++) {
        if (celeriac_value_get(embed, keys[i]))
            continue;
        celeriac_value *n = celeriac_value_new_null();
        if (!n || celeriac_value_set(embed, keys[i], n) < 0)
            fail(d, CELERIAC_ENOMEM, "out of memory");
    }
}

/* Protocol 1 (and hybrid) body: a dict with task, id, args, kwargs, ... */
static void read_v1_body(struct dec *d, celeriac_value *body, int hybrid)
{
    struct task_message *m = d->m;
    if (!hybrid) {
        opt_str(d, body, "body", "task", &m->task);
        if (!m->id)
            opt_str(d, body, "body", "id", &m->id);
    }
    read_meta(d, body, "body");
    if (d->rc)
        return;
    m->args = take_typed(d, body, "args", CELERIAC_ARRAY, "body");
    if (!d->rc)
        m->kwargs = take_typed(d, body, "kwargs", CELERIAC_OBJECT, "body");
    if (d->rc)
        return;
    m->embed = celeriac_value_new_object();
    if (!m->embed) {
        fail(d, CELERIAC_ENOMEM, "out of memory");
        return;
    }
    static const char *const keys[] = {"callbacks", "errbacks", "chord"};
    for (size_t i = 0; i < 3 && !d->rc; i++) {
        celeriac_value *v = value_take(body, keys[i]);
        if (v && celeriac_value_set(m->embed, keys[i], v) < 0)
            fail(d, CELERIAC_ENOMEM, "out of memory");
    }
    complete_embed(d, m->embed);
}

/* Protocol 2 body: [args, kwargs, embed]; trailing elements may be missing. */
static void read_v2_body(struct dec *d, celeriac_value *body)
{
    struct task_message *m = d->m;
    celeriac_value *slot[3] = {NULL, NULL, NULL};
    const char *names[3] = {"args", "kwargs", "embed"};
    celeriac_type want[3] = {CELERIAC_ARRAY, CELERIAC_OBJECT, CELERIAC_OBJECT};
    if (body->u.a.len > 3) {
        fail(d, CELERIAC_EPARSE, "protocol 2 body has %zu elements, expected [args, kwargs, embed]",
             body->u.a.len);
        return;
    }
    for (size_t i = 0; i < 3; i++) {
        celeriac_value *v = i < body->u.a.len ? body->u.a.items[i] : NULL;
        if (celeriac_value_type(v) == CELERIAC_NULL) {
            v = want[i] == CELERIAC_ARRAY ? celeriac_value_new_array()
                                          : celeriac_value_new_object();
            if (!v) {
                fail(d, CELERIAC_ENOMEM, "out of memory");
                break;
            }
        } else if (v->type != want[i]) {
            fail(d, CELERIAC_EPARSE, "protocol 2 body: %s is not an %s (%s)", names[i],
                 want[i] == CELERIAC_ARRAY ? "array" : "object", type_name(v));
            break;
        } else {
            body->u.a.items[i] = NULL; /* moved out: now owned by m */
        }
        slot[i] = v;
    }
    m->args = slot[0];
    m->kwargs = slot[1];
    m->embed = slot[2];
    if (!d->rc)
        complete_embed(d, m->embed);
}

static const char *refused_name(const char *ct)
{
    if (strstr(ct, "python-serialize") || strstr(ct, "pickle"))
        return "pickle";
    if (strstr(ct, "yaml"))
        return "yaml";
    return "refused serializer";
}

/* The body's text (n bytes) after body_encoding enc (NULL: none) and
 * compression, then the decoded value. */
static celeriac_value *decode_body_text(struct dec *d, const char *text, size_t n, const char *enc,
                                        const struct serializer *ser,
                                        const struct task_message_limits *lim)
{
    struct task_message *m = d->m;
    unsigned char *raw = NULL, *plain = NULL;
    celeriac_value *out = NULL;
    const unsigned char *bytes = (const unsigned char *)text;
    if (enc && strcmp(enc, "base64") == 0) {
        int rc = codec_base64_decode(text, n, lim->max_body_bytes, &raw, &n);
        if (rc == CELERIAC_ETOOBIG)
            fail(d, rc, "body exceeds the %zu byte limit", lim->max_body_bytes);
        else if (rc < 0)
            fail(d, rc == CELERIAC_ENOMEM ? rc : CELERIAC_EPARSE, "body is not valid base64");
        if (rc < 0)
            goto out;
        bytes = raw;
    } else if (enc && strcmp(enc, "utf-8") != 0 && strcmp(enc, "utf8") != 0) {
        fail(d, CELERIAC_EUNSUPPORTED, "unknown body_encoding '%.64s'", enc);
        goto out;
    } else if (n > lim->max_body_bytes) {
        fail(d, CELERIAC_ETOOBIG, "body exceeds the %zu byte limit", lim->max_body_bytes);
        goto out;
    }

    if (m->compression) {
        size_t pn = 0;
        int rc = codec_decompress(m->compression, bytes, n, lim->max_body_bytes, &plain, &pn);
        if (rc == CELERIAC_EUNSUPPORTED)
            fail(d, rc, "compression '%.64s' is not supported", m->compression);
        else if (rc == CELERIAC_ETOOBIG)
            fail(d, rc, "body exceeds the %zu byte limit after decompression",
                 lim->max_body_bytes);
        else if (rc < 0)
            fail(d, rc == CELERIAC_ENOMEM ? rc : CELERIAC_EPARSE, "corrupt %.64s body",
                 m->compression);
        if (rc < 0)
            goto out;
        bytes = plain;
        n = pn;
    }

    struct decode_limits bl = {lim->max_body_bytes, lim->max_depth, lim->max_items};
    char why[256] = "";
    int rc = ser->decode(bytes, n, &bl, &out, why, sizeof why);
    if (rc < 0)
        fail(d, rc, "body (%s): %s", ser->name, why[0] ? why : celeriac_strerror(rc));
out:
    free(raw);
    free(plain);
    return out;
}

/* The envelope's body member (its text at envelope + lifted->off when it was
 * lifted out of env), decoded. */
static celeriac_value *decode_body(struct dec *d, const char *envelope, const celeriac_value *env,
                                   const struct json_lifted *lifted, const celeriac_value *props,
                                   const struct serializer *ser,
                                   const struct task_message_limits *lim)
{
    const char *text;
    size_t n;
    const celeriac_value *body = celeriac_value_get(env, "body");
    if (lifted->found) {
        text = envelope + lifted->off;
        n = lifted->len;
    } else if (celeriac_value_type(body) != CELERIAC_STRING) {
        fail(d, CELERIAC_EPARSE, "body is not a string (%s)", type_name(body));
        return NULL;
    } else {
        text = body->u.s.p;
        n = body->u.s.len;
    }
    char *enc = NULL;
    celeriac_value *out = NULL;
    opt_str(d, props, "properties", "body_encoding", &enc);
    if (!d->rc)
        out = decode_body_text(d, text, n, enc, ser, lim);
    free_field(d->m, enc);
    return out;
}

/* headers_only: keeps what task_message_pack() needs of the body when it is
 * a string and body_encoding is absent or a string (anything else is left
 * for the pool process's full decode to report). */
static void keep_body(struct dec *d, celeriac_value *env, const struct json_lifted *lifted,
                      const celeriac_value *props)
{
    struct task_message *m = d->m;
    const celeriac_value *enc = member(props, "body_encoding");
    if (enc && enc->type != CELERIAC_STRING)
        return;
    if (lifted->found) {
        m->body_off = lifted->off;
        m->body_len = lifted->len;
    } else {
        celeriac_value *b = value_take(env, "body");
        if (celeriac_value_type(b) != CELERIAC_STRING) {
            celeriac_value_free(b);
            return;
        }
        m->body_text = b;
    }
    if (enc && !(m->body_encoding = dup_text(d, enc)))
        return;
    m->body_packable = 1;
}

/* out is overwritten (zeroed first, nothing in it is freed); on any return
 * the caller frees it with task_message_clear(). */
int task_message_decode(const char *envelope, size_t len, const struct task_message_limits *lim,
                        struct task_message *out, char *err, size_t errlen)
{
    if (!out)
        return CELERIAC_EINVAL;
    memset(out, 0, sizeof *out);
    if (err && errlen)
        err[0] = '\0';
    struct dec d = {out, err, errlen, 0};
    celeriac_value *env = NULL, *body = NULL;
    if (!lim)
        lim = &task_message_limits_default;
    if (!envelope && len) {
        fail(&d, CELERIAC_EINVAL, "no envelope");
        goto out;
    }
    if (len > lim->max_message_bytes) {
        fail(&d, CELERIAC_ETOOBIG, "message of %zu bytes exceeds the %zu byte limit", len,
             lim->max_message_bytes);
        goto out;
    }

    /* The envelope. */
    struct decode_limits el = {lim->max_message_bytes, lim->max_depth, lim->max_items};
    char why[256] = "";
    /* The main process (headers_only) never copies a lifted body: it stays
     * in the envelope, where task_message_pack() points to it. */
    struct json_lifted lifted = {0};
    int rc = json_decode_lifting(envelope ? envelope : "", len, "body", &el, &env, why, sizeof why,
                                 lim->headers_only ? &lifted : NULL);
    if (rc < 0) {
        fail(&d, rc, "envelope: %s", why[0] ? why : celeriac_strerror(rc));
        goto out;
    }
    if (env->type != CELERIAC_OBJECT) {
        fail(&d, CELERIAC_EPARSE, "envelope is not a JSON object (%s)", type_name(env));
        goto out;
    }
    /* Identity first, so that the caller can ack and store a FAILURE even
     * when everything after this is garbage: properties, then headers. */
    const celeriac_value *props = member(env, "properties");
    if (props && props->type != CELERIAC_OBJECT) {
        fail(&d, CELERIAC_EPARSE, "properties is not an object (%s)", type_name(props));
        props = NULL;
    }
    const celeriac_value *dinfo = member(props, "delivery_info");
    if (dinfo && dinfo->type != CELERIAC_OBJECT) {
        fail(&d, CELERIAC_EPARSE, "properties.delivery_info is not an object (%s)",
             type_name(dinfo));
        dinfo = NULL;
    }
    opt_str(&d, props, "properties", "delivery_tag", &out->delivery_tag);
    opt_str(&d, props, "properties", "reply_to", &out->reply_to);
    opt_str(&d, props, "properties", "correlation_id", &out->correlation_id);
    celeriac_value *headers = value_take(env, "headers");
    if (celeriac_value_type(headers) == CELERIAC_NULL) {
        celeriac_value_free(headers);
        headers = celeriac_value_new_object();
        if (!headers) {
            fail(&d, CELERIAC_ENOMEM, "out of memory");
            goto out;
        }
    }
    if (headers->type != CELERIAC_OBJECT) {
        fail(&d, CELERIAC_EPARSE, "headers is not an object (%s)", type_name(headers));
        celeriac_value_free(headers);
        headers = NULL; /* the id can still come from correlation_id */
    }
    out->headers = headers;
    opt_str(&d, headers, "headers", "id", &out->id);
    if (!out->id && out->correlation_id)
        out->id = dup_bytes(&d, out->correlation_id, strlen(out->correlation_id));
    opt_str(&d, headers, "headers", "task", &out->task);
    opt_str(&d, dinfo, "properties.delivery_info", "exchange", &out->exchange);
    opt_str(&d, dinfo, "properties.delivery_info", "routing_key", &out->routing_key);
    opt_str(&d, env, "envelope", "content-type", &out->content_type);
    opt_str(&d, env, "envelope", "content-encoding", &out->content_encoding);
    opt_str(&d, headers, "headers", "compression", &out->compression);
    long long prio = 0;
    if (opt_int(&d, props, "properties", "priority", &prio))
        out->priority = prio < 0 ? 0 : prio > 255 ? 255 : (int)prio;
    const celeriac_value *redel = member(headers, "redelivered");
    const celeriac_value *dredel = member(dinfo, "redelivered");
    out->redelivered = celeriac_value_bool(redel) || celeriac_value_bool(dredel);
    out->protocol = out->task ? 2 : 1;
    if (out->protocol == 2)
        read_meta(&d, headers, "headers");
    if (d.rc)
        goto out;

    /* The body: refused content types are never decoded. */
    const struct serializer *ser = NULL;
    if (!out->content_type) {
        fail(&d, CELERIAC_ECONTENT, "message has no content-type: never deserialized");
        goto out;
    }
    switch (serializer_for_content_type(out->content_type, &ser)) {
    case SERIALIZER_OK:
        break;
    case SERIALIZER_REFUSED:
        fail(&d, CELERIAC_ECONTENT, "content type %.64s (%s) refused: never deserialized",
             out->content_type, refused_name(out->content_type));
        goto out;
    case SERIALIZER_UNKNOWN:
        fail(&d, CELERIAC_ECONTENT, "unknown content type %.64s: never deserialized",
             out->content_type);
        goto out;
    }
    if (out->protocol == 2 && lim->headers_only) {
        /* The main process routes by headers; the pool process decodes the body. */
        out->body_pending = 1;
        if (!out->id)
            fail(&d, CELERIAC_EPARSE, "message has no task id (headers.id, correlation_id)");
        else
            keep_body(&d, env, &lifted, props);
        goto out;
    }
    body = decode_body(&d, envelope, env, &lifted, props, ser, lim);
    if (d.rc)
        goto out;

    if (out->protocol == 2 && body->type == CELERIAC_ARRAY) {
        read_v2_body(&d, body);
    } else if (out->protocol == 2 && body->type == CELERIAC_OBJECT) {
        /* Hybrid: a protocol 1 body under protocol 2 headers; headers win. */
        read_v1_body(&d, body, 1);
        read_meta(&d, headers, "headers");
    } else if (out->protocol == 2) {
        fail(&d, CELERIAC_EPARSE, "protocol 2 body is not an array (%s)", type_name(body));
    } else if (body->type == CELERIAC_OBJECT && member(body, "task")) {
        read_v1_body(&d, body, 0);
        if (!d.rc && !out->task)
            fail(&d, CELERIAC_EPARSE, "body.task is missing");
    } else {
        fail(&d, CELERIAC_EPARSE,
             "not a Celery task message: no headers.task, and the body (%s) has no task",
             type_name(body));
    }
    if (!d.rc && !out->id)
        fail(&d, CELERIAC_EPARSE, "message has no task id (headers.id, correlation_id, body.id)");
out:
    celeriac_value_free(body);
    celeriac_value_free(env);
    return d.rc;
}

/* ---- The hand-off to a pool process ----------------------------------------
 * u32 n, then n bytes: u8 PACK_VERSION, struct pack_scalars, each of
 * pack_strings (u32 length, or PACK_NULL, then the bytes), body_encoding the
 * same way, and with body_inline the body's text the same way (else it is
 * envelope[body_off .. + body_len]). The envelope follows. Both ends are the
 * same binary (the pool forks), so numbers travel in their native form. */

#define PACK_VERSION 1
#define PACK_NULL UINT32_MAX

struct pack_scalars {
    int32_t protocol, retries, has_group_index, ignore_result, redelivered, priority;
    int32_t body_inline, headers_only;
    int64_t group_index;
    double eta, expires, time_limit, soft_time_limit;
    uint64_t body_off, body_len;
};

static const size_t pack_strings[] = {
    offsetof(struct task_message, id),           offsetof(struct task_message, task),
    offsetof(struct task_message, shadow),       offsetof(struct task_message, root_id),
    offsetof(struct task_message, parent_id),    offsetof(struct task_message, group),
    offsetof(struct task_message, origin),       offsetof(struct task_message, argsrepr),
    offsetof(struct task_message, kwargsrepr),   offsetof(struct task_message, content_type),
    offsetof(struct task_message, content_encoding),
    offsetof(struct task_message, compression),  offsetof(struct task_message, correlation_id),
    offsetof(struct task_message, reply_to),     offsetof(struct task_message, delivery_tag),
    offsetof(struct task_message, exchange),     offsetof(struct task_message, routing_key),
    offsetof(struct task_message, body_encoding),
};
#define NPACK_STRINGS (sizeof pack_strings / sizeof pack_strings[0])

static char **string_field(struct task_message *m, size_t i)
{
    return (char **)(void *)((char *)m + pack_strings[i]);
}

static int pack_bytes(struct buf *out, const char *p, size_t n)
{
    uint32_t len = p ? (uint32_t)n : PACK_NULL;
    if (p && n >= PACK_NULL)
        return CELERIAC_EINVAL;
    if (buf_append(out, &len, sizeof len) < 0 || (p && buf_append(out, p, n) < 0))
        return CELERIAC_ENOMEM;
    return 0;
}

/* headers_only: the header fields alone (no body reference), marked so in
 * pack_scalars.headers_only. */
static int pack(const struct task_message *m, struct buf *out, int headers_only)
{
    size_t start = out->len;
    int inline_body = !headers_only && m->body_text != NULL;
    struct pack_scalars sc = {
        .protocol = m->protocol, .retries = m->retries, .has_group_index = m->has_group_index,
        .ignore_result = m->ignore_result, .redelivered = m->redelivered,
        .priority = m->priority, .body_inline = inline_body, .headers_only = headers_only,
        .group_index = m->group_index, .eta = m->eta, .expires = m->expires,
        .time_limit = m->time_limit, .soft_time_limit = m->soft_time_limit,
        .body_off = headers_only ? 0 : m->body_off, .body_len = headers_only ? 0 : m->body_len};
    uint32_t n = 0;
    unsigned char version = PACK_VERSION;
    int rc = 0;
    if (buf_append(out, &n, sizeof n) < 0 || buf_append(out, &version, 1) < 0 ||
        buf_append(out, &sc, sizeof sc) < 0)
        rc = CELERIAC_ENOMEM;
    for (size_t i = 0; i < NPACK_STRINGS && rc == 0; i++) {
        const char *f = *string_field((struct task_message *)m, i);
        rc = pack_bytes(out, f, f ? strlen(f) : 0);
    }
    if (rc == 0 && inline_body)
        rc = pack_bytes(out, m->body_text->u.s.p, m->body_text->u.s.len);
    if (rc == 0 && out->len - start - sizeof n >= PACK_NULL)
        rc = CELERIAC_EINVAL;
    if (rc < 0) {
        out->len = start;
        return rc;
    }
    n = (uint32_t)(out->len - start - sizeof n);
    memcpy(out->p + start, &n, sizeof n);
    return 0;
}

int task_message_pack(const struct task_message *m, struct buf *out)
{
    if (!m || !out || m->protocol != 2 || !m->body_pending || !m->body_packable)
        return CELERIAC_EINVAL;
    return pack(m, out, 0);
}

int task_message_pack_headers(const struct task_message *m, struct buf *out)
{
    if (!m || !out || !m->id || !m->task)
        return CELERIAC_EINVAL;
    return pack(m, out, 1);
}

int task_message_packed_envelope(const char *packed, size_t len, const char **envelope,
                                 size_t *envelope_len)
{
    uint32_t n;
    if (!packed || len < sizeof n)
        return CELERIAC_EPARSE;
    memcpy(&n, packed, sizeof n);
    if (n > len - sizeof n)
        return CELERIAC_EPARSE;
    *envelope = packed + sizeof n + n;
    *envelope_len = len - sizeof n - n;
    return 0;
}

/* Reads one packed string: 1 with *p (NULL for PACK_NULL) and *n, 0 when the
 * pack ends too soon. */
static int unpack_bytes(const char **q, const char *end, const char **p, size_t *n)
{
    uint32_t len;
    if ((size_t)(end - *q) < sizeof len)
        return 0;
    memcpy(&len, *q, sizeof len);
    *q += sizeof len;
    if (len == PACK_NULL) {
        *p = NULL;
        *n = 0;
        return 1;
    }
    if (len > (size_t)(end - *q))
        return 0;
    *p = *q;
    *n = len;
    *q += len;
    return 1;
}

/* The fast path of task_message_decode_packed(): 1 when out is complete, 0
 * when the full decode of the envelope must decide (out is cleared then). */
static int decode_packed_fast(const char *packed, const char *env, size_t env_len,
                              const struct task_message_limits *lim, struct task_message *out)
{
    struct dec d = {out, NULL, 0, 0};
    const char *q = packed + sizeof(uint32_t), *end = env, *text = NULL;
    size_t n = 0;
    struct pack_scalars sc;
    celeriac_value *body = NULL;
    if ((size_t)(end - q) < 1 + sizeof sc || *q != PACK_VERSION)
        return 0;
    memcpy(&sc, q + 1, sizeof sc);
    q += 1 + sizeof sc;
    if (sc.protocol != 2 || sc.headers_only)
        return 0;
    for (size_t i = 0; i < NPACK_STRINGS; i++) {
        const char *p;
        size_t len;
        if (!unpack_bytes(&q, end, &p, &len))
            goto fallback;
        if (p && !(*string_field(out, i) = dup_bytes(&d, p, len)))
            goto fallback;
    }
    if (sc.body_inline) {
        if (!unpack_bytes(&q, end, &text, &n) || !text)
            goto fallback;
    } else if (sc.body_off > env_len || sc.body_len > env_len - sc.body_off) {
        goto fallback;
    } else {
        text = env + sc.body_off;
        n = (size_t)sc.body_len;
    }
    if (q != end || !out->id || !out->task)
        goto fallback;
    out->protocol = 2;
    out->retries = sc.retries;
    out->has_group_index = sc.has_group_index;
    out->ignore_result = sc.ignore_result;
    out->redelivered = sc.redelivered;
    out->priority = sc.priority;
    out->group_index = (long)sc.group_index;
    out->eta = sc.eta;
    out->expires = sc.expires;
    out->time_limit = sc.time_limit;
    out->soft_time_limit = sc.soft_time_limit;
    const struct serializer *ser = NULL;
    if (!out->content_type || serializer_for_content_type(out->content_type, &ser) != SERIALIZER_OK)
        goto fallback;
    body = decode_body_text(&d, text, n, out->body_encoding, ser, lim);
    if (d.rc || body->type != CELERIAC_ARRAY)
        goto fallback; /* errors and hybrid bodies: as the full decode says */
    read_v2_body(&d, body);
    celeriac_value_free(body);
    body = NULL;
    if (d.rc)
        goto fallback;
    free_field(out, out->body_encoding);
    out->body_encoding = NULL;
    return 1;
fallback:
    celeriac_value_free(body);
    task_message_clear(out);
    return 0;
}

int task_message_unpack_headers(const char *packed, size_t len, struct task_message *out)
{
    const char *env, *q, *end;
    size_t env_len;
    struct pack_scalars sc;
    if (!out)
        return CELERIAC_EINVAL;
    memset(out, 0, sizeof *out);
    if (task_message_packed_envelope(packed, len, &env, &env_len) < 0)
        return CELERIAC_EPARSE;
    q = packed + sizeof(uint32_t);
    end = env;
    if ((size_t)(end - q) < 1 + sizeof sc || *q != PACK_VERSION)
        return CELERIAC_EPARSE;
    memcpy(&sc, q + 1, sizeof sc);
    q += 1 + sizeof sc;
    struct dec d = {out, NULL, 0, 0};
    for (size_t i = 0; i < NPACK_STRINGS; i++) {
        const char *p;
        size_t n;
        if (!unpack_bytes(&q, end, &p, &n) || (p && !(*string_field(out, i) = dup_bytes(&d, p, n))))
            goto bad;
    }
    if (!sc.headers_only || q != end || !out->id || !out->task)
        goto bad;
    out->protocol = sc.protocol;
    out->retries = sc.retries;
    out->has_group_index = sc.has_group_index;
    out->ignore_result = sc.ignore_result;
    out->redelivered = sc.redelivered;
    out->priority = sc.priority;
    out->group_index = (long)sc.group_index;
    out->eta = sc.eta;
    out->expires = sc.expires;
    out->time_limit = sc.time_limit;
    out->soft_time_limit = sc.soft_time_limit;
    out->body_pending = 1; /* args, kwargs and embed: from the envelope when needed */
    return 0;
bad:
    task_message_clear(out);
    return CELERIAC_EPARSE;
}

int task_message_decode_packed(const char *packed, size_t len,
                               const struct task_message_limits *lim, struct task_message *out,
                               char *err, size_t errlen)
{
    const char *env;
    size_t env_len;
    if (!out)
        return CELERIAC_EINVAL;
    memset(out, 0, sizeof *out);
    if (err && errlen)
        err[0] = '\0';
    if (!lim)
        lim = &task_message_limits_default;
    if (task_message_packed_envelope(packed, len, &env, &env_len) < 0) {
        struct dec d = {out, err, errlen, 0};
        fail(&d, CELERIAC_EPARSE, "malformed packed message (%zu bytes)", len);
        return d.rc;
    }
    struct task_message_limits full = *lim;
    full.headers_only = 0;
    if (env_len <= full.max_message_bytes && decode_packed_fast(packed, env, env_len, &full, out))
        return 0;
    return task_message_decode(env, env_len, &full, out, err, errlen);
}

int task_message_load_headers(struct task_message *m, const char *envelope, size_t len,
                              const struct task_message_limits *lim)
{
    if (!m || m->headers)
        return 0;
    struct task_message t;
    struct task_message_limits h = lim ? *lim : task_message_limits_default;
    h.headers_only = 1;
    int rc = task_message_decode(envelope, len, &h, &t, NULL, 0);
    if (rc == 0) {
        m->headers = t.headers;
        t.headers = NULL;
    }
    task_message_clear(&t);
    return rc;
}

void task_message_clear(struct task_message *m)
{
    if (!m)
        return;
    char **strs[] = {&m->id,          &m->task,           &m->shadow,         &m->root_id,
                     &m->parent_id,   &m->group,          &m->origin,         &m->argsrepr,
                     &m->kwargsrepr,  &m->content_type,   &m->content_encoding, &m->compression,
                     &m->correlation_id, &m->reply_to,    &m->delivery_tag,   &m->exchange,
                     &m->routing_key, &m->body_encoding};
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++)
        free_field(m, *strs[i]);
    free(m->strings);
    celeriac_value_free(m->args);
    celeriac_value_free(m->kwargs);
    celeriac_value_free(m->embed);
    celeriac_value_free(m->headers);
    celeriac_value_free(m->body_text);
    memset(m, 0, sizeof *m);
}

const char *task_message_display_name(const struct task_message *m)
{
    if (!m)
        return "";
    if (m->shadow && m->shadow[0])
        return m->shadow;
    return m->task ? m->task : "";
}
