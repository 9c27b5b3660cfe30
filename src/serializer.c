/* serializer.c - owns the content-type table (which serializer, which types are refused) and the default decode caps; it does not decode anything itself. */
#include <string.h>
#include <strings.h>

#include "serializer.h"

const struct decode_limits decode_limits_default = {
    .max_bytes = 64u * 1024 * 1024,
    .max_depth = 64,
    .max_items = 1000000,
};

/* Known content types and aliases (kombu's registry names). Refused types are
 * listed so that they get a precise reason instead of "unknown". */
static const struct {
    const char *name;
    const struct serializer *ser; /* NULL = refused: never deserialized */
} content_types[] = {
    {"application/json", &serializer_json},
    {"json", &serializer_json},
    {"application/x-msgpack", &serializer_msgpack},
    {"application/msgpack", &serializer_msgpack},
    {"msgpack", &serializer_msgpack},
    {"application/x-python-serialize", NULL},
    {"pickle", NULL},
    {"application/x-yaml", NULL},
    {"application/yaml", NULL},
    {"yaml", NULL},
};

enum serializer_lookup serializer_for_content_type(const char *content_type,
                                                   const struct serializer **out)
{
    if (out)
        *out = NULL;
    if (!content_type)
        return SERIALIZER_UNKNOWN;
    /* The media type without parameters and surrounding blanks. */
    const char *s = content_type;
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strcspn(s, ";");
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    for (size_t i = 0; i < sizeof content_types / sizeof *content_types; i++) {
        const char *name = content_types[i].name;
        if (strlen(name) != n || strncasecmp(name, s, n) != 0)
            continue;
        if (!content_types[i].ser)
            return SERIALIZER_REFUSED;
        if (out)
            *out = content_types[i].ser;
        return SERIALIZER_OK;
    }
    return SERIALIZER_UNKNOWN;
}
