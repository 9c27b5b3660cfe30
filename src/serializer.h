/* serializer.h - body serializers behind one vtable (json, msgpack), chosen by
 * content type. Decoders are pure and capped; refused types never reach one. */
#ifndef CELERIAC_SERIALIZER_H
#define CELERIAC_SERIALIZER_H

#include <stddef.h>
#include "celeriac.h"

/* Caps on what the network controls. */
struct decode_limits {
    size_t max_bytes;   /* input size */
    unsigned max_depth; /* nesting of arrays/objects */
    size_t max_items;   /* total number of values in the document */
};

extern const struct decode_limits decode_limits_default; /* 64 MiB, 64, 1,000,000 */

struct serializer {
    const char *name;         /* "json", "msgpack" */
    const char *content_type; /* "application/json", "application/x-msgpack" */
    /* Decodes buf into *out (caller frees with celeriac_value_free()). On error
     * returns a negative CELERIAC_E* and writes a one-line reason into err. */
    int (*decode)(const void *buf, size_t len, const struct decode_limits *lim,
                  celeriac_value **out, char *err, size_t errlen);
    /* Encodes v; *out is caller frees with free(), NUL-terminated, *len excludes
     * the NUL. */
    int (*encode)(const celeriac_value *v, char **out, size_t *len);
};

extern const struct serializer serializer_json;
extern const struct serializer serializer_msgpack;

/* Where json_decode_lifting() left a member's text (see there). */
struct json_lifted {
    int found;  /* 1: the member is "" in the decoded value, its text is here */
    size_t off; /* of the string's content (after the quote) in the input */
    size_t len;
};
/* serializer_json.decode() for a JSON object whose top-level member key is
 * expected to hold a long plain string (a kombu envelope's base64 body):
 * that string is copied out without going through the parser. The result,
 * return code and error text are the same as serializer_json.decode()'s.
 * With where non-NULL the string is not copied at all: the member is left as
 * "" and where says where its content is in buf (where->found 0: nothing
 * was lifted, the member is in the value as it is). */
int json_decode_lifting(const void *buf, size_t len, const char *key,
                        const struct decode_limits *lim, celeriac_value **out, char *err,
                        size_t errlen, struct json_lifted *where);
/* What json_decode_lifting() lifts: 1 with the content of the top-level
 * string member key at text[*off], *vlen bytes, when it is at least 256
 * bytes of printable ASCII without escapes and the key occurs once; else 0.
 * Follows only the structure (the parser checks the rest). */
int json_find_plain_member(const char *text, size_t n, const char *key, size_t *off,
                           size_t *vlen);

enum serializer_lookup {
    SERIALIZER_OK = 0,      /* *out set */
    SERIALIZER_REFUSED = 1, /* known but never deserialized (pickle, yaml) */
    SERIALIZER_UNKNOWN = 2  /* unknown content type */
};
/* Finds the serializer for a content type (parameters such as "; charset="
 * ignored, case-insensitive). */
enum serializer_lookup serializer_for_content_type(const char *content_type,
                                                   const struct serializer **out);

#endif
