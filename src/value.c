/* value.c - owns celeriac_value: builders, accessors, deep copy and Python repr(); it does not parse or print JSON/msgpack (serializer_json.c, serializer_msgpack.c do). */
#include "value.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serializer.h"
#include "util.h"

/* ---- Accessors ------------------------------------------------------------ */

celeriac_type celeriac_value_type(const celeriac_value *v)
{
    return v ? v->type : CELERIAC_NULL;
}

int celeriac_value_bool(const celeriac_value *v)
{
    return v && v->type == CELERIAC_BOOL && v->u.b;
}

int64_t celeriac_value_int(const celeriac_value *v)
{
    if (!v)
        return 0;
    if (v->type == CELERIAC_INT)
        return v->u.i;
    if (v->type == CELERIAC_DOUBLE) {
        double d = v->u.d;
        if (isnan(d))
            return 0;
        if (d >= 9223372036854775807.0)
            return INT64_MAX;
        if (d <= -9223372036854775808.0)
            return INT64_MIN;
        return (int64_t)d;
    }
    return 0;
}

double celeriac_value_double(const celeriac_value *v)
{
    if (!v)
        return 0.0;
    if (v->type == CELERIAC_DOUBLE)
        return v->u.d;
    if (v->type == CELERIAC_INT)
        return (double)v->u.i;
    return 0.0;
}

const char *celeriac_value_string(const celeriac_value *v, size_t *len)
{
    if (!v || (v->type != CELERIAC_STRING && v->type != CELERIAC_BYTES)) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = v->u.s.len;
    return v->u.s.p;
}

size_t celeriac_value_len(const celeriac_value *v)
{
    if (!v)
        return 0;
    if (v->type == CELERIAC_ARRAY)
        return v->u.a.len;
    if (v->type == CELERIAC_OBJECT)
        return v->u.o.len;
    return 0;
}

const celeriac_value *celeriac_value_at(const celeriac_value *v, size_t i)
{
    if (!v)
        return NULL;
    if (v->type == CELERIAC_ARRAY)
        return i < v->u.a.len ? v->u.a.items[i] : NULL;
    if (v->type == CELERIAC_OBJECT)
        return i < v->u.o.len ? v->u.o.vals[i] : NULL;
    return NULL;
}

const char *celeriac_value_key_at(const celeriac_value *v, size_t i)
{
    if (!v || v->type != CELERIAC_OBJECT || i >= v->u.o.len)
        return NULL;
    return v->u.o.keys[i];
}

/* ---- object keys ---------------------------------------------------------- */

/* The keys of Celery's envelopes, headers, properties and result documents
 * (kombu/Celery 5.x field names), one after the other, sorted by length:
 * a key with one of these names points into this table instead of owning a
 * malloc'ed copy (a task message has ~35 of them, per decode, per process). */
static const char key_table[] =
    "id\0eta\0args\0body\0lang\0name\0task\0chain\0chord\0group\0kwargs\0origin\0result\0"
    "shadow\0stamps\0status\0expires\0headers\0retries\0root_id\0task_id\0argsrepr\0"
    "children\0errbacks\0exchange\0hostname\0priority\0reply_to\0callbacks\0date_done\0"
    "parent_id\0timelimit\0traceback\0kwargsrepr\0properties\0compression\0group_index\0"
    "redelivered\0routing_key\0content-type\0delivery_tag\0body_encoding\0delivery_info\0"
    "delivery_mode\0ignore_result\0correlation_id\0stamped_headers\0content-encoding\0"
    "replaced_task_nesting\0";
#define KEY_MAX_LEN 21

/* key_first[n]: offset in key_table of the first key of n bytes; the keys
 * of n bytes end where those of n + 1 begin. */
static const unsigned short key_first[KEY_MAX_LEN + 2] = {
    0, 0, 0, 3, 7, 32, 50, 92, 132, 195, 245, 267, 315, 341, 397, 412, 428, 445, 445, 445, 445, 445, 467};

static int key_is_shared(const char *k)
{
    uintptr_t a = (uintptr_t)k, lo = (uintptr_t)key_table;
    return a >= lo && a < lo + sizeof key_table;
}

