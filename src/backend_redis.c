/* backend_redis.c - Celery's Redis result backend: celery-task-meta-<id> keys
 * with expiry and PUBLISH to waiters; it does not format documents. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "log.h"
#include "redis_conn.h"
#include "util.h"

#define TASK_KEY_PREFIX "celery-task-meta-"

/* Celery reads the stored meta and never overwrites SUCCESS, then SETEX +
 * PUBLISH in one MULTI. This script does the same atomically in one round
 * trip, for one key or a batch: KEYS are the meta keys, ARGV[i] the document
 * of KEYS[i], the last ARGV the expiry in seconds (0 = none). A stored
 * document is only decoded when the word SUCCESS appears in it at all (a
 * PROCESSING or STARTED one seldom does, and decoding costs Redis more than
 * the rest of the call). */
static const char store_script[] =
    "local ttl = tonumber(ARGV[#ARGV])\n"
    "local n = 0\n"
    "for i, key in ipairs(KEYS) do\n"
    "  local cur = redis.call('GET', key)\n"
    "  local final = false\n"
    "  if cur and string.find(cur, 'SUCCESS', 1, true) then\n"
    "    local ok, doc = pcall(cjson.decode, cur)\n"
    "    final = ok and type(doc) == 'table' and doc['status'] == 'SUCCESS'\n"
    "  end\n"
    "  if not final then\n"
    "    if ttl and ttl > 0 then redis.call('SETEX', key, ttl, ARGV[i])\n"
    "    else redis.call('SET', key, ARGV[i]) end\n"
    "    redis.call('PUBLISH', key, ARGV[i])\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

/* Documents stored per script call. */
#define STORE_BATCH_MAX 128

struct backend_redis {
    struct backend base;
    struct redis_conn conn;  /* every call but the split store */
    struct redis_conn split; /* store_many_send/recv only, so a reply still in flight
                              * never meets another command's */
    char sha[41];            /* SHA1 of store_script once loaded */
    struct post {            /* posted stores whose reply is unread, in order */
        char *task_id, *json; /* owned: resent if the server lost the script */
        size_t len;
    } *posts;                /* owned array */
    size_t nposts, cap_posts;
};

static void settle(struct backend_redis *r);

static int ensure_link(struct backend_redis *r, struct redis_conn *c)
{
    if (c->ctx)
        return 0;
    int rc = redis_conn_open(c);
    if (rc < 0) {
        r->base.err = rc;
        snprintf(r->base.errstr, sizeof r->base.errstr, "%s", c->errstr);
        return rc;
    }
    redisReply *rep = redis_conn_cmdf(c, "SCRIPT LOAD %s", store_script);
    if (!rep) {
        snprintf(r->base.errstr, sizeof r->base.errstr, "%s", c->errstr);
        return r->base.err = CELERIAC_ECONN;
    }
    if (rep->type == REDIS_REPLY_STRING && rep->len == 40)
        memcpy(r->sha, rep->str, 41);
    freeReplyObject(rep);
    return 0;
}

static int ensure_connected(struct backend_redis *r)
{
    return ensure_link(r, &r->conn);
}

/* Appends one script call for n documents (n <= STORE_BATCH_MAX) to the
 * link's output buffer; by SHA, or with the script text when eval is set. */
