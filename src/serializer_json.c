/* serializer_json.c - owns JSON decode (the only user of jansson) and a Python-json-like encoder; it does not know envelopes, tasks or content types. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "serializer.h"
#include "util.h"
#include "value.h"

/* Deepest value the encoder walks; deeper values come only from plugins
 * building pathological structures, and are refused instead of overflowing
 * the stack. */
#define JSON_ENCODE_MAX_DEPTH 10000

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- Decode ----------------------------------------------------------------
 * Three steps, so that a hostile document costs little: (1) size check,
 * (2) a byte scan outside strings that measures nesting and counts commas, so
 * too deep or too many elements are refused before jansson allocates
 * anything, (3) jansson parses, and the tree is converted with the same caps
 * checked exactly. NaN/Infinity and integers beyond int64 are rejected by
 * jansson as malformed. */

static int prescan(const unsigned char *p, size_t len, const struct decode_limits *lim, char *err,
                   size_t errlen)
{
    size_t depth = 0, commas = 0;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
            continue;
        }
        switch (c) {
        case '"':
            in_str = 1;
            break;
        case '[':
        case '{':
            if (++depth > lim->max_depth) {
                set_err(err, errlen, "JSON nested deeper than %u levels", lim->max_depth);
                return CELERIAC_EDEPTH;
            }
            break;
        case ']':
        case '}':
            if (depth)
                depth--;
            break;
        case ',':
            /* Every comma separates two values, so values > commas. */
            if (++commas >= lim->max_items) {
                set_err(err, errlen, "JSON has more than %zu elements", lim->max_items);
                return CELERIAC_ECOUNT;
            }
            break;
        default:
            break;
        }
    }
    return 0;
}

struct conv {
    const struct decode_limits *lim;
    size_t items;
    char *err;
    size_t errlen;
};

static int convert(struct conv *c, json_t *j, unsigned depth, celeriac_value **out);

/* kombu >= 5.3 wraps non-JSON types as {"__type__": t, "__value__": v}. For
 * an object of exactly that shape with a known t, stores the unwrapped value
 * in *out and returns 1; returns 0 when j is an ordinary object. */
static int unwrap_typed(struct conv *c, json_t *j, celeriac_value **out, int *rc)
{
    static const char *const text_types[] = {"datetime", "date", "time", "decimal", "bytes", "uuid"};
    *rc = 0;
    if (json_object_size(j) != 2)
        return 0;
    json_t *t = json_object_get(j, "__type__");
    json_t *v = json_object_get(j, "__value__");
    if (!json_is_string(t) || !v)
        return 0;
    const char *type = json_string_value(t);
    if (strcmp(type, "base64") == 0) {
        if (!json_is_string(v))
            return 0;
        unsigned char *raw = NULL;
        size_t rawlen = 0;
        *rc = codec_base64_decode(json_string_value(v), json_string_length(v), c->lim->max_bytes,
                                  &raw, &rawlen);
        if (*rc < 0) {
            set_err(c->err, c->errlen, "bad base64 text in a kombu {\"__type__\": \"base64\"} value");
            *rc = *rc == CELERIAC_ETOOBIG ? *rc : CELERIAC_EPARSE;
            return 1;
        }
        *out = celeriac_value_new_bytes(raw, rawlen);
        free(raw);
        *rc = *out ? 0 : CELERIAC_ENOMEM;
        return 1;
    }
    for (size_t i = 0; i < sizeof text_types / sizeof *text_types; i++) {
        if (strcmp(type, text_types[i]) != 0)
            continue;
        if (json_is_string(v)) {
            *out = celeriac_value_new_stringn(json_string_value(v), json_string_length(v));
            *rc = *out ? 0 : CELERIAC_ENOMEM;
            return 1;
        }
        /* uuid as {"hex": "<32 hex digits>"}: the canonical 8-4-4-4-12 text,
         * which is what str(uuid) gives and what kombu 5.2 sent. */
        json_t *hex = json_object_get(v, "hex");
        if (strcmp(type, "uuid") != 0 || !json_is_object(v) || !json_is_string(hex) ||
            json_string_length(hex) != 32 ||
            strspn(json_string_value(hex), "0123456789abcdefABCDEF") != 32)
            return 0;
        const char *h = json_string_value(hex);
        char u[37];
        size_t o = 0;
        for (int k = 0; k < 32; k++) {
            if (k == 8 || k == 12 || k == 16 || k == 20)
                u[o++] = '-';
            char ch = h[k];
            u[o++] = ch >= 'A' && ch <= 'F' ? (char)(ch - 'A' + 'a') : ch;
        }
        u[o] = '\0';
        *out = celeriac_value_new_string(u);
        *rc = *out ? 0 : CELERIAC_ENOMEM;
        return 1;
    }
    return 0;
}