char *value_key_dup(const char *s, size_t len)
{
    if (!s || len == SIZE_MAX)
        return NULL;
    if (len >= 2 && len <= KEY_MAX_LEN) {
        for (size_t off = key_first[len]; off < key_first[len + 1]; off += len + 1)
            if (key_table[off] == s[0] && memcmp(key_table + off, s, len) == 0)
                return (char *)(key_table + off); /* never written: see value.h */
    }
    char *k = malloc(len + 1);
    if (k) {
        memcpy(k, s, len);
        k[len] = '\0';
    }
    return k;
}

void value_key_free(char *key)
{
    if (!key_is_shared(key))
        free(key);
}

int value_key_table_check(void)
{
    size_t off = 0, prev = 0;
    while (off < sizeof key_table - 1) {
        size_t n = strlen(key_table + off);
        if (n < prev || n < 2 || n > KEY_MAX_LEN)
            return -1; /* not sorted by length, or out of range */
        if (n != prev && key_first[n] != off)
            return -1;
        for (size_t l = prev + 1; l < n; l++)
            if (key_first[l] != off)
                return -1; /* a length without keys must have an empty range */
        if (value_key_dup(key_table + off, n) != key_table + off)
            return -1;
        prev = n;
        off += n + 1;
    }
    for (size_t l = prev + 1; l <= KEY_MAX_LEN + 1; l++)
        if (key_first[l] != off)
            return -1;
    return 0;
}

static long find_key(const celeriac_value *v, const char *key)
{
    if (!v || !key || v->type != CELERIAC_OBJECT)
        return -1;
    for (size_t i = 0; i < v->u.o.len; i++)
        if (v->u.o.keys[i][0] == key[0] && strcmp(v->u.o.keys[i], key) == 0)
            return (long)i;
    return -1;
}

const celeriac_value *celeriac_value_get(const celeriac_value *v, const char *key)
{
    long i = find_key(v, key);
    return i < 0 ? NULL : v->u.o.vals[i];
}

const char *value_get_str(const celeriac_value *obj, const char *key)
{
    const celeriac_value *v = celeriac_value_get(obj, key);
    return v && v->type == CELERIAC_STRING ? v->u.s.p : NULL;
}

celeriac_value *value_take(celeriac_value *obj, const char *key)
{
    long i = find_key(obj, key);
    if (i < 0)
        return NULL;
    celeriac_value *v = obj->u.o.vals[i];
    value_key_free(obj->u.o.keys[i]);
    size_t rest = obj->u.o.len - (size_t)i - 1;
    memmove(obj->u.o.keys + i, obj->u.o.keys + i + 1, rest * sizeof(char *));
    memmove(obj->u.o.vals + i, obj->u.o.vals + i + 1, rest * sizeof(celeriac_value *));
    obj->u.o.len--;
    return v;
}

celeriac_value *value_take_at(celeriac_value *arr, size_t i)
{
    if (!arr || arr->type != CELERIAC_ARRAY || i >= arr->u.a.len)
        return NULL;
    celeriac_value *v = arr->u.a.items[i];
    memmove(arr->u.a.items + i, arr->u.a.items + i + 1,
            (arr->u.a.len - i - 1) * sizeof(celeriac_value *));
    arr->u.a.len--;
    return v;
}

/* ---- Builders ------------------------------------------------------------- */

static celeriac_value *new_value(celeriac_type t)
{
    celeriac_value *v = calloc(1, sizeof *v);
    if (v)
        v->type = t;
    return v;
}

/* null, true and false are shared nodes: a decoded message holds dozens of
 * them, and no function changes a scalar node in place (a value is replaced
 * in its container instead). Freeing one does nothing. */
static celeriac_value shared_null = {.type = CELERIAC_NULL};
static celeriac_value shared_true = {.type = CELERIAC_BOOL, .u.b = 1};
static celeriac_value shared_false = {.type = CELERIAC_BOOL, .u.b = 0};

static int is_shared(const celeriac_value *v)
{
    return v == &shared_null || v == &shared_true || v == &shared_false;
}

celeriac_value *celeriac_value_new_null(void)
{
    return &shared_null;
}

celeriac_value *celeriac_value_new_bool(int b)
{
    return b ? &shared_true : &shared_false;
}

celeriac_value *celeriac_value_new_int(int64_t i)
{
    celeriac_value *v = new_value(CELERIAC_INT);
    if (v)
        v->u.i = i;
    return v;
}

celeriac_value *celeriac_value_new_double(double d)
{
    celeriac_value *v = new_value(CELERIAC_DOUBLE);
    if (v)
        v->u.d = d;
    return v;
}