static int append_store(struct backend_redis *r, struct redis_conn *c, size_t n,
                        const char *const *task_ids, const char *const *jsons,
                        const size_t *lens, int eval)
{
    char ttl[32], nkeys[16];
    snprintf(ttl, sizeof ttl, "%ld", r->base.expires);
    snprintf(nkeys, sizeof nkeys, "%zu", n);
    const char *argv[4 + 2 * STORE_BATCH_MAX];
    size_t alen[4 + 2 * STORE_BATCH_MAX];
    size_t total = 0;
    size_t pl = strlen(r->base.keyprefix);
    for (size_t i = 0; i < n; i++)
        total += pl + sizeof TASK_KEY_PREFIX + strlen(task_ids[i]);
    char *keys = malloc(total ? total : 1);
    if (!keys) {
        snprintf(r->base.errstr, sizeof r->base.errstr, "out of memory");
        return r->base.err = CELERIAC_ENOMEM;
    }
    int argc = 0;
    argv[argc] = eval ? "EVAL" : "EVALSHA", alen[argc++] = eval ? 4 : 7;
    argv[argc] = eval ? store_script : r->sha;
    alen[argc++] = eval ? strlen(store_script) : 40;
    argv[argc] = nkeys, alen[argc++] = strlen(nkeys);
    char *k = keys;
    for (size_t i = 0; i < n; i++) {
        size_t idlen = strlen(task_ids[i]);
        memcpy(k, r->base.keyprefix, pl);
        memcpy(k + pl, TASK_KEY_PREFIX, sizeof TASK_KEY_PREFIX - 1);
        memcpy(k + pl + sizeof TASK_KEY_PREFIX - 1, task_ids[i], idlen);
        argv[argc] = k, alen[argc++] = pl + sizeof TASK_KEY_PREFIX - 1 + idlen;
        k += pl + sizeof TASK_KEY_PREFIX - 1 + idlen;
    }
    for (size_t i = 0; i < n; i++)
        argv[argc] = jsons[i], alen[argc++] = lens[i];
    argv[argc] = ttl, alen[argc++] = strlen(ttl);
    int ok = redisAppendCommandArgv(c->ctx, argc, argv, alen) == REDIS_OK;
    free(keys);
    if (!ok) {
        snprintf(r->base.errstr, sizeof r->base.errstr, "out of memory");
        return r->base.err = CELERIAC_ENOMEM;
    }
    return 0;
}

/* Writes what append_store() queued. */
static int flush_out(struct backend_redis *r, struct redis_conn *c)
{
    int done = 0;
    while (!done)
        if (redisBufferWrite(c->ctx, &done) != REDIS_OK) {
            redis_conn_fail(c, "EVALSHA");
            snprintf(r->base.errstr, sizeof r->base.errstr, "%s", c->errstr);
            return r->base.err = CELERIAC_ECONN;
        }
    return 0;
}

/* Reads the reply of one script call; a script the server lost (restart,
 * SCRIPT FLUSH) is sent again as EVAL. */
static int read_store(struct backend_redis *r, struct redis_conn *c, size_t n, const char *const *task_ids,
                      const char *const *jsons, const size_t *lens)
{
    redisReply *rep = NULL;
    if (!c->ctx || redis_conn_pipeline_read(c, &rep, 1) < 0) {
        snprintf(r->base.errstr, sizeof r->base.errstr, "%s", c->errstr);
        return r->base.err = CELERIAC_ECONN;
    }
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(rep);
        rep = NULL;
        int rc = append_store(r, c, n, task_ids, jsons, lens, 1);
        if (rc == 0)
            rc = flush_out(r, c);
        if (rc < 0)
            return rc;
        if (redis_conn_pipeline_read(c, &rep, 1) < 0) {
            snprintf(r->base.errstr, sizeof r->base.errstr, "%s", c->errstr);
            return r->base.err = CELERIAC_ECONN;
        }
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(r->base.errstr, sizeof r->base.errstr, "storing %s%s: %s", task_ids[0],
                 n > 1 ? " and others" : "", rep->str);
        freeReplyObject(rep);
        return r->base.err = CELERIAC_EPROTO;
    }
    freeReplyObject(rep);
    return 0;
}

/* Sends every batch of the n documents in one write on link c. */
static int store_send(struct backend_redis *r, struct redis_conn *c, size_t n,
                      const char *const *task_ids, const char *const *jsons, const size_t *lens)
{
    int rc = ensure_link(r, c);
    for (size_t off = 0; rc == 0 && off < n; off += STORE_BATCH_MAX) {
        size_t k = n - off < STORE_BATCH_MAX ? n - off : STORE_BATCH_MAX;
        rc = append_store(r, c, k, task_ids + off, jsons + off, lens + off, 0);
    }
    if (rc == 0)
        rc = flush_out(r, c);
    else if (rc != CELERIAC_ECONN)
        redis_conn_fail(c, "EVALSHA"); /* drop half-queued commands */
    return rc;
}

/* Reads the outcome of every batch store_send() wrote on link c. */
static int store_recv(struct backend_redis *r, struct redis_conn *c, size_t n,
                      const char *const *task_ids, const char *const *jsons, const size_t *lens)
{
    int result = 0;
    for (size_t off = 0; off < n; off += STORE_BATCH_MAX) {
        size_t k = n - off < STORE_BATCH_MAX ? n - off : STORE_BATCH_MAX;
        int rc = read_store(r, c, k, task_ids + off, jsons + off, lens + off);
        if (rc == CELERIAC_ECONN)
            return rc; /* the link is gone with the rest of the replies */
        if (rc < 0)
            result = rc;
    }
    return result;
}

