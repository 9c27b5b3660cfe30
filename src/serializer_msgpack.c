/* serializer_msgpack.c - owns msgpack decode (a bounded reader) and encode (the only user of msgpack-c); it does not know envelopes, tasks or content types. */
#include <msgpack.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serializer.h"
#include "value.h"

/* Why decoding does not call msgpack_unpack_next(): msgpack-c allocates the
 * element array of a container as soon as it reads the declared count (a
 * 5-byte input can declare 2^32-1 elements), and its parser stack is fixed at
 * MSGPACK_EMBED_STACK_SIZE (32) levels, below our depth cap. The reader below
 * checks every declared count against the bytes that remain and against
 * max_items before allocating, and recurses at most max_depth levels. */

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

struct reader {
    const unsigned char *p;
    size_t len, off;
    const struct decode_limits *lim;
    size_t items; /* values read so far (map keys not counted) */
    char *err;
    size_t errlen;
};

static int need(struct reader *r, size_t n)
{
    if (r->len - r->off < n) {
        set_err(r->err, r->errlen, "msgpack truncated at byte %zu", r->off);
        return CELERIAC_EPARSE;
    }
    return 0;
}

static uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Reads an n-byte big-endian unsigned length or number. */
static int read_uint(struct reader *r, int n, uint64_t *v)
{
    int rc = need(r, (size_t)n);
    if (rc < 0)
        return rc;
    *v = be(r->p + r->off, n);
    r->off += (size_t)n;
    return 0;
}

/* Header byte of a str (fixstr, str8/16/32): its length in *n. 0 if it is a
 * str header, 1 if not. */
static int str_header(struct reader *r, unsigned char h, uint64_t *n, int *rc)
{
    *rc = 0;
    if (h >= 0xa0 && h <= 0xbf)
        *n = h & 0x1f;
    else if (h == 0xd9)
        *rc = read_uint(r, 1, n);
    else if (h == 0xda)
        *rc = read_uint(r, 2, n);
    else if (h == 0xdb)
        *rc = read_uint(r, 4, n);
    else
        return 1;
    if (*rc == 0)
        *rc = need(r, *n);
    return 0;
}

static int check_utf8(struct reader *r, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned cp;
        size_t k = value_utf8_next(s + i, n - i, &cp);
        if (k == 0) {
            set_err(r->err, r->errlen, "msgpack str is not valid UTF-8 at byte %zu",
                    (size_t)(s + i - r->p));
            return CELERIAC_EPARSE;
        }
        i += k;
    }
    return 0;
}

static int read_value(struct reader *r, unsigned depth, celeriac_value **out);

/* Declared element count of a container, checked against what is left. */
static int check_count(struct reader *r, uint64_t n, uint64_t per_elem, unsigned depth)
{
    if (depth + 1 > r->lim->max_depth) {
        set_err(r->err, r->errlen, "msgpack nested deeper than %u levels", r->lim->max_depth);
        return CELERIAC_EDEPTH;
    }
    if (n > (r->len - r->off) / per_elem) {
        set_err(r->err, r->errlen, "msgpack container declares %llu elements but only %zu bytes remain",
                (unsigned long long)n, r->len - r->off);
        return CELERIAC_EPARSE;
    }
    if (n > r->lim->max_items - r->items) {
        set_err(r->err, r->errlen, "msgpack has more than %zu elements", r->lim->max_items);
        return CELERIAC_ECOUNT;
    }
    return 0;
}

static int read_array(struct reader *r, uint64_t n, unsigned depth, celeriac_value **out)
{
    int rc = check_count(r, n, 1, depth);
    if (rc < 0)
        return rc;
    celeriac_value *a = celeriac_value_new_array();
    if (!a)
        return CELERIAC_ENOMEM;
    if (n) {
        a->u.a.items = malloc((size_t)n * sizeof *a->u.a.items);
        if (!a->u.a.items) {
            free(a);
            return CELERIAC_ENOMEM;
        }
        a->u.a.cap = (size_t)n;
    }
    for (uint64_t i = 0; i < n; i++) {
        celeriac_value *e;
        rc = read_value(r, depth + 1, &e);
        if (rc < 0) {
            celeriac_value_free(a);
            return rc;
        }
        a->u.a.items[a->u.a.len++] = e;
    }
    *out = a;
    return 0;
}