/* A string's bytes live in the same allocation as its node, right after it
 * (one malloc per string instead of two): u.s.p is never reassigned. */
static celeriac_value *new_blob(celeriac_type t, const void *p, size_t len)
{
    if (!p && len)
        return NULL;
    if (len > SIZE_MAX - sizeof(celeriac_value) - 1)
        return NULL;
    celeriac_value *v = malloc(sizeof *v + len + 1);
    if (!v)
        return NULL;
    memset(v, 0, sizeof *v);
    v->type = t;
    v->u.s.p = (char *)(v + 1);
    if (len)
        memcpy(v->u.s.p, p, len);
    v->u.s.p[len] = '\0';
    v->u.s.len = len;
    return v;
}

celeriac_value *celeriac_value_new_string(const char *s)
{
    return new_blob(CELERIAC_STRING, s ? s : "", s ? strlen(s) : 0);
}

celeriac_value *celeriac_value_new_stringn(const char *s, size_t len)
{
    return new_blob(CELERIAC_STRING, s, len);
}

celeriac_value *celeriac_value_new_bytes(const void *p, size_t len)
{
    return new_blob(CELERIAC_BYTES, p, len);
}

celeriac_value *celeriac_value_new_array(void)
{
    return new_value(CELERIAC_ARRAY);
}

celeriac_value *celeriac_value_new_object(void)
{
    return new_value(CELERIAC_OBJECT);
}

void celeriac_value_free(celeriac_value *v)
{
    if (!v || is_shared(v))
        return;
    switch (v->type) {
    case CELERIAC_STRING:
    case CELERIAC_BYTES:
        break; /* the bytes are part of the node */
    case CELERIAC_ARRAY:
        for (size_t i = 0; i < v->u.a.len; i++)
            celeriac_value_free(v->u.a.items[i]);
        free(v->u.a.items);
        break;
    case CELERIAC_OBJECT:
        for (size_t i = 0; i < v->u.o.len; i++) {
            value_key_free(v->u.o.keys[i]);
            celeriac_value_free(v->u.o.vals[i]);
        }
        free(v->u.o.keys);
        free(v->u.o.vals);
        break;
    default:
        break;
    }
    free(v);
}

int celeriac_value_append(celeriac_value *arr, celeriac_value *item)
{
    if (!arr || !item || arr->type != CELERIAC_ARRAY) {
        celeriac_value_free(item);
        return CELERIAC_EINVAL;
    }
    if (arr->u.a.len == arr->u.a.cap) {
        size_t cap = arr->u.a.cap ? arr->u.a.cap * 2 : 4;
        celeriac_value **n = cap > SIZE_MAX / sizeof *n ? NULL
                                                        : realloc(arr->u.a.items, cap * sizeof *n);
        if (!n) {
            celeriac_value_free(item);
            return CELERIAC_ENOMEM;
        }
        arr->u.a.items = n;
        arr->u.a.cap = cap;
    }
    arr->u.a.items[arr->u.a.len++] = item;
    return 0;
}

int value_object_push(celeriac_value *obj, char *key, celeriac_value *item)
{
    if (!obj || !key || !item || obj->type != CELERIAC_OBJECT) {
        value_key_free(key);
        celeriac_value_free(item);
        return CELERIAC_EINVAL;
    }
    if (obj->u.o.len == obj->u.o.cap) {
        size_t cap = obj->u.o.cap ? obj->u.o.cap * 2 : 4;
        if (cap > SIZE_MAX / sizeof(char *)) {
            value_key_free(key);
            celeriac_value_free(item);
            return CELERIAC_ENOMEM;
        }
        char **nk = realloc(obj->u.o.keys, cap * sizeof *nk);
        if (nk)
            obj->u.o.keys = nk;
        celeriac_value **nv = nk ? realloc(obj->u.o.vals, cap * sizeof *nv) : NULL;
        if (!nv) {
            value_key_free(key);
            celeriac_value_free(item);
            return CELERIAC_ENOMEM;
        }
        obj->u.o.vals = nv;
        obj->u.o.cap = cap;
    }
    obj->u.o.keys[obj->u.o.len] = key;
    obj->u.o.vals[obj->u.o.len] = item;
    obj->u.o.len++;
    return 0;
}