static int convert(struct conv *c, json_t *j, unsigned depth, celeriac_value **out)
{
    *out = NULL;
    if (++c->items > c->lim->max_items) {
        set_err(c->err, c->errlen, "JSON has more than %zu elements", c->lim->max_items);
        return CELERIAC_ECOUNT;
    }
    switch (json_typeof(j)) {
    case JSON_NULL:
        *out = celeriac_value_new_null();
        break;
    case JSON_TRUE:
        *out = celeriac_value_new_bool(1);
        break;
    case JSON_FALSE:
        *out = celeriac_value_new_bool(0);
        break;
    case JSON_INTEGER:
        *out = celeriac_value_new_int((int64_t)json_integer_value(j));
        break;
    case JSON_REAL:
        *out = celeriac_value_new_double(json_real_value(j));
        break;
    case JSON_STRING:
        *out = celeriac_value_new_stringn(json_string_value(j), json_string_length(j));
        break;
    case JSON_ARRAY: {
        if (depth + 1 > c->lim->max_depth) {
            set_err(c->err, c->errlen, "JSON nested deeper than %u levels", c->lim->max_depth);
            return CELERIAC_EDEPTH;
        }
        celeriac_value *a = celeriac_value_new_array();
        if (!a)
            return CELERIAC_ENOMEM;
        for (size_t i = 0; i < json_array_size(j); i++) {
            celeriac_value *e;
            int rc = convert(c, json_array_get(j, i), depth + 1, &e);
            if (rc == 0)
                rc = celeriac_value_append(a, e);
            if (rc < 0) {
                celeriac_value_free(a);
                return rc;
            }
        }
        *out = a;
        return 0;
    }
    case JSON_OBJECT: {
        if (depth + 1 > c->lim->max_depth) {
            set_err(c->err, c->errlen, "JSON nested deeper than %u levels", c->lim->max_depth);
            return CELERIAC_EDEPTH;
        }
        int rc;
        if (unwrap_typed(c, j, out, &rc))
            return rc;
        celeriac_value *o = celeriac_value_new_object();
        if (!o)
            return CELERIAC_ENOMEM;
        const char *key;
        json_t *val;
        json_object_foreach(j, key, val) {
            celeriac_value *e;
            rc = convert(c, val, depth + 1, &e);
            if (rc == 0) {
                char *k = strdup(key); /* jansson keys are unique and NUL-free */
                rc = k ? value_object_push(o, k, e) : CELERIAC_ENOMEM;
                if (!k)
                    celeriac_value_free(e);
            }
            if (rc < 0) {
                celeriac_value_free(o);
                return rc;
            }
        }
        *out = o;
        return 0;
    }
    }
    return *out ? 0 : CELERIAC_ENOMEM;
}

static int json_decode(const void *buf, size_t len, const struct decode_limits *lim,
                       celeriac_value **out, char *err, size_t errlen)
{
    if (!out)
        return CELERIAC_EINVAL;
    *out = NULL;
    if (!buf && len)
        return CELERIAC_EINVAL;
    if (!lim)
        lim = &decode_limits_default;
    if (len > lim->max_bytes) {
        set_err(err, errlen, "JSON document of %zu bytes exceeds the %zu byte limit", len,
                lim->max_bytes);
        return CELERIAC_ETOOBIG;
    }
    int rc = prescan(buf, len, lim, err, errlen);
    if (rc < 0)
        return rc;
    json_error_t jerr;
    json_t *root = json_loadb(buf ? buf : "", len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_stack_overflow) {
            set_err(err, errlen, "JSON nested too deeply: %s", jerr.text);
            return CELERIAC_EDEPTH;
        }
        if (json_error_code(&jerr) == json_error_out_of_memory)
            return CELERIAC_ENOMEM;
        set_err(err, errlen, "malformed JSON at byte %d: %s", jerr.position, jerr.text);
        return CELERIAC_EPARSE;
    }
    struct conv c = {lim, 0, err, errlen};
    rc = convert(&c, root, 0, out);
    json_decref(root);
    if (rc == CELERIAC_ENOMEM)
        set_err(err, errlen, "out of memory decoding JSON");
    return rc;
}

/* ---- Encode ----------------------------------------------------------------
 * Output matches Python's json.dumps() defaults: ", " and ": " separators,
 * ASCII only (\uXXXX with surrogate pairs), floats as repr(), key order kept.
 * NaN and infinities become null (Python would write NaN, which is not JSON).
 * BYTES are written as a string: their text when valid UTF-8, else base64. */

static int valid_utf8(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        unsigned cp;
        size_t n = value_utf8_next(p + i, len - i, &cp);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}

