/* broker.h - brokers behind one vtable. The worker never branches on kind:
 * Redis now, AMQP later. Fetching is split into start/read so the worker's
 * poll loop can wait on the broker and its pool at once. */
#ifndef CELERIAC_BROKER_H
#define CELERIAC_BROKER_H

#include <stddef.h>

/* One message as it came off a queue. */
struct broker_delivery {
    char *body;       /* owned: the raw envelope (kombu JSON on Redis), NUL-terminated */
    size_t len;
    char queue[256];  /* queue name without any priority suffix */
    int reserved;     /* the batch fetch recorded it as unacknowledged under tag */
    char tag[128];    /* the delivery tag it was reserved under */
};

/* What the broker needs to remember about a reserved message. */
struct broker_reservation {
    const char *delivery_tag; /* borrowed */
    const char *exchange;     /* borrowed; "" for the default exchange */
    const char *routing_key;  /* borrowed */
    int priority;
};

struct broker;

struct broker_ops {
    const char *name;
    /* Connects (or reconnects) all links and declares the consumed queues. */
    int (*connect)(struct broker *b);
    /* Opens only what publish() needs (pool processes sending canvas and
     * retry messages): no consuming link, no bindings declared. */
    int (*connect_publisher)(struct broker *b);
    /* Drops all links without touching the server's state. */
    void (*disconnect)(struct broker *b);
    /* Consume from these queues (replaces the list). Borrowed for the call. */
    int (*set_queues)(struct broker *b, char **queues, size_t n);
    /* Asks for the next message unless a request is outstanding. */
    int (*fetch_start)(struct broker *b);
    /* Makes an outstanding fetch return at once with nothing (shutdown); its
     * reply still has to be read. 0 also when nothing is outstanding. */
    int (*fetch_cancel)(struct broker *b);
    /* fd to poll for POLLIN while a fetch is outstanding, else -1. */
    int (*fetch_fd)(struct broker *b);
    /* Completes a fetch when fetch_fd is readable: 1 = message in *out (caller
     * frees out->body), 0 = none yet (timeout or partial read), negative on error. */
    int (*fetch_read)(struct broker *b, struct broker_delivery *out);
    /* Asks for up to n waiting messages at once, in the order BRPOP would
     * serve them, without blocking the queues or the caller. Each is recorded
     * as unacknowledged atomically with the pop. The nacks delivery tags (borrowed for the call) are acknowledged
     * first, in the same round trip. The reply is read by fetch_batch_read()
     * once fetch_fd is readable: 1 = complete, out[0..*count) filled with at
     * most max deliveries (caller frees each body); 0 = not yet; negative on
     * error (the acks are then not known to be done). */
    int (*fetch_batch_send)(struct broker *b, const char *const *acks, size_t nacks,
                            size_t n);
    int (*fetch_batch_read)(struct broker *b, struct broker_delivery *out, size_t max,
                            size_t *count);
    /* Acknowledges several messages in one round trip. Borrowed tags. */
    int (*ack_many)(struct broker *b, const char **delivery_tags, size_t n);
    /* Records a delivered message as unacknowledged (Celery's QoS). */
    int (*reserve)(struct broker *b, const struct broker_reservation *r, const char *body,
                   size_t len);
    int (*ack)(struct broker *b, const char *delivery_tag);
    /* requeue: put back at the tail (Redis: LPUSH) as kombu's reject does. */
    int (*reject)(struct broker *b, const char *delivery_tag, int requeue);
    /* A fetching pool process: every batch fetch and reserve() from now on
     * also leaves the delivery tags it reserved (and only those) in a record
     * named name (NULL = no record). take_fetch_record() reads and removes such a
     * record (*tags owned by the caller, each freed). */
    void (*set_fetch_record)(struct broker *b, const char *name);
    int (*take_fetch_record)(struct broker *b, const char *name, char ***tags, size_t *n);
    /* Puts an unacknowledged message back at the head of its queue (restore). */
    int (*restore)(struct broker *b, const char *delivery_tag);
    /* Restores every unacked message older than visibility_timeout seconds
     * (any worker's), as kombu's restore_visible does. Returns the count. */
    int (*restore_visible)(struct broker *b, double visibility_timeout);
    /* Marks messages this worker still holds as alive, so no restore scan
     * (ours or another worker's) takes them back while we run. Borrowed tags. */
    int (*refresh)(struct broker *b, const char **delivery_tags, size_t n);
    /* Publishes a message to a queue (default exchange). */
    int (*publish)(struct broker *b, const char *queue, int priority, const char *body,
                   size_t len);
    /* ---- fanout and direct exchanges (events, remote control) ---- */
    /* Listens on a fanout exchange with a binding key ("" or "worker.#").
     * Deliveries arrive through sub_fd/sub_read; kept across reconnects. */
    int (*subscribe)(struct broker *b, const char *exchange, const char *binding_key);
    /* fd to poll for POLLIN while subscribed, else -1. */
    int (*sub_fd)(struct broker *b);
    /* One delivery from a subscription: 1 = message in *out (out->queue is
     * the exchange name; caller frees out->body), 0 = none buffered, negative
     * on error. Call until it returns 0 after sub_fd is readable. */
    int (*sub_read)(struct broker *b, struct broker_delivery *out);
    /* Queues a message for a fanout exchange; sent by flush(). */
    int (*fanout)(struct broker *b, const char *exchange, const char *routing_key,
                  const char *body, size_t len);
    /* Sends everything queued by fanout() in one round trip. */
    int (*flush)(struct broker *b);
    /* Delivers to the queues bound to a direct exchange with routing_key
     * (pidbox replies). 0 also when nobody is bound (the message is dropped). */
    int (*publish_direct)(struct broker *b, const char *exchange, const char *routing_key,
                          const char *body, size_t len);
    /* Declares / removes a binding queue <- exchange with routing_key. */
    int (*bind)(struct broker *b, const char *exchange, const char *routing_key,
                const char *queue);
    int (*unbind)(struct broker *b, const char *exchange, const char *routing_key,
                  const char *queue);
    void (*free)(struct broker *b);
};

struct broker {
    const struct broker_ops *ops;
    int err;           /* last CELERIAC_E* */
    char errstr[256];  /* last error, one line */
};

/* kombu's transport options for queue layout (broker_transport_options). */
enum queue_order { QUEUE_ORDER_ROUND_ROBIN = 0, QUEUE_ORDER_SORTED, QUEUE_ORDER_PRIORITY };
struct broker_options {
    char sep[8];       /* key separator: "\x06\x16" by default */
    int steps[10];     /* priority steps, ascending, first 0: {0, 3, 6, 9} by default */
    size_t nsteps;
    int order;         /* enum queue_order */
    char keyprefix[128]; /* kombu's global_keyprefix: in front of every key and channel */
};
/* kombu's defaults. */
void broker_options_default(struct broker_options *o);

/* By URL scheme. opts is copied (NULL = kombu's defaults). Caller frees with
 * broker_free(). NULL with err set. */
struct broker *broker_new(const char *url, const struct broker_options *opts, char *err,
                          size_t errlen);
void broker_free(struct broker *b);

#endif