int celeriac_value_set(celeriac_value *obj, const char *key, celeriac_value *item)
{
    if (!obj || !key || !item || obj->type != CELERIAC_OBJECT) {
        celeriac_value_free(item);
        return CELERIAC_EINVAL;
    }
    long i = find_key(obj, key);
    if (i >= 0) {
        celeriac_value_free(obj->u.o.vals[i]);
        obj->u.o.vals[i] = item;
        return 0;
    }
    char *k = value_key_dup(key, strlen(key));
    if (!k) {
        celeriac_value_free(item);
        return CELERIAC_ENOMEM;
    }
    return value_object_push(obj, k, item);
}

celeriac_value *celeriac_value_copy(const celeriac_value *v)
{
    if (!v)
        return celeriac_value_new_null();
    celeriac_value *c = NULL;
    switch (v->type) {
    case CELERIAC_NULL:
        return celeriac_value_new_null();
    case CELERIAC_BOOL:
        return celeriac_value_new_bool(v->u.b);
    case CELERIAC_INT:
        return celeriac_value_new_int(v->u.i);
    case CELERIAC_DOUBLE:
        return celeriac_value_new_double(v->u.d);
    case CELERIAC_STRING:
    case CELERIAC_BYTES:
        return new_blob(v->type, v->u.s.p, v->u.s.len);
    case CELERIAC_ARRAY:
        c = celeriac_value_new_array();
        for (size_t i = 0; c && i < v->u.a.len; i++) {
            celeriac_value *e = celeriac_value_copy(v->u.a.items[i]);
            if (!e || celeriac_value_append(c, e) < 0) {
                celeriac_value_free(c);
                return NULL;
            }
        }
        return c;
    case CELERIAC_OBJECT:
        c = celeriac_value_new_object();
        for (size_t i = 0; c && i < v->u.o.len; i++) {
            char *k = value_key_dup(v->u.o.keys[i], strlen(v->u.o.keys[i]));
            celeriac_value *e = celeriac_value_copy(v->u.o.vals[i]);
            if (!k || !e) {
                value_key_free(k);
                celeriac_value_free(e);
                celeriac_value_free(c);
                return NULL;
            }
            if (value_object_push(c, k, e) < 0) {
                celeriac_value_free(c);
                return NULL;
            }
        }
        return c;
    }
    return NULL;
}

/* ---- JSON (through serializer_json) --------------------------------------- */

char *celeriac_value_to_json(const celeriac_value *v)
{
    char *out = NULL;
    size_t len = 0;
    if (serializer_json.encode(v, &out, &len) < 0)
        return NULL;
    return out;
}

celeriac_value *celeriac_value_from_json(const char *text, size_t len)
{
    celeriac_value *v = NULL;
    if (!text)
        return NULL;
    if (serializer_json.decode(text, len, &decode_limits_default, &v, NULL, 0) < 0)
        return NULL;
    return v;
}

/* ---- Python repr() -------------------------------------------------------- */

size_t value_double_repr(double d, char buf[32])
{
    if (isnan(d))
        return (size_t)snprintf(buf, 32, "nan");
    if (isinf(d))
        return (size_t)snprintf(buf, 32, d < 0 ? "-inf" : "inf");
    if (d == 0.0)
        return (size_t)snprintf(buf, 32, signbit(d) ? "-0.0" : "0.0");
    /* Shortest "%.*e" that reads back as d: its digits and exponent are what
     * Python's repr() uses (David Gay's shortest round trip). */
    char e[40];
    /* Reading back is monotonic in the precision (glibc rounds correctly: the
     * nearest p+1 digit decimal is no farther from d than the nearest p digit
     * one), so the shortest is found by bisection; %.16e always reads back.
     * At a power of two d's rounding interval is narrower below than above,
     * where that argument fails: those are scanned in order. */
    int lo = 0, hi = 16, exp2;
    if (frexp(d, &exp2) == 0.5 || frexp(d, &exp2) == -0.5)
        for (; lo < 16; lo++) {
            snprintf(e, sizeof e, "%.*e", lo, d);
            if (strtod(e, NULL) == d)
                break;
        }
    else
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            snprintf(e, sizeof e, "%.*e", mid, d);
            if (strtod(e, NULL) == d)
                hi = mid;
            else
                lo = mid + 1;
        }
    snprintf(e, sizeof e, "%.*e", lo, d);
    /* Split "-d.ddde+XX" into sign, digits and exponent. */
    const char *p = e;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    char dig[24];
    size_t nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < sizeof dig - 1)
            dig[nd++] = *p;
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    dig[nd] = '\0';
    int exp10 = *p == 'e' ? (int)strtol(p + 1, NULL, 10) : 0;

    char out[32];
    size_t o = 0;