static int redis_store_send(struct backend *b, size_t n, const char *const *task_ids,
                            const char *const *jsons, const size_t *lens)
{
    struct backend_redis *r = (struct backend_redis *)b;
    return store_send(r, &r->split, n, task_ids, jsons, lens);
}

static int redis_store_recv(struct backend *b, size_t n, const char *const *task_ids,
                            const char *const *jsons, const size_t *lens)
{
    struct backend_redis *r = (struct backend_redis *)b;
    return store_recv(r, &r->split, n, task_ids, jsons, lens);
}

static int redis_store_fd(struct backend *b)
{
    struct backend_redis *r = (struct backend_redis *)b;
    return r->split.ctx ? r->split.ctx->fd : -1;
}

/* Stores n documents, retrying while the backend is unreachable (up to
 * retry_timeout; a negative one means a single attempt). */
static int redis_store_many(struct backend *b, size_t n, const char *const *task_ids,
                            const char *const *jsons, const size_t *lens)
{
    struct backend_redis *r = (struct backend_redis *)b;
    settle(r);
    double deadline = util_monotonic() + b->retry_timeout;
    double wait = 0.05;
    int warned = 0;
    for (;;) {
        int rc = store_send(r, &r->conn, n, task_ids, jsons, lens);
        if (rc == 0)
            rc = store_recv(r, &r->conn, n, task_ids, jsons, lens);
        if (rc != CELERIAC_ECONN && rc != CELERIAC_ETIMEDOUT)
            return rc;
        if (b->retry_timeout < 0)
            return rc; /* one attempt: the caller keeps the documents and retries */
        if (util_monotonic() + wait > deadline) {
            log_error("result for %s%s not stored: %s (gave up after %.0f s)", task_ids[0],
                      n > 1 ? " and others" : "", b->errstr, b->retry_timeout);
            return rc;
        }
        if (!warned++)
            log_warning("result backend unavailable (%s); retrying", b->errstr);
        struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        nanosleep(&ts, NULL);
        wait = wait * 2 > 2 ? 2 : wait * 2;
    }
}

static void posts_clear(struct backend_redis *r)
{
    for (size_t i = 0; i < r->nposts; i++) {
        free(r->posts[i].task_id);
        free(r->posts[i].json);
    }
    r->nposts = 0;
}

static int redis_post(struct backend *b, const char *task_id, const char *json, size_t len)
{
    struct backend_redis *r = (struct backend_redis *)b;
    if (!r->conn.ctx && r->nposts)
        settle(r); /* their link is gone: report them before a new one opens */
    if (r->nposts == r->cap_posts) {
        size_t cap = r->cap_posts ? r->cap_posts * 2 : 4;
        struct post *p = realloc(r->posts, cap * sizeof *p);
        if (!p)
            return CELERIAC_ENOMEM;
        r->posts = p;
        r->cap_posts = cap;
    }
    struct post *p = &r->posts[r->nposts];
    p->task_id = strdup(task_id);
    p->json = malloc(len + 1);
    p->len = len;
    if (!p->task_id || !p->json) {
        free(p->task_id);
        free(p->json);
        return CELERIAC_ENOMEM;
    }
    memcpy(p->json, json, len);
    p->json[len] = 0;
    int rc = ensure_connected(r);
    if (rc == 0)
        rc = append_store(r, &r->conn, 1, (const char *const *)&p->task_id,
                          (const char *const *)&p->json, &p->len, 0);
    if (rc == 0)
        rc = flush_out(r, &r->conn);
    else if (rc != CELERIAC_ECONN)
        redis_conn_fail(&r->conn, "EVALSHA");
    if (rc < 0) {
        free(p->task_id);
        free(p->json);
        return rc;
    }
    r->nposts++;
    return 0;
}

/* Reads every posted store's reply; a store the server refused for want of
 * the script is sent again, now waited for. Failures are logged: a post is
 * a progress report, and the task's outcome is stored (and reported) later. */