static uint64_t hash_key(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Finds key among the first o->u.o.len members; a hash table of member
 * indices (size tsize, a power of two, slots hold index + 1) keeps maps with
 * many keys linear. Returns the member index or -1, and the free slot. */
static long map_find(const celeriac_value *o, size_t *table, size_t tsize, const char *key,
                     size_t *slot)
{
    if (!table) {
        for (size_t i = 0; i < o->u.o.len; i++)
            if (strcmp(o->u.o.keys[i], key) == 0)
                return (long)i;
        return -1;
    }
    size_t s = (size_t)hash_key(key) & (tsize - 1);
    while (table[s]) {
        size_t i = table[s] - 1;
        if (strcmp(o->u.o.keys[i], key) == 0)
            return (long)i;
        s = (s + 1) & (tsize - 1);
    }
    *slot = s;
    return -1;
}

static int read_map(struct reader *r, uint64_t n, unsigned depth, celeriac_value **out)
{
    int rc = check_count(r, n, 2, depth);
    if (rc < 0)
        return rc;
    celeriac_value *o = celeriac_value_new_object();
    size_t *table = NULL, tsize = 0;
    if (!o)
        return CELERIAC_ENOMEM;
    if (n) {
        o->u.o.keys = malloc((size_t)n * sizeof *o->u.o.keys);
        o->u.o.vals = malloc((size_t)n * sizeof *o->u.o.vals);
        if (!o->u.o.keys || !o->u.o.vals) {
            rc = CELERIAC_ENOMEM;
            goto out;
        }
        o->u.o.cap = (size_t)n;
    }
    if (n > 8) {
        for (tsize = 16; tsize < 2 * n; tsize *= 2)
            ;
        table = calloc(tsize, sizeof *table);
        if (!table) {
            rc = CELERIAC_ENOMEM;
            goto out;
        }
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t klen;
        if ((rc = need(r, 1)) < 0)
            goto out;
        unsigned char h = r->p[r->off++];
        if (str_header(r, h, &klen, &rc)) {
            set_err(r->err, r->errlen, "msgpack map key at byte %zu is not a str", r->off - 1);
            rc = CELERIAC_EPARSE;
            goto out;
        }
        if (rc < 0)
            goto out;
        const unsigned char *k = r->p + r->off;
        if ((rc = check_utf8(r, k, (size_t)klen)) < 0)
            goto out;
        if (memchr(k, 0, (size_t)klen)) {
            set_err(r->err, r->errlen, "msgpack map key contains a NUL byte");
            rc = CELERIAC_EPARSE;
            goto out;
        }
        r->off += (size_t)klen;
        char *key = value_key_dup((const char *)k, (size_t)klen);
        if (!key) {
            rc = CELERIAC_ENOMEM;
            goto out;
        }
        celeriac_value *val;
        if ((rc = read_value(r, depth + 1, &val)) < 0) {
            value_key_free(key);
            goto out;
        }
        size_t slot = 0;
        long dup = map_find(o, table, tsize, key, &slot);
        if (dup >= 0) { /* Python dict semantics: the last value wins */
            value_key_free(key);
            celeriac_value_free(o->u.o.vals[dup]);
            o->u.o.vals[dup] = val;
            continue;
        }
        if (table)
            table[slot] = o->u.o.len + 1;
        o->u.o.keys[o->u.o.len] = key;
        o->u.o.vals[o->u.o.len] = val;
        o->u.o.len++;
    }
out:
    free(table);
    if (rc < 0) {
        celeriac_value_free(o);
        return rc;
    }
    *out = o;
    return 0;
}

/* A str or bin of n bytes at the read position. */
static int make_blob(struct reader *r, uint64_t n, celeriac_type t, celeriac_value **out)
{
    int rc = need(r, n);
    if (rc < 0)
        return rc;
    const unsigned char *s = r->p + r->off;
    if (t == CELERIAC_STRING && (rc = check_utf8(r, s, (size_t)n)) < 0)
        return rc;
    r->off += (size_t)n;
    *out = t == CELERIAC_STRING ? celeriac_value_new_stringn((const char *)s, (size_t)n)
                                : celeriac_value_new_bytes(s, (size_t)n);
    return *out ? 0 : CELERIAC_ENOMEM;
}

static int read_blob(struct reader *r, int nbytes, celeriac_type t, celeriac_value **out)
{
    uint64_t n;
    int rc = read_uint(r, nbytes, &n);
    return rc < 0 ? rc : make_blob(r, n, t, out);
}

static int read_value(struct reader *r, unsigned depth, celeriac_value **out)
{
    *out = NULL;
    int rc = need(r, 1);
    if (rc < 0)
        return rc;
    if (++r->items > r->lim->max_items) {
        set_err(r->err, r->errlen, "msgpack has more than %zu elements", r->lim->max_items);
        return CELERIAC_ECOUNT;
    }
    unsigned char h = r->p[r->off++];
    uint64_t u;
    if (h <= 0x7f) {
        *out = celeriac_value_new_int(h);
    } else if (h >= 0xe0) {
        *out = celeriac_value_new_int((int8_t)h);
    } else if (h >= 0x80 && h <= 0x8f) {
        return read_map(r, h & 0x0f, depth, out);
    } else if (h >= 0x90 && h <= 0x9f) {
        return read_array(r, h & 0x0f, depth, out);
    } else if (h >= 0xa0 && h <= 0xbf) {
        return make_blob(r, h & 0x1f, CELERIAC_STRING, out);
    } else {
        switch (h) {
        case 0xc0:
            *out = celeriac_value_new_null();
            break;
        case 0xc2:
        case 0xc3:
            *out = celeriac_value_new_bool(h == 0xc3);
            break;
        case 0xc4:
            return read_blob(r, 1, CELERIAC_BYTES, out);
        case 0xc5:
            return read_blob(r, 2, CELERIAC_BYTES, out);
        case 0xc6:
            return read_blob(r, 4, CELERIAC_BYTES, out);
        case 0xca: {
            if ((rc = read_uint(r, 4, &u)) < 0)
                return rc;
            uint32_t bits = (uint32_t)u;
            float f;
            memcpy(&f, &bits, sizeof f);
            *out = celeriac_value_new_double(f);
            break;
        }
        case 0xcb: {
            if ((rc = read_uint(r, 8, &u)) < 0)
                return rc;
            double d;
            memcpy(&d, &u, sizeof d);
            *out = celeriac_value_new_double(d);
            break;
        }
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf:
            if ((rc = read_uint(r, 1 << (h - 0xcc), &u)) < 0)
                return rc;
            *out = u > INT64_MAX ? celeriac_value_new_double((double)u)
                                 : celeriac_value_new_int((int64_t)u);
            break;
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3: {
            int n = 1 << (h - 0xd0);
            if ((rc = read_uint(r, n, &u)) < 0)
                return rc;
            /* Sign-extend the n-byte two's complement value. */
            int64_t s = n == 8 ? (int64_t)u
                               : (int64_t)(u ^ (1ULL << (8 * n - 1))) - (int64_t)(1ULL << (8 * n - 1));
            *out = celeriac_value_new_int(s);
            break;
        }
        case 0xd9:
            return read_blob(r, 1, CELERIAC_STRING, out);
        case 0xda:
            return read_blob(r, 2, CELERIAC_STRING, out);
        case 0xdb:
            return read_blob(r, 4, CELERIAC_STRING, out);
        case 0xdc:
        case 0xdd:
            if ((rc = read_uint(r, h == 0xdc ? 2 : 4, &u)) < 0)
                return rc;
            return read_array(r, u, depth, out);
        case 0xde:
        case 0xdf:
            if ((rc = read_uint(r, h == 0xde ? 2 : 4, &u)) < 0)
                return rc;
            return read_map(r, u, depth, out);
        case 0xc7:
        case 0xc8:
        case 0xc9:
        case 0xd4:
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8:
            set_err(r->err, r->errlen, "msgpack ext type at byte %zu is not supported", r->off - 1);
            return CELERIAC_EPARSE;
        default: /* 0xc1 is never used */
            set_err(r->err, r->errlen, "invalid msgpack type byte 0x%02x at byte %zu", h, r->off - 1);
            return CELERIAC_EPARSE;
        }
    }
    return *out ? 0 : CELERIAC_ENOMEM;
}

static int msgpack_decode(const void *buf, size_t len, const struct decode_limits *lim,
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
        set_err(err, errlen, "msgpack document of %zu bytes exceeds the %zu byte limit", len,
                lim->max_bytes);
        return CELERIAC_ETOOBIG;
    }
    struct reader r = {buf, len, 0, lim, 0, err, errlen};
    int rc = read_value(&r, 0, out);
    if (rc == 0 && r.off != len) {
        set_err(err, errlen, "%zu trailing bytes after the msgpack document", len - r.off);
        celeriac_value_free(*out);
        *out = NULL;
        rc = CELERIAC_EPARSE;
    }
    if (rc == CELERIAC_ENOMEM)
        set_err(err, errlen, "out of memory decoding msgpack");
    return rc;
}

