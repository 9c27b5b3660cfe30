/* broker.c - picks the broker implementation for a URL; nothing else. */
#include "broker.h"

#include <stdio.h>
#include <string.h>

struct broker *broker_redis_new(const char *url, char *err, size_t errlen);

struct broker *broker_new(const char *url, char *err, size_t errlen)
{
    if (url && (strncmp(url, "redis", 5) == 0 || strncmp(url, "unix:", 5) == 0))
        return broker_redis_new(url, err, errlen);
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