static void settle(struct backend_redis *r)
{
    size_t n = r->nposts;
    if (n == 0)
        return;
    r->nposts = 0; /* the stores below must not settle again */
    for (size_t i = 0; i < n; i++) {
        struct post *p = &r->posts[i];
        redisReply *rep = NULL;
        if (r->conn.ctx && redis_conn_pipeline_read(&r->conn, &rep, 1) == 0) {
            if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
                freeReplyObject(rep);
                rep = NULL;
                /* Only after the replies of the posts still on the link. */
                continue;
            }
            if (rep->type == REDIS_REPLY_ERROR)
                log_warning("state of %s not stored: %s", p->task_id, rep->str);
            freeReplyObject(rep);
        } else {
            log_warning("state of %s not stored: %s", p->task_id, r->conn.errstr);
        }
        free(p->task_id);
        free(p->json);
        p->task_id = p->json = NULL;
    }
    for (size_t i = 0; i < n; i++) {
        struct post *p = &r->posts[i];
        if (!p->task_id)
            continue;
        int rc = store_send(r, &r->conn, 1, (const char *const *)&p->task_id,
                            (const char *const *)&p->json, &p->len);
        if (rc == 0)
            rc = store_recv(r, &r->conn, 1, (const char *const *)&p->task_id,
                            (const char *const *)&p->json, &p->len);
        if (rc < 0)
            log_warning("state of %s not stored: %s", p->task_id, r->base.errstr);
        free(p->task_id);
        free(p->json);
    }
}

static void redis_settle(struct backend *b)
{
    settle((struct backend_redis *)b);
}

static int redis_store(struct backend *b, const char *task_id, const char *json, size_t len)
{
    return redis_store_many(b, 1, &task_id, &json, &len);
}

static int redis_get_status(struct backend *b, const char *task_id, char *buf, size_t len)
{
    struct backend_redis *r = (struct backend_redis *)b;
    buf[0] = 0;
    settle(r);
    int rc = ensure_connected(r);
    if (rc < 0)
        return rc;
    redisReply *rep = redis_conn_cmdf(&r->conn, "GET %s" TASK_KEY_PREFIX "%s", r->base.keyprefix, task_id);
    if (!rep)
        return CELERIAC_ECONN;
    if (rep->type == REDIS_REPLY_STRING) {
        const char *s = strstr(rep->str, "\"status\": \"");
        if (s) {
            s += 11;
            const char *e = strchr(s, '"');
            if (e)
                snprintf(buf, len, "%.*s", (int)(e - s), s);
        }
    }
    freeReplyObject(rep);
    return 0;
}

/* ---- chord join ------------------------------------------------------------ */

#define GROUP_KEY_PREFIX "celery-taskset-meta-"

/* Runs n queued commands on a fresh-enough link; on a broken link reconnects
 * and runs them once more. replies[] as redis_conn_pipeline_read. */
static int run_cmds(struct backend_redis *r, int n, const char *const *argv[],
                    const size_t *lens[], const int *argc, redisReply **replies)
{
    settle(r);
    int rc = CELERIAC_ECONN;
    for (int attempt = 0; attempt < 2 && rc == CELERIAC_ECONN; attempt++) {
        if ((rc = ensure_connected(r)) < 0)
            continue;
        for (int i = 0; i < n; i++)
            if (redisAppendCommandArgv(r->conn.ctx, argc[i], (const char **)argv[i], lens[i]) !=
                REDIS_OK) {
                redis_conn_fail(&r->conn, "chord");
                rc = CELERIAC_ECONN;
                break;
            }
        if (r->conn.ctx)
            rc = redis_conn_pipeline_read(&r->conn, replies, n);
    }
    if (rc < 0) {
        r->base.err = rc;
        snprintf(r->base.errstr, sizeof r->base.errstr, "chord join: %s", r->conn.errstr);
    }
    return rc;
}

static void free_replies(redisReply **rep, int n)
{
    for (int i = 0; i < n; i++)
        if (rep[i])
            freeReplyObject(rep[i]);
}

static long reply_long(const redisReply *r)
{
    if (!r)
        return 0;
    if (r->type == REDIS_REPLY_INTEGER)
        return (long)r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return strtol(r->str, NULL, 10);
    return 0;
}

