/* envelope.h - kombu's Redis message envelope for messages celeriac sends
 * (events, pidbox replies, task messages) and for pidbox requests it reads.
 * Pure: no I/O. */
#ifndef CELERIAC_ENVELOPE_H
#define CELERIAC_ENVELOPE_H

#include "celeriac.h"
#include "serializer.h"
#include "util.h"

/* Appends {"body": <base64 JSON of body>, "content-encoding": "utf-8",
 * "content-type": "application/json", "headers": headers, "properties":
 * {..., "delivery_mode", "delivery_info": {"exchange", "routing_key"},
 * "priority": 0, "body_encoding": "base64", "delivery_tag": <uuid4>}} to out.
 * headers may be NULL ({}); extra_properties (may be NULL) are merged in first
 * (correlation_id, reply_to, priority). */
int envelope_encode(const celeriac_value *body, const celeriac_value *headers,
                    const celeriac_value *extra_properties, int delivery_mode,
                    const char *exchange, const char *routing_key, struct buf *out);

/* Decodes an envelope and its body (base64, compression, JSON or msgpack).
 * *body and *headers (OBJECT, possibly empty) are caller frees with
 * celeriac_value_free(). Negative code with a reason in err. */
int envelope_decode(const char *text, size_t len, const struct decode_limits *lim,
                    celeriac_value **body, celeriac_value **headers, char *err, size_t errlen);

#endif