/* ---- Encode (msgpack-c) ----------------------------------------------------
 * str for STRING, bin for BYTES, as Python's msgpack with use_bin_type=True. */

static int pack(msgpack_packer *pk, const celeriac_value *v, unsigned depth)
{
    if (depth > 10000)
        return CELERIAC_EDEPTH;
    int e = 0;
    switch (celeriac_value_type(v)) {
    case CELERIAC_NULL:
        e = msgpack_pack_nil(pk);
        break;
    case CELERIAC_BOOL:
        e = v->u.b ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        break;
    case CELERIAC_INT:
        e = msgpack_pack_int64(pk, v->u.i);
        break;
    case CELERIAC_DOUBLE:
        e = msgpack_pack_double(pk, v->u.d);
        break;
    case CELERIAC_STRING:
        if (v->u.s.len > UINT32_MAX)
            return CELERIAC_ETOOBIG;
        e = msgpack_pack_str(pk, v->u.s.len) || msgpack_pack_str_body(pk, v->u.s.p, v->u.s.len);
        break;
    case CELERIAC_BYTES:
        if (v->u.s.len > UINT32_MAX)
            return CELERIAC_ETOOBIG;
        e = msgpack_pack_bin(pk, v->u.s.len) || msgpack_pack_bin_body(pk, v->u.s.p, v->u.s.len);
        break;
    case CELERIAC_ARRAY:
        if (v->u.a.len > UINT32_MAX)
            return CELERIAC_ETOOBIG;
        if (msgpack_pack_array(pk, v->u.a.len))
            return CELERIAC_ENOMEM;
        for (size_t i = 0; i < v->u.a.len; i++) {
            int rc = pack(pk, v->u.a.items[i], depth + 1);
            if (rc < 0)
                return rc;
        }
        break;
    case CELERIAC_OBJECT:
        if (v->u.o.len > UINT32_MAX)
            return CELERIAC_ETOOBIG;
        if (msgpack_pack_map(pk, v->u.o.len))
            return CELERIAC_ENOMEM;
        for (size_t i = 0; i < v->u.o.len; i++) {
            size_t kl = strlen(v->u.o.keys[i]);
            if (msgpack_pack_str(pk, kl) || msgpack_pack_str_body(pk, v->u.o.keys[i], kl))
                return CELERIAC_ENOMEM;
            int rc = pack(pk, v->u.o.vals[i], depth + 1);
            if (rc < 0)
                return rc;
        }
        break;
    }
    return e ? CELERIAC_ENOMEM : 0;
}

static int msgpack_encode(const celeriac_value *v, char **out, size_t *len)
{
    if (!out)
        return CELERIAC_EINVAL;
    *out = NULL;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int rc = pack(&pk, v, 0);
    if (rc == 0) {
        *out = malloc(sb.size + 1);
        if (!*out) {
            rc = CELERIAC_ENOMEM;
        } else {
            if (sb.size)
                memcpy(*out, sb.data, sb.size);
            (*out)[sb.size] = '\0';
            if (len)
                *len = sb.size;
        }
    }
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

const struct serializer serializer_msgpack = {
    .name = "msgpack",
    .content_type = "application/x-msgpack",
    .decode = msgpack_decode,
    .encode = msgpack_encode,
};