static int redis_chord_part_return(struct backend *b, const char *group_id, const char *part_json,
                                   size_t len, const char *score, celeriac_value **parts)
{
    struct backend_redis *r = (struct backend_redis *)b;
    char jkey[300], tkey[300], skey[300], ttl[32];
    *parts = NULL;
    snprintf(jkey, sizeof jkey, "%s" GROUP_KEY_PREFIX "%s.j", b->keyprefix, group_id);
    snprintf(tkey, sizeof tkey, "%s" GROUP_KEY_PREFIX "%s.t", b->keyprefix, group_id);
    snprintf(skey, sizeof skey, "%s" GROUP_KEY_PREFIX "%s.s", b->keyprefix, group_id);
    snprintf(ttl, sizeof ttl, "%ld", b->expires);
    /* MULTI; ZADD; ZCOUNT; GET .t; GET .s; [EXPIRE x3]; EXEC - as redis-py's pipeline. */
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    const char *zadd[] = {"ZADD", jkey, score, part_json};
    const char *zcount[] = {"ZCOUNT", jkey, "-inf", "+inf"};
    const char *gett[] = {"GET", tkey}, *gets[] = {"GET", skey};
    const char *exj[] = {"EXPIRE", jkey, ttl}, *ext[] = {"EXPIRE", tkey, ttl};
    const char *exs[] = {"EXPIRE", skey, ttl};
    size_t l_multi[] = {5}, l_exec[] = {4};
    size_t l_zadd[] = {4, strlen(jkey), strlen(score), len};
    size_t l_zcount[] = {6, strlen(jkey), 4, 4};
    size_t l_gett[] = {3, strlen(tkey)}, l_gets[] = {3, strlen(skey)};
    size_t l_exj[] = {6, strlen(jkey), strlen(ttl)}, l_ext[] = {6, strlen(tkey), strlen(ttl)};
    size_t l_exs[] = {6, strlen(skey), strlen(ttl)};
    const char *const *argv[9] = {multi, zadd, zcount, gett, gets};
    const size_t *lens[9] = {l_multi, l_zadd, l_zcount, l_gett, l_gets};
    int argc[9] = {1, 4, 4, 2, 2};
    int n = 5;
    if (b->expires > 0) {
        argv[n] = exj, lens[n] = l_exj, argc[n++] = 3;
        argv[n] = ext, lens[n] = l_ext, argc[n++] = 3;
        argv[n] = exs, lens[n] = l_exs, argc[n++] = 3;
    }
    argv[n] = exec, lens[n] = l_exec, argc[n++] = 1;
    redisReply *rep[9] = {0};
    int rc = run_cmds(r, n, argv, lens, argc, rep);
    if (rc < 0)
        return rc;
    redisReply *x = rep[n - 1];
    if (!x || x->type != REDIS_REPLY_ARRAY || x->elements < 4) {
        snprintf(b->errstr, sizeof b->errstr, "chord join of %s: unexpected EXEC reply", group_id);
        free_replies(rep, n);
        return b->err = CELERIAC_EPROTO;
    }
    long ready = reply_long(x->element[1]);
    long extra = reply_long(x->element[2]);
    int have_size = x->element[3]->type == REDIS_REPLY_STRING;
    long size = reply_long(x->element[3]);
    free_replies(rep, n);
    if (!have_size || ready != size + extra)
        return 0;

    const char *zr[] = {"ZRANGE", jkey, "0", "-1"};
    size_t l_zr[] = {6, strlen(jkey), 1, 2};
    const char *const *argv2[1] = {zr};
    const size_t *lens2[1] = {l_zr};
    int argc2[1] = {4};
    redisReply *z = NULL;
    if ((rc = run_cmds(r, 1, argv2, lens2, argc2, &z)) < 0)
        return rc;
    celeriac_value *out = celeriac_value_new_array();
    rc = out ? 1 : CELERIAC_ENOMEM;
    for (size_t i = 0; rc == 1 && z->type == REDIS_REPLY_ARRAY && i < z->elements; i++) {
        celeriac_value *part = celeriac_value_from_json(z->element[i]->str, z->element[i]->len);
        if (!part) {
            snprintf(b->errstr, sizeof b->errstr, "chord join of %s: undecodable part", group_id);
            rc = b->err = CELERIAC_EPARSE;
        } else if (celeriac_value_append(out, part) < 0) {
            rc = CELERIAC_ENOMEM;
        }
    }
    freeReplyObject(z);
    if (rc < 0) {
        celeriac_value_free(out);
        return rc;
    }
    *parts = out;
    return 1;
}