static int put_string(struct buf *b, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    int rc = buf_append(b, "\"", 1);
    size_t run = 0; /* start of a run of bytes copied as is */
    for (size_t i = 0; i < len && rc == 0;) {
        unsigned char ch = p[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') {
            i++;
            continue;
        }
        rc = buf_append(b, s + run, i - run);
        if (rc < 0)
            break;
        char esc[16];
        unsigned cp;
        size_t n = 1;
        switch (ch) {
        case '"':
            rc = buf_append(b, "\\\"", 2);
            break;
        case '\\':
            rc = buf_append(b, "\\\\", 2);
            break;
        case '\n':
            rc = buf_append(b, "\\n", 2);
            break;
        case '\r':
            rc = buf_append(b, "\\r", 2);
            break;
        case '\t':
            rc = buf_append(b, "\\t", 2);
            break;
        case '\b':
            rc = buf_append(b, "\\b", 2);
            break;
        case '\f':
            rc = buf_append(b, "\\f", 2);
            break;
        default:
            if (ch < 0x80) {
                snprintf(esc, sizeof esc, "\\u%04x", ch);
                rc = buf_append(b, esc, 6);
                break;
            }
            n = value_utf8_next(p + i, len - i, &cp);
            if (n == 0) {
                n = 1;
                cp = 0xfffd; /* invalid UTF-8 byte */
            }
            if (cp >= 0x10000) {
                unsigned v = cp - 0x10000;
                snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
                rc = buf_append(b, esc, 12);
            } else {
                snprintf(esc, sizeof esc, "\\u%04x", cp);
                rc = buf_append(b, esc, 6);
            }
            break;
        }
        i += n;
        run = i;
    }
    if (rc == 0)
        rc = buf_append(b, s + run, len - run);
    if (rc == 0)
        rc = buf_append(b, "\"", 1);
    return rc;
}

static int put_value(struct buf *b, const celeriac_value *v, unsigned depth)
{
    char num[32];
    int rc = 0;
    if (depth > JSON_ENCODE_MAX_DEPTH)
        return CELERIAC_EDEPTH;
    switch (celeriac_value_type(v)) {
    case CELERIAC_NULL:
        return buf_append(b, "null", 4);
    case CELERIAC_BOOL:
        return v->u.b ? buf_append(b, "true", 4) : buf_append(b, "false", 5);
    case CELERIAC_INT:
        return buf_append(b, num, (size_t)snprintf(num, sizeof num, "%lld", (long long)v->u.i));
    case CELERIAC_DOUBLE:
        if (v->u.d != v->u.d || v->u.d - v->u.d != 0.0)
            return buf_append(b, "null", 4);
        return buf_append(b, num, value_double_repr(v->u.d, num));
    case CELERIAC_STRING:
        return put_string(b, v->u.s.p, v->u.s.len);
    case CELERIAC_BYTES: {
        if (valid_utf8(v->u.s.p, v->u.s.len))
            return put_string(b, v->u.s.p, v->u.s.len);
        size_t n = 0;
        char *t = codec_base64_encode(v->u.s.p, v->u.s.len, &n);
        if (!t)
            return CELERIAC_ENOMEM;
        rc = put_string(b, t, n);
        free(t);
        return rc;
    }
    case CELERIAC_ARRAY:
        rc = buf_append(b, "[", 1);
        for (size_t i = 0; rc == 0 && i < v->u.a.len; i++) {
            if (i)
                rc = buf_append(b, ", ", 2);
            if (rc == 0)
                rc = put_value(b, v->u.a.items[i], depth + 1);
        }
        return rc ? rc : buf_append(b, "]", 1);
    case CELERIAC_OBJECT:
        rc = buf_append(b, "{", 1);
        for (size_t i = 0; rc == 0 && i < v->u.o.len; i++) {
            if (i)
                rc = buf_append(b, ", ", 2);
            if (rc == 0)
                rc = put_string(b, v->u.o.keys[i], strlen(v->u.o.keys[i]));
            if (rc == 0)
                rc = buf_append(b, ": ", 2);
            if (rc == 0)
                rc = put_value(b, v->u.o.vals[i], depth + 1);
        }
        return rc ? rc : buf_append(b, "}", 1);
    }
    return CELERIAC_EINVAL;
}

static int json_encode(const celeriac_value *v, char **out, size_t *len)
{
    if (!out)
        return CELERIAC_EINVAL;
    *out = NULL;
    struct buf b = {0};
    int rc = put_value(&b, v, 0);
    if (rc < 0) {
        buf_free(&b);
        return rc;
    }
    *out = b.p;
    if (len)
        *len = b.len;
    return 0;
}

const struct serializer serializer_json = {
    .name = "json",
    .content_type = "application/json",
    .decode = json_decode,
    .encode = json_encode,
};