#define PUT(c)                                                                 \
    do {                                                                       \
        if (o < sizeof out - 1)                                                \
            out[o++] = (c);                                                    \
    } while (0)
    if (neg)
        PUT('-');
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 < 0) {
            PUT('0');
            PUT('.');
            for (int i = 0; i < -exp10 - 1; i++)
                PUT('0');
            for (size_t i = 0; i < nd; i++)
                PUT(dig[i]);
        } else {
            for (int i = 0; i <= exp10; i++)
                PUT((size_t)i < nd ? dig[i] : '0');
            PUT('.');
            if ((size_t)exp10 + 1 < nd) {
                for (size_t i = (size_t)exp10 + 1; i < nd; i++)
                    PUT(dig[i]);
            } else {
                PUT('0');
            }
        }
    } else {
        PUT(dig[0]);
        if (nd > 1) {
            PUT('.');
            for (size_t i = 1; i < nd; i++)
                PUT(dig[i]);
        }
        char ex[16];
        snprintf(ex, sizeof ex, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        for (const char *q = ex; *q; q++)
            PUT(*q);
    }
#undef PUT
    out[o] = '\0';
    memcpy(buf, out, o + 1);
    return o;
}

struct repr_ctx {
    struct buf b;
    size_t stop; /* stop producing output past this length (0 = never) */
    int err;
};

static int repr_full(const struct repr_ctx *c)
{
    return c->err || (c->stop && c->b.len > c->stop);
}

static void repr_put(struct repr_ctx *c, const char *s, size_t n)
{
    if (c->err)
        return;
    if (buf_append(&c->b, s, n) < 0)
        c->err = CELERIAC_ENOMEM;
}

static void repr_puts(struct repr_ctx *c, const char *s)
{
    repr_put(c, s, strlen(s));
}

size_t value_utf8_next(const unsigned char *p, size_t n, unsigned *cp)
{
    unsigned c = p[0];
    size_t len;
    unsigned min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        len = 2;
        min = 0x80;
        c &= 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        min = 0x800;
        c &= 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4;
        min = 0x10000;
        c &= 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

/* Approximates Python's str.isprintable() for non-ASCII code points: the
 * separators (Z*) except space, format characters (Cf), C1 controls and
 * private use (Co) are not printable. Unassigned code points are treated as
 * printable (no Unicode database here). */
static int py_printable(unsigned cp)
{
    if (cp < 0xa1 || cp == 0xad)
        return 0;
    if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202f) ||
        (cp >= 0x205f && cp <= 0x2064) || (cp >= 0x2066 && cp <= 0x206f) || cp == 0x3000)
        return 0;
    if ((cp >= 0x600 && cp <= 0x605) || cp == 0x61c || cp == 0x6dd || cp == 0x70f ||
        cp == 0x180e || cp == 0xfeff || (cp >= 0xfff9 && cp <= 0xfffb))
        return 0;
    if ((cp >= 0xe000 && cp <= 0xf8ff) || cp >= 0xf0000 || (cp >= 0xe0000 && cp <= 0xe007f))
        return 0;
    return 1;
}

