/* redis_conn.c - opens and checks hiredis connections; it knows no key layout. */
#include "redis_conn.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "celeriac.h"

static struct timeval tv_of(double s)
{
    struct timeval tv;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

void redis_conn_close(struct redis_conn *c)
{
    if (c->ctx)
        redisFree(c->ctx);
    c->ctx = NULL;
}

void redis_conn_fail(struct redis_conn *c, const char *what)
{
    if (c->ctx && c->ctx->err)
        snprintf(c->errstr, sizeof c->errstr, "%s: %s", what, c->ctx->errstr);
    else
        snprintf(c->errstr, sizeof c->errstr, "%s: connection lost", what);
    c->err = CELERIAC_ECONN;
    redis_conn_close(c);
}

int redis_conn_open(struct redis_conn *c)
{
    redis_conn_close(c);
    if (c->timeout <= 0)
        c->timeout = 10;
    struct timeval tv = tv_of(c->timeout);
    if (c->url.path[0])
        c->ctx = redisConnectUnixWithTimeout(c->url.path, tv);
    else
        c->ctx = redisConnectWithTimeout(c->url.host, c->url.port, tv);
    if (!c->ctx || c->ctx->err) {
        snprintf(c->errstr, sizeof c->errstr, "cannot connect to redis://%s:%d: %s",
                 c->url.path[0] ? c->url.path : c->url.host, c->url.port,
                 c->ctx ? c->ctx->errstr : "out of memory");
        redis_conn_close(c);
        return c->err = CELERIAC_ECONN;
    }
    redisSetTimeout(c->ctx, tv);
    redisEnableKeepAlive(c->ctx);
    redisReply *r = NULL;
    if (c->url.password[0]) {
        if (c->url.username[0])
            r = redisCommand(c->ctx, "AUTH %s %s", c->url.username, c->url.password);
        else
            r = redisCommand(c->ctx, "AUTH %s", c->url.password);
        if (!r) {
            redis_conn_fail(c, "AUTH");
            return c->err;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            snprintf(c->errstr, sizeof c->errstr, "redis AUTH failed: %s", r->str);
            freeReplyObject(r);
            redis_conn_close(c);
            return c->err = CELERIAC_EAUTH;
        }
        freeReplyObject(r);
    }
    if (c->url.db) {
        r = redisCommand(c->ctx, "SELECT %d", c->url.db);
        if (!r) {
            redis_conn_fail(c, "SELECT");
            return c->err;
        }
        int bad = r->type == REDIS_REPLY_ERROR;
        if (bad)
            snprintf(c->errstr, sizeof c->errstr, "redis SELECT %d failed: %s", c->url.db, r->str);
        freeReplyObject(r);
        if (bad) {
            redis_conn_close(c);
            return c->err = CELERIAC_ECONN;
        }
    }
    /* An AUTH error arrives as an error reply to the first command. */
    r = redisCommand(c->ctx, "PING");
    if (!r) {
        redis_conn_fail(c, "PING");
        return c->err;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(c->errstr, sizeof c->errstr, "redis refused PING: %s", r->str);
        int auth = strstr(r->str, "NOAUTH") != NULL || strstr(r->str, "WRONGPASS") != NULL;
        freeReplyObject(r);
        redis_conn_close(c);
        return c->err = auth ? CELERIAC_EAUTH : CELERIAC_ECONN;
    }
    freeReplyObject(r);
    c->err = 0;
    c->errstr[0] = 0;
    return 0;
}

redisReply *redis_conn_cmd(struct redis_conn *c, int argc, const char **argv, const size_t *lens)
{
    if (!c->ctx) {
        snprintf(c->errstr, sizeof c->errstr, "not connected");
        c->err = CELERIAC_ECONN;
        return NULL;
    }
    redisReply *r = redisCommandArgv(c->ctx, argc, argv, lens);
    if (!r)
        redis_conn_fail(c, argv[0]);
    return r;
}

redisReply *redis_conn_cmdf(struct redis_conn *c, const char *fmt, ...)
{
    if (!c->ctx) {
        snprintf(c->errstr, sizeof c->errstr, "not connected");
        c->err = CELERIAC_ECONN;
        return NULL;
    }
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c->ctx, fmt, ap);
    va_end(ap);
    if (!r)
        redis_conn_fail(c, fmt);
    return r;
}

int redis_conn_pipeline_read(struct redis_conn *c, redisReply **replies, int n)
{
    int rc = 0;
    for (int i = 0; i < n; i++) {
        replies[i] = NULL;
        if (rc < 0)
            continue;
        void *r = NULL;
        if (!c->ctx || redisGetReply(c->ctx, &r) != REDIS_OK) {
            redis_conn_fail(c, "pipeline");
            rc = CELERIAC_ECONN;
            continue;
        }
        replies[i] = r;
    }
    if (rc < 0)
        for (int i = 0; i < n; i++)
            if (replies[i]) {
                freeReplyObject(replies[i]);
                replies[i] = NULL;
            }
    return rc;
}