static int redis_chord_clear(struct backend *b, const char *group_id)
{
    struct backend_redis *r = (struct backend_redis *)b;
    char jkey[300], tkey[300], skey[300];
    snprintf(jkey, sizeof jkey, "%s" GROUP_KEY_PREFIX "%s.j", b->keyprefix, group_id);
    snprintf(tkey, sizeof tkey, "%s" GROUP_KEY_PREFIX "%s.t", b->keyprefix, group_id);
    snprintf(skey, sizeof skey, "%s" GROUP_KEY_PREFIX "%s.s", b->keyprefix, group_id);
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    const char *dj[] = {"DEL", jkey}, *dt[] = {"DEL", tkey}, *ds[] = {"DEL", skey};
    size_t l_multi[] = {5}, l_exec[] = {4};
    size_t l_dj[] = {3, strlen(jkey)}, l_dt[] = {3, strlen(tkey)}, l_ds[] = {3, strlen(skey)};
    const char *const *argv[5] = {multi, dj, dt, ds, exec};
    const size_t *lens[5] = {l_multi, l_dj, l_dt, l_ds, l_exec};
    int argc[5] = {1, 2, 2, 2, 1};
    redisReply *rep[5] = {0};
    int rc = run_cmds(r, 5, argv, lens, argc, rep);
    if (rc == 0)
        free_replies(rep, 5);
    return rc;
}

static int redis_chord_set_size(struct backend *b, const char *group_id, long size)
{
    struct backend_redis *r = (struct backend_redis *)b;
    char skey[300], val[32], ttl[32];
    snprintf(skey, sizeof skey, "%s" GROUP_KEY_PREFIX "%s.s", b->keyprefix, group_id);
    snprintf(val, sizeof val, "%ld", size);
    snprintf(ttl, sizeof ttl, "%ld", b->expires);
    /* As the producer's backend.set(): SETEX (or SET) + PUBLISH in one MULTI. */
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    const char *setex[] = {"SETEX", skey, ttl, val}, *set[] = {"SET", skey, val};
    const char *pub[] = {"PUBLISH", skey, val};
    size_t l_multi[] = {5}, l_exec[] = {4};
    size_t l_setex[] = {5, strlen(skey), strlen(ttl), strlen(val)};
    size_t l_set[] = {3, strlen(skey), strlen(val)};
    size_t l_pub[] = {7, strlen(skey), strlen(val)};
    const char *const *argv[4] = {multi, b->expires > 0 ? setex : set, pub, exec};
    const size_t *lens[4] = {l_multi, b->expires > 0 ? l_setex : l_set, l_pub, l_exec};
    int argc[4] = {1, b->expires > 0 ? 4 : 3, 3, 1};
    redisReply *rep[4] = {0};
    int rc = run_cmds(r, 4, argv, lens, argc, rep);
    if (rc == 0)
        free_replies(rep, 4);
    return rc;
}

static void redis_free(struct backend *b)
{
    struct backend_redis *r = (struct backend_redis *)b;
    posts_clear(r);
    free(r->posts);
    redis_conn_close(&r->conn);
    redis_conn_close(&r->split);
    free(r);
}

static const struct backend_ops redis_ops = {
    .scheme = "redis",
    .store = redis_store,
    .store_many = redis_store_many,
    .store_many_send = redis_store_send,
    .store_many_recv = redis_store_recv,
    .store_many_fd = redis_store_fd,
    .post = redis_post,
    .settle = redis_settle,
    .get_status = redis_get_status,
    .chord_part_return = redis_chord_part_return,
    .chord_clear = redis_chord_clear,
    .chord_set_size = redis_chord_set_size,
    .free = redis_free,
};

struct backend *backend_redis_new(const char *url, char *err, size_t errlen);
struct backend *backend_redis_new(const char *url, char *err, size_t errlen)
{
    struct backend_redis *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (url_parse_redis(url, &r->conn.url, err, errlen) < 0) {
        free(r);
        return NULL;
    }
    r->conn.timeout = 10;
    r->split.url = r->conn.url;
    r->split.timeout = 10;
    r->base.ops = &redis_ops;
    return &r->base;
}
