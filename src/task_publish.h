/* task_publish.h - the protocol 2 task message a worker sends itself (chain
 * steps, link callbacks, errbacks, chord bodies, retries), encoded the way
 * Celery 5.2's worker writes it, and its routing to a queue. */
#ifndef CELERIAC_TASK_PUBLISH_H
#define CELERIAC_TASK_PUBLISH_H

#include <stddef.h>

#include "broker.h"
#include "celeriac.h"
#include "util.h"

/* Everything one message carries. All pointers are borrowed until the call
 * returns; NULL means the JSON null (or the default named per field). */
struct task_publish {
    const char *id;                  /* headers.id and properties.correlation_id */
    const char *task;                /* registered task name */
    const celeriac_value *args;      /* ARRAY; NULL = [] */
    const celeriac_value *kwargs;    /* OBJECT; NULL = {} */
    const celeriac_value *callbacks; /* embed.callbacks: ARRAY of signatures or NULL */
    const celeriac_value *errbacks;  /* embed.errbacks */
    const celeriac_value *chain;     /* embed.chain: remaining steps, reversed */
    const celeriac_value *chord;     /* embed.chord: the chord body signature */
    const char *shadow;
    const char *eta;                 /* ISO-8601 text */
    const char *expires;             /* ISO-8601 text */
    const char *group_id;            /* headers.group */
    const celeriac_value *group_index; /* INT or NULL */
    int retries;
    const celeriac_value *time_limit;      /* hard limit, number or NULL */
    const celeriac_value *soft_time_limit; /* soft limit, number or NULL */
    const char *root_id;             /* NULL = id (a new workflow) */
    const char *parent_id;
    const char *origin;              /* node name of the sender */
    int ignore_result;
    const char *reply_to;            /* NULL = "" as Celery writes it */
    int priority;                    /* properties.priority, also picks the list key */
    const char *queue;               /* destination queue; NULL = "celery" */
    const celeriac_value *properties_extra; /* OBJECT merged after reply_to, or NULL */
};

/* Python repr() limit of argsrepr/kwargsrepr (Celery's argsrepr_maxsize). */
#define TASK_PUBLISH_REPR_MAX 1024

/* Appends the kombu Redis envelope of p to out: headers with every protocol 2
 * key (nulls included), body [args, kwargs, embed] in base64 JSON, properties
 * with a fresh delivery tag. Pure apart from that random tag.
 * 0, CELERIAC_EINVAL (no id/task, args not an ARRAY) or CELERIAC_ENOMEM. */
int task_publish_encode(const struct task_publish *p, struct buf *out);

/* The queue p goes to: p->queue, else "celery". Static or borrowed from p. */
const char *task_publish_queue(const struct task_publish *p);

/* Encodes p and publishes it with broker b (LPUSH to the queue's priority
 * list on Redis). 0 or a negative code (b->errstr says why). */
int task_publish_send(struct broker *b, const struct task_publish *p);

#endif
