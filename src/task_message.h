/* task_message.h - the pure decoder from a kombu Redis envelope (JSON text) to
 * a Celery task request, protocol 2 and 1. No I/O, no clock, no globals. */
#ifndef CELERIAC_TASK_MESSAGE_H
#define CELERIAC_TASK_MESSAGE_H

#include <stddef.h>
#include "celeriac.h"
#include "serializer.h"
#include "util.h"

struct task_message_limits {
    size_t max_message_bytes; /* whole envelope */
    size_t max_body_bytes;    /* body after base64 and decompression */
    unsigned max_depth;       /* nesting, envelope and body alike */
    size_t max_items;         /* values per decoded document */
    int headers_only;         /* protocol 2: leave the body undecoded (body_pending set) */
};

extern const struct task_message_limits task_message_limits_default;

/* A decoded task. Strings are owned by the message (NUL-terminated, most of
 * them in its strings block; only task_message_clear() frees them) or NULL
 * when absent/null. */
struct task_message {
    int protocol;          /* 2 (headers.task present) or 1 (body has task) */
    char *id;              /* task id; set as early as it can be found, also on errors */
    char *task;            /* registered task name to execute */
    char *shadow;          /* display name override, or NULL */
    char *root_id;
    char *parent_id;
    char *group;           /* group id (v1: taskset) */
    long group_index;
    int has_group_index;
    int retries;
    double eta;            /* Unix seconds, 0 = none */
    double expires;        /* Unix seconds, 0 = none */
    double time_limit;     /* hard, seconds, 0 = none (timelimit[0]) */
    double soft_time_limit;/* soft, seconds, 0 = none (timelimit[1]) */
    int ignore_result;
    int redelivered;       /* headers.redelivered or delivery_info.redelivered */
    char *origin;
    char *argsrepr;        /* v2 header, or NULL */
    char *kwargsrepr;
    char *content_type;
    char *content_encoding;
    char *compression;     /* headers.compression, or NULL */
    /* properties */
    char *correlation_id;
    char *reply_to;
    char *delivery_tag;    /* kombu Redis delivery tag (uuid text) */
    char *exchange;        /* delivery_info.exchange */
    char *routing_key;     /* delivery_info.routing_key */
    int priority;          /* properties.priority, clamped to 0..255 */
    int body_pending;      /* decoded with headers_only: args/kwargs/embed not read yet */
    /* With body_pending: the body, kept for task_message_pack() when it is a
     * string (body_packable 1). Either body_text (owned) holds it, or it is
     * envelope[body_off .. body_off + body_len), exactly as sent. */
    int body_packable;
    celeriac_value *body_text;
    size_t body_off, body_len;
    char *body_encoding;   /* properties.body_encoding, with body_packable */
    /* Decoded values, owned: args ARRAY, kwargs OBJECT, embed OBJECT with
     * callbacks/errbacks/chain/chord (null members when absent), headers the
     * whole headers OBJECT (custom keys included). */
    celeriac_value *args;
    celeriac_value *kwargs;
    celeriac_value *embed;
    celeriac_value *headers;
    char *strings;         /* owned: the block most string fields point into */
    size_t strings_used;
};

/* Decodes one envelope. Returns 0, or a negative code with a one-line reason in
 * err: CELERIAC_EPARSE (malformed anywhere), CELERIAC_ETOOBIG / EDEPTH / ECOUNT
 * (a cap was hit), CELERIAC_ECONTENT (pickle, yaml or an unknown content type:
 * never deserialized), CELERIAC_EUNSUPPORTED (unknown compression). On error
 * the fields that could be read (id, task, delivery_tag, reply_to...) are
 * left set so the caller can store a FAILURE and ack; the caller always calls
 * task_message_clear(). kombu >= 5.3 JSON {"__type__","__value__"} objects in
 * args/kwargs are unwrapped to their text form. */
int task_message_decode(const char *envelope, size_t len, const struct task_message_limits *lim,
                        struct task_message *out, char *err, size_t errlen);
/* The hand-off from the main process to a pool process, which then does
 * not decode the envelope again: a packed message is everything a
 * headers_only decode found, followed by the envelope itself.
 *
 * task_message_pack() appends to out the part before the envelope, for m
 * (a headers_only decode of envelope, body_packable set). Returns 0, or
 * CELERIAC_EINVAL when m cannot be packed (the caller sends the envelope
 * alone), CELERIAC_ENOMEM. */
int task_message_pack(const struct task_message *m, struct buf *out);
/* The same pack for a message decoded in full (a pool process that fetched
 * it itself): its header fields alone, the body left in the envelope.
 * Returns 0, CELERIAC_EINVAL (no id or task), CELERIAC_ENOMEM. */
int task_message_pack_headers(const struct task_message *m, struct buf *out);
/* Reads such a packed message (pack_headers, then the envelope) into out:
 * the header fields, body_pending set, args/kwargs/embed/headers NULL (read
 * them from the envelope). 0, or CELERIAC_EPARSE for anything but a
 * well-formed headers pack (out cleared). */
int task_message_unpack_headers(const char *packed, size_t len, struct task_message *out);
/* Decodes a packed message (pack, then the envelope, len bytes in all) into
 * out, body included: the same outcome as task_message_decode() of the
 * envelope with lim, which it falls back to for anything but a well-formed
 * protocol 2 body, except that out->headers stays NULL (see
 * task_message_load_headers()). Malformed packs give CELERIAC_EPARSE. */
int task_message_decode_packed(const char *packed, size_t len,
                               const struct task_message_limits *lim, struct task_message *out,
                               char *err, size_t errlen);
/* The envelope inside a packed message; 0, or CELERIAC_EPARSE. */
int task_message_packed_envelope(const char *packed, size_t len, const char **envelope,
                                 size_t *envelope_len);
/* Sets m->headers from the envelope when it is NULL (after
 * task_message_decode_packed()). Returns 0 or the decode's negative code. */
int task_message_load_headers(struct task_message *m, const char *envelope, size_t len,
                              const struct task_message_limits *lim);
/* Frees everything in m and zeroes it. Accepts a zeroed struct. */
void task_message_clear(struct task_message *m);
/* The name shown in logs and events: shadow if set, else task. */
const char *task_message_display_name(const struct task_message *m);

#endif