static void repr_text(struct repr_ctx *c, const char *s, size_t len, int is_bytes)
{
    const unsigned char *p = (const unsigned char *)s;
    int has_sq = memchr(s, '\'', len) != NULL, has_dq = memchr(s, '"', len) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    if (is_bytes)
        repr_put(c, "b", 1);
    repr_put(c, &q, 1);
    char esc[16];
    for (size_t i = 0; i < len && !repr_full(c);) {
        unsigned ch = p[i];
        if (ch == (unsigned char)q || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            repr_put(c, esc, 2);
            i++;
        } else if (ch == '\n') {
            repr_put(c, "\\n", 2);
            i++;
        } else if (ch == '\r') {
            repr_put(c, "\\r", 2);
            i++;
        } else if (ch == '\t') {
            repr_put(c, "\\t", 2);
            i++;
        } else if (ch < 0x20 || ch == 0x7f) {
            snprintf(esc, sizeof esc, "\\x%02x", ch);
            repr_put(c, esc, 4);
            i++;
        } else if (ch < 0x80) {
            repr_put(c, (const char *)p + i, 1);
            i++;
        } else if (is_bytes) {
            snprintf(esc, sizeof esc, "\\x%02x", ch);
            repr_put(c, esc, 4);
            i++;
        } else {
            unsigned cp;
            size_t n = value_utf8_next(p + i, len - i, &cp);
            if (n == 0) {
                snprintf(esc, sizeof esc, "\\x%02x", ch); /* not valid UTF-8 */
                repr_put(c, esc, 4);
                i++;
                continue;
            }
            if (py_printable(cp))
                repr_put(c, (const char *)p + i, n);
            else if (cp <= 0xff)
                repr_put(c, esc, (size_t)snprintf(esc, sizeof esc, "\\x%02x", cp));
            else if (cp <= 0xffff)
                repr_put(c, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", cp));
            else
                repr_put(c, esc, (size_t)snprintf(esc, sizeof esc, "\\U%08x", cp));
            i += n;
        }
    }
    repr_put(c, &q, 1);
}

static void repr_value(struct repr_ctx *c, const celeriac_value *v, unsigned depth)
{
    char num[32];
    if (repr_full(c))
        return;
    if (depth > 256) {
        repr_puts(c, "...");
        return;
    }
    switch (celeriac_value_type(v)) {
    case CELERIAC_NULL:
        repr_puts(c, "None");
        break;
    case CELERIAC_BOOL:
        repr_puts(c, v->u.b ? "True" : "False");
        break;
    case CELERIAC_INT:
        repr_put(c, num, (size_t)snprintf(num, sizeof num, "%lld", (long long)v->u.i));
        break;
    case CELERIAC_DOUBLE:
        repr_put(c, num, value_double_repr(v->u.d, num));
        break;
    case CELERIAC_STRING:
    case CELERIAC_BYTES:
        repr_text(c, v->u.s.p, v->u.s.len, v->type == CELERIAC_BYTES);
        break;
    case CELERIAC_ARRAY:
        repr_puts(c, "[");
        for (size_t i = 0; i < v->u.a.len && !repr_full(c); i++) {
            if (i)
                repr_puts(c, ", ");
            repr_value(c, v->u.a.items[i], depth + 1);
        }
        repr_puts(c, "]");
        break;
    case CELERIAC_OBJECT:
        repr_puts(c, "{");
        for (size_t i = 0; i < v->u.o.len && !repr_full(c); i++) {
            if (i)
                repr_puts(c, ", ");
            repr_text(c, v->u.o.keys[i], strlen(v->u.o.keys[i]), 0);
            repr_puts(c, ": ");
            repr_value(c, v->u.o.vals[i], depth + 1);
        }
        repr_puts(c, "}");
        break;
    }
}

/* Cuts c's text at max_len bytes (not inside a UTF-8 sequence) and appends
 * "..." when it is longer; returns the text (caller frees) or NULL. */
static char *repr_finish(struct repr_ctx *c, size_t max_len)
{
    if (c->err) {
        buf_free(&c->b);
        return NULL;
    }
    if (!c->b.p && buf_append(&c->b, "", 0) < 0)
        return NULL;
    if (max_len && c->b.len > max_len) {
        size_t cut = max_len;
        while (cut > 0 && ((unsigned char)c->b.p[cut] & 0xc0) == 0x80)
            cut--;
        c->b.len = cut;
        c->b.p[cut] = '\0';
        if (buf_append(&c->b, "...", 3) < 0) {
            buf_free(&c->b);
            return NULL;
        }
    }
    return c->b.p;
}

char *value_repr(const celeriac_value *v, size_t max_len)
{
    struct repr_ctx c = {{0}, max_len, 0};
    repr_value(&c, v, 0);
    return repr_finish(&c, max_len);
}

char *value_repr_tuple(const celeriac_value *args, size_t max_len)
{
    struct repr_ctx c = {{0}, max_len, 0};
    if (args && args->type != CELERIAC_ARRAY) {
        repr_value(&c, args, 0);
        return repr_finish(&c, max_len);
    }
    size_t n = args ? args->u.a.len : 0;
    repr_puts(&c, "(");
    for (size_t i = 0; i < n && !repr_full(&c); i++) {
        if (i)
            repr_puts(&c, ", ");
        repr_value(&c, args->u.a.items[i], 1);
    }
    if (n == 1)
        repr_puts(&c, ",");
    repr_puts(&c, ")");
    return repr_finish(&c, max_len);
}
