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
 * PUBLISH in one MULTI. This script does the same atomically in one round trip. */
static const char store_script[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur then\n"
    "  local ok, doc = pcall(cjson.decode, cur)\n"
    "  if ok and type(doc) == 'table' and doc['status'] == 'SUCCESS' then return 0 end\n"
    "end\n"
    "local ttl = tonumber(ARGV[2])\n"
    "if ttl and ttl > 0 then redis.call('SETEX', KEYS[1], ttl, ARGV[1])\n"
    "else redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "redis.call('PUBLISH', KEYS[1], ARGV[1])\n"
    "return 1\n";

struct backend_redis {
    struct backend base;
    struct redis_conn conn;
    char sha[41];       /* SHA1 of store_script once loaded */
};

static int ensure_connected(struct backend_redis *r)
{
    if (r->conn.ctx)
        return 0;
    int rc = redis_conn_open(&r->conn);
    if (rc < 0) {
        r->base.err = rc;
        snprintf(r->base.errstr, sizeof r->base.errstr, "%s", r->conn.errstr);
        return rc;
    }
    redisReply *rep = redis_conn_cmdf(&r->conn, "SCRIPT LOAD %s", store_script);
    if (!rep)
        return r->base.err = CELERIAC_ECONN;
    if (rep->type == REDIS_REPLY_STRING && rep->len == 40)
        memcpy(r->sha, rep->str, 41);
    freeReplyObject(rep);
    return 0;
}

static int store_once(struct backend_redis *r, const char *key, const char *json, size_t len)
{
    int rc = ensure_connected(r);
    if (rc < 0)
        return rc;
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%ld", r->base.expires);
    const char *argv[6] = {"EVALSHA", r->sha, "1", key, json, ttl};
    size_t lens[6] = {7, 40, 1, strlen(key), len, strlen(ttl)};
    redisReply *rep = redis_conn_cmd(&r->conn, 6, argv, lens);
    if (rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(rep);
        argv[0] = "EVAL";
        argv[1] = store_script;
        lens[0] = 4;
        lens[1] = strlen(store_script);
        rep = redis_conn_cmd(&r->conn, 6, argv, lens);
    }
    if (!rep) {
        snprintf(r->base.errstr, sizeof r->base.errstr, "%s", r->conn.errstr);
        return r->base.err = CELERIAC_ECONN;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(r->base.errstr, sizeof r->base.errstr, "storing %s: %s", key, rep->str);
        freeReplyObject(rep);
        return r->base.err = CELERIAC_EPROTO;
    }
    freeReplyObject(rep);
    return 0;
}

static int redis_store(struct backend *b, const char *task_id, const char *json, size_t len)
{
    struct backend_redis *r = (struct backend_redis *)b;
    char key[512];
    snprintf(key, sizeof key, TASK_KEY_PREFIX "%s", task_id);
    double deadline = util_monotonic() + b->retry_timeout;
    double wait = 0.05;
    int warned = 0;
    for (;;) {
        int rc = store_once(r, key, json, len);
        if (rc != CELERIAC_ECONN && rc != CELERIAC_ETIMEDOUT)
            return rc;
        if (util_monotonic() + wait > deadline) {
            log_error("result for %s not stored: %s (gave up after %.0f s)", task_id, b->errstr,
                      b->retry_timeout);
            return rc;
        }
        if (!warned++)
            log_warning("result backend unavailable (%s); retrying", b->errstr);
        struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        nanosleep(&ts, NULL);
        wait = wait * 2 > 2 ? 2 : wait * 2;
    }
}

static int redis_get_status(struct backend *b, const char *task_id, char *buf, size_t len)
{
    struct backend_redis *r = (struct backend_redis *)b;
    buf[0] = 0;
    int rc = ensure_connected(r);
    if (rc < 0)
        return rc;
    redisReply *rep = redis_conn_cmdf(&r->conn, "GET " TASK_KEY_PREFIX "%s", task_id);
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

static void redis_free(struct backend *b)
{
    struct backend_redis *r = (struct backend_redis *)b;
    redis_conn_close(&r->conn);
    free(r);
}

static const struct backend_ops redis_ops = {
    .scheme = "redis",
    .store = redis_store,
    .get_status = redis_get_status,
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
    r->base.ops = &redis_ops;
    return &r->base;
}
