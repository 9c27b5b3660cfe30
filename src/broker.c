/* broker.c - picks the broker implementation for a URL; nothing else. */
#include "broker.h"

#include <stdio.h>
#include <string.h>

struct broker *broker_redis_new(const char *url, const struct broker_options *opts, char *err,
                                size_t errlen);

void broker_options_default(struct broker_options *o)
{
    static const int steps[] = {0, 3, 6, 9};
    memset(o, 0, sizeof *o);
    memcpy(o->sep, "\x06\x16", 3);
    memcpy(o->steps, steps, sizeof steps);
    o->nsteps = 4;
    o->order = QUEUE_ORDER_ROUND_ROBIN;
}

struct broker *broker_new(const char *url, const struct broker_options *opts, char *err,
                          size_t errlen)
{
    struct broker_options def;
    if (!opts) {
        broker_options_default(&def);
        opts = &def;
    }
    if (url && (strncmp(url, "redis", 5) == 0 || strncmp(url, "unix:", 5) == 0))
        return broker_redis_new(url, opts, err, errlen);
    if (url && (strncmp(url, "amqp", 4) == 0 || strncmp(url, "pyamqp", 6) == 0))
        snprintf(err, errlen, "AMQP brokers are not supported yet (use redis://)");
    else
        snprintf(err, errlen, "unsupported broker URL '%s' (use redis://host:port/db)",
                 url ? url : "");
    return NULL;
}

void broker_free(struct broker *b)
{
    if (b)
        b->ops->free(b);
}
