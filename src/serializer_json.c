/* serializer_json.c - owns JSON decode (the only user of yajl) and a Python-json-like encoder; it does not know envelopes, tasks or content types. */
#include <errno.h>
#include <math.h>
#include <yajl/yajl_parse.h>
#include <stdarg.h>
#include <stdint.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
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
 * A hostile document costs little: the size is checked first, then yajl
 * parses in one pass and its events build the values, checking the depth
 * and element caps as they arrive, so parsing stops at the first value past
 * a cap with nothing more allocated. NaN/Infinity and integers beyond int64
 * are malformed. (yajl rather than jansson: 3 us instead of 20 us to parse a
 * task envelope, and no second tree to convert.) */

/* Builds celeriac values straight from yajl's parse events (no second tree):
 * a stack of open containers, each object with the key waiting for its value. */
struct frame {
    celeriac_value *v;  /* owned while open */
    char *key;          /* owned: object key waiting for its value */
};

struct conv {
    const struct decode_limits *lim;
    size_t items;
    int rc;             /* first error (yajl is stopped by returning 0) */
    char *err;
    size_t errlen;
    struct frame *stack;
    size_t depth, cap;
    celeriac_value *root;
};

static int conv_fail(struct conv *c, int rc, const char *what)
{
    if (c->rc == 0) {
        c->rc = rc;
        if (what)
            set_err(c->err, c->errlen, "%s", what);
    }
    return 0;
}

/* Duplicate keys: the last value wins, at the place of the first, as in
 * Python's json (and jansson). Small objects are searched as keys arrive;
 * larger ones are checked once when they close (see dedupe()). */
#define DEDUPE_INLINE_MAX 32

static int add_value(struct conv *c, celeriac_value *v)
{
    if (!v)
        return conv_fail(c, CELERIAC_ENOMEM, "out of memory decoding JSON");
    if (c->depth == 0) {
        c->root = v;
        return 1;
    }
    struct frame *f = &c->stack[c->depth - 1];
    if (f->v->type == CELERIAC_ARRAY) {
        if (celeriac_value_append(f->v, v) < 0)
            return conv_fail(c, CELERIAC_ENOMEM, "out of memory decoding JSON");
        return 1;
    }
    char *key = f->key;
    f->key = NULL;
    if (!key) {
        celeriac_value_free(v);
        return conv_fail(c, CELERIAC_EPARSE, "malformed JSON: object value without a key");
    }
    if (f->v->u.o.len < DEDUPE_INLINE_MAX)
        for (size_t i = 0; i < f->v->u.o.len; i++)
            if (f->v->u.o.keys[i][0] == key[0] && strcmp(f->v->u.o.keys[i], key) == 0) {
                celeriac_value_free(f->v->u.o.vals[i]);
                f->v->u.o.vals[i] = v;
                value_key_free(key);
                return 1;
            }
    if (value_object_push(f->v, key, v) < 0)
        return conv_fail(c, CELERIAC_ENOMEM, "out of memory decoding JSON");
    return 1;
}

static int count_item(struct conv *c)
{
    if (++c->items > c->lim->max_items) {
        char msg[96];
        snprintf(msg, sizeof msg, "JSON has more than %zu elements", c->lim->max_items);
        return conv_fail(c, CELERIAC_ECOUNT, msg);
    }
    return 1;
}

static int on_null(void *ud)
{
    struct conv *c = ud;
    return count_item(c) && add_value(c, celeriac_value_new_null());
}

static int on_bool(void *ud, int b)
{
    struct conv *c = ud;
    return count_item(c) && add_value(c, celeriac_value_new_bool(b));
}

/* Integers that fit int64 stay integers; beyond, and NaN/Infinity (which yajl
 * does not accept at all), the document is malformed, as before. */
static int on_number(void *ud, const char *s, size_t len)
{
    struct conv *c = ud;
    if (!count_item(c))
        return 0;
    char tmp[64];
    char *text = len < sizeof tmp ? tmp : malloc(len + 1);
    if (!text)
        return conv_fail(c, CELERIAC_ENOMEM, "out of memory decoding JSON");
    memcpy(text, s, len);
    text[len] = 0;
    int is_int = strcspn(text, ".eE") == len;
    char *end;
    errno = 0;
    celeriac_value *v = NULL;
    if (is_int) {
        long long i = strtoll(text, &end, 10);
        if (errno == 0 && *end == 0)
            v = celeriac_value_new_int((int64_t)i);
    } else {
        double d = strtod(text, &end);
        if (errno == 0 && *end == 0)
            v = celeriac_value_new_double(d);
        else if (errno == ERANGE && *end == 0 && (d == 0 || d == HUGE_VAL || d == -HUGE_VAL))
            v = d == 0 ? celeriac_value_new_double(d) : NULL; /* underflow reads as 0 */
    }
    int ok = v != NULL || errno == 0;
    if (text != tmp)
        free(text);
    if (!v)
        return conv_fail(c, ok ? CELERIAC_ENOMEM : CELERIAC_EPARSE,
                         ok ? "out of memory decoding JSON"
                            : "malformed JSON: number out of range (integers are limited to "
                              "64 bits)");
    return add_value(c, v);
}

static int on_string(void *ud, const unsigned char *s, size_t len)
{
    struct conv *c = ud;
    return count_item(c) && add_value(c, celeriac_value_new_stringn((const char *)s, len));
}

static int on_key(void *ud, const unsigned char *s, size_t len)
{
    struct conv *c = ud;
    if (memchr(s, 0, len))
        return conv_fail(c, CELERIAC_EPARSE, "malformed JSON: NUL character in an object key");
    struct frame *f = &c->stack[c->depth - 1];
    value_key_free(f->key);
    if (!(f->key = value_key_dup((const char *)s, len)))
        return conv_fail(c, CELERIAC_ENOMEM, "out of memory decoding JSON");
    return 1;
}

static int open_container(struct conv *c, celeriac_value *v)
{
    if (!v)
        return conv_fail(c, CELERIAC_ENOMEM, "out of memory decoding JSON");
    if (c->depth + 1 > c->lim->max_depth) {
        celeriac_value_free(v);
        char msg[64];
        snprintf(msg, sizeof msg, "JSON nested deeper than %u levels", c->lim->max_depth);
        return conv_fail(c, CELERIAC_EDEPTH, msg);
    }
    if (c->depth == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        struct frame *st = realloc(c->stack, cap * sizeof *st);
        if (!st) {
            celeriac_value_free(v);
            return conv_fail(c, CELERIAC_ENOMEM, "out of memory decoding JSON");
        }
        c->stack = st;
        c->cap = cap;
    }
    c->stack[c->depth++] = (struct frame){v, NULL};
    return 1;
}

static int on_start_map(void *ud)
{
    struct conv *c = ud;
    return count_item(c) && open_container(c, celeriac_value_new_object());
}

static int on_start_array(void *ud)
{
    struct conv *c = ud;
    return count_item(c) && open_container(c, celeriac_value_new_array());
}

static int on_end_array(void *ud)
{
    struct conv *c = ud;
    celeriac_value *v = c->stack[--c->depth].v;
    return add_value(c, v);
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(**(char *const *const *)a, **(char *const *const *)b);
}

/* Objects too big for the inline search: sort key pointers, and only when
 * two are equal rebuild keeping the last value at the first place. */
static int dedupe(struct conv *c, celeriac_value *o)
{
    size_t n = o->u.o.len;
    if (n <= DEDUPE_INLINE_MAX)
        return 1;
    char ***idx = malloc(n * sizeof *idx);
    if (!idx)
        return conv_fail(c, CELERIAC_ENOMEM, "out of memory decoding JSON");
    for (size_t i = 0; i < n; i++)
        idx[i] = &o->u.o.keys[i];
    qsort(idx, n, sizeof *idx, key_cmp);
    int dup = 0;
    for (size_t i = 1; i < n && !dup; i++)
        dup = strcmp(*idx[i - 1], *idx[i]) == 0;
    free(idx);
    if (!dup)
        return 1;
    celeriac_value *fresh = celeriac_value_new_object();
    if (!fresh)
        return conv_fail(c, CELERIAC_ENOMEM, "out of memory decoding JSON");
    for (size_t i = 0; i < n; i++) {
        if (celeriac_value_set(fresh, o->u.o.keys[i], o->u.o.vals[i]) < 0) {
            /* The value is freed by celeriac_value_set on failure. */
            o->u.o.vals[i] = NULL;
            celeriac_value_free(fresh);
            return conv_fail(c, CELERIAC_ENOMEM, "out of memory decoding JSON");
        }
        o->u.o.vals[i] = NULL;
    }
    /* Swap the members in; fresh leaves with the old keys (values moved). */
    celeriac_value tmp = *o;
    *o = *fresh;
    *fresh = tmp;
    celeriac_value_free(fresh);
    return 1;
}

static int unwrap_typed(struct conv *c, celeriac_value *o, celeriac_value **out);

static int on_end_map(void *ud)
{
    struct conv *c = ud;
    struct frame *f = &c->stack[--c->depth];
    celeriac_value *v = f->v;
    value_key_free(f->key);
    f->key = NULL;
    if (!dedupe(c, v)) {
        celeriac_value_free(v);
        return 0;
    }
    celeriac_value *typed = NULL;
    int rc = unwrap_typed(c, v, &typed);
    if (rc < 0) {
        celeriac_value_free(v);
        return conv_fail(c, rc, NULL);
    }
    if (typed) {
        celeriac_value_free(v);
        v = typed;
    }
    return add_value(c, v);
}

static const yajl_callbacks conv_callbacks = {
    .yajl_null = on_null,
    .yajl_boolean = on_bool,
    .yajl_number = on_number,
    .yajl_string = on_string,
    .yajl_start_map = on_start_map,
    .yajl_map_key = on_key,
    .yajl_end_map = on_end_map,
    .yajl_start_array = on_start_array,
    .yajl_end_array = on_end_array,
};

/* kombu >= 5.3 wraps non-JSON types as {"__type__": t, "__value__": v}. For
 * an object of exactly that shape with a known t, stores the unwrapped value
 * in *out (NULL when o is an ordinary object). Negative on a bad value. */
static int unwrap_typed(struct conv *c, celeriac_value *o, celeriac_value **out)
{
    static const char *const text_types[] = {"datetime", "date", "time", "decimal", "bytes", "uuid"};
    *out = NULL;
    if (o->u.o.len != 2)
        return 0;
    const char *type = value_get_str(o, "__type__");
    const celeriac_value *v = celeriac_value_get(o, "__value__");
    if (!type || !v)
        return 0;
    size_t vlen = 0;
    const char *vs = celeriac_value_type(v) == CELERIAC_STRING ? celeriac_value_string(v, &vlen)
                                                                : NULL;
    if (strcmp(type, "base64") == 0) {
        if (!vs)
            return 0;
        unsigned char *raw = NULL;
        size_t rawlen = 0;
        int rc = codec_base64_decode(vs, vlen, c->lim->max_bytes, &raw, &rawlen);
        if (rc < 0) {
            set_err(c->err, c->errlen, "bad base64 text in a kombu {\"__type__\": \"base64\"} value");
            return rc == CELERIAC_ETOOBIG ? rc : CELERIAC_EPARSE;
        }
        *out = celeriac_value_new_bytes(raw, rawlen);
        free(raw);
        return *out ? 0 : CELERIAC_ENOMEM;
    }
    for (size_t i = 0; i < sizeof text_types / sizeof *text_types; i++) {
        if (strcmp(type, text_types[i]) != 0)
            continue;
        if (vs) {
            *out = celeriac_value_new_stringn(vs, vlen);
            return *out ? 0 : CELERIAC_ENOMEM;
        }
        /* uuid as {"hex": "<32 hex digits>"}: the canonical 8-4-4-4-12 text,
         * which is what str(uuid) gives and what kombu 5.2 sent. */
        size_t hlen = 0;
        const char *h = celeriac_value_type(v) == CELERIAC_OBJECT ? value_get_str(v, "hex") : NULL;
        if (h)
            celeriac_value_string(celeriac_value_get(v, "hex"), &hlen);
        if (strcmp(type, "uuid") != 0 || !h || hlen != 32 ||
            strspn(h, "0123456789abcdefABCDEF") != 32)
            return 0;
        char u[37];
        size_t k = 0;
        for (int j = 0; j < 32; j++) {
            if (j == 8 || j == 12 || j == 16 || j == 20)
                u[k++] = '-';
            char ch = h[j];
            u[k++] = ch >= 'A' && ch <= 'F' ? (char)(ch - 'A' + 'a') : ch;
        }
        u[k] = '\0';
        *out = celeriac_value_new_string(u);
        return *out ? 0 : CELERIAC_ENOMEM;
    }
    return 0;
}

/* yajl's own memory (its handle, lexer, buffers and state stack: a dozen
 * allocations per document, freed again at its end) comes from one scratch
 * block per thread, reused by every parse instead of going through malloc.
 * A request that does not fit goes to malloc; a parse that starts while
 * another one on the same thread is running (none does today) uses malloc
 * throughout. Each piece has its size in front of it, for realloc. */
enum { SCRATCH_BYTES = 16384, SCRATCH_ALIGN = 16 };
static _Thread_local struct {
    size_t used;
    int busy;
    _Alignas(SCRATCH_ALIGN) unsigned char mem[SCRATCH_BYTES];
} scratch;

static int in_scratch(const void *p)
{
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)scratch.mem;
    return a >= lo && a < lo + SCRATCH_BYTES;
}

static void *scratch_malloc(void *ctx, size_t n)
{
    (void)ctx;
    size_t need = (n + SCRATCH_ALIGN - 1) / SCRATCH_ALIGN * SCRATCH_ALIGN + SCRATCH_ALIGN;
    if (n > SCRATCH_BYTES || need > SCRATCH_BYTES - scratch.used)
        return malloc(n);
    unsigned char *p = scratch.mem + scratch.used + SCRATCH_ALIGN;
    memcpy(p - sizeof(size_t), &n, sizeof n);
    scratch.used += need;
    return p;
}

static void scratch_free(void *ctx, void *p)
{
    (void)ctx;
    if (!in_scratch(p))
        free(p); /* scratch pieces go when the parse ends */
}

static void *scratch_realloc(void *ctx, void *p, size_t n)
{
    if (!p)
        return scratch_malloc(ctx, n);
    if (!in_scratch(p))
        return realloc(p, n);
    size_t old;
    memcpy(&old, (unsigned char *)p - sizeof(size_t), sizeof old);
    if (n <= old)
        return p;
    void *q = scratch_malloc(ctx, n);
    if (q)
        memcpy(q, p, old);
    return q;
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
    struct conv c = {.lim = lim, .err = err, .errlen = errlen};
    yajl_alloc_funcs scratch_funcs = {scratch_malloc, scratch_realloc, scratch_free, NULL};
    int own_scratch = !scratch.busy;
    if (own_scratch) {
        scratch.busy = 1;
        scratch.used = 0;
    }
    yajl_handle h = yajl_alloc(&conv_callbacks, own_scratch ? &scratch_funcs : NULL, &c);
    if (!h) {
        if (own_scratch)
            scratch.busy = 0;
        return CELERIAC_ENOMEM;
    }
    /* Strict JSON: one document, UTF-8 checked, no comments. */
    yajl_status st = yajl_parse(h, buf ? buf : (const unsigned char *)"", len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st != yajl_status_ok && c.rc == 0) {
        c.rc = CELERIAC_EPARSE;
        unsigned char *msg = yajl_get_error(h, 0, buf, len);
        set_err(err, errlen, "malformed JSON at byte %zu: %s", yajl_get_bytes_consumed(h),
                msg ? (const char *)msg : "parse error");
        if (msg)
            yajl_free_error(h, msg);
    } else if (c.rc == 0 && !c.root) {
        c.rc = CELERIAC_EPARSE;
        set_err(err, errlen, "malformed JSON: empty document");
    }
    yajl_free(h);
    if (own_scratch)
        scratch.busy = 0;
    /* Whatever was open when parsing stopped. */
    while (c.depth > 0) {
        struct frame *f = &c.stack[--c.depth];
        value_key_free(f->key);
        celeriac_value_free(f->v);
    }
    free(c.stack);
    if (c.rc < 0) {
        celeriac_value_free(c.root);
        return c.rc;
    }
    *out = c.root;
    return 0;
}

/* ---- Lifting one long string out ----------------------------------------
 * A kombu envelope is mostly its base64 body: a 10 KB document makes a 14 KB
 * string that the parser would check byte by byte (twice: in the main
 * process and in the pool process). A top-level string member that is plain
 * (printable ASCII, no escapes; base64 always is) is found by a structural
 * scan instead, checked sixteen bytes at a time and copied; the parser sees
 * the rest with "" in its place. Anything unusual (no object, escapes in a
 * top-level key, the key twice, a short or non-plain value) takes the plain
 * decode, and so does any error, so results and messages are the same. */

#define LIFT_MIN_BYTES 256

static size_t skip_ws(const char *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* s[i] is '"': the index after the closing quote, 0 if there is none. *plain
 * says whether every byte between is printable ASCII other than '\'. */
static size_t scan_string(const char *s, size_t i, size_t n, int *plain)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    *plain = 1;
    i++;
    /* Sixteen (else eight) bytes at a time while none is '"', '\', a control
     * or non-ASCII. */
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                  space = _mm_set1_epi8(0x20);
    while (i + 16 <= n) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash));
        hit = _mm_or_si128(hit, _mm_cmpgt_epi8(space, x)); /* signed: 0x80..0xff too */
        if (_mm_movemask_epi8(hit))
            break;
        i += 16;
    }
#endif
    while (i + 8 <= n) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
        uint64_t hit = ((q - ones) & ~q) | ((b - ones) & ~b) | ((x - ones * 0x20) & ~x) | x;
        if (hit & highs)
            break;
        i += 8;
    }
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"')
            return i + 1;
        if (c == '\\') {
            *plain = 0;
            i++;
        } else if (c < 0x20 || c >= 0x80) {
            *plain = 0;
        }
    }
    return 0;
}

/* The index after the value starting at s[i], 0 if it does not end. Only
 * structure is followed (strings, brackets); the parser checks the rest. */
static size_t skip_value(const char *s, size_t i, size_t n)
{
    size_t depth = 0;
    int plain;
    while (i < n) {
        char c = s[i];
        if (c == '"') {
            if (!(i = scan_string(s, i, n, &plain)))
                return 0;
        } else if (c == '{' || c == '[') {
            depth++;
            i++;
            continue;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                return i; /* the end of the enclosing object */
            depth--;
            i++;
        } else if (depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r')) {
            return i;
        } else {
            i++;
            continue;
        }
        if (depth == 0)
            return i;
    }
    return depth == 0 ? i : 0;
}

int json_find_plain_member(const char *text, size_t n, const char *key, size_t *off,
                           size_t *vlen)
{
    size_t klen = strlen(key), i = skip_ws(text, 0, n);
    int found = 0, plain;
    if (i >= n || text[i] != '{')
        return 0;
    i = skip_ws(text, i + 1, n);
    while (i < n && text[i] == '"') {
        size_t kstart = i + 1, kend = scan_string(text, i, n, &plain);
        if (!kend || !plain)
            return 0;
        int match = kend - 1 - kstart == klen && memcmp(text + kstart, key, klen) == 0;
        i = skip_ws(text, kend, n);
        if (i >= n || text[i] != ':')
            return 0;
        i = skip_ws(text, i + 1, n);
        if (match) {
            if (found || i >= n || text[i] != '"')
                return 0;
            size_t end = scan_string(text, i, n, &plain);
            if (!end || !plain || end - i - 2 < LIFT_MIN_BYTES)
                return 0;
            *off = i + 1;
            *vlen = end - i - 2;
            found = 1;
            i = end;
        } else if (!(i = skip_value(text, i, n))) {
            return 0;
        }
        i = skip_ws(text, i, n);
        if (i < n && text[i] == ',')
            i = skip_ws(text, i + 1, n);
        else
            break;
    }
    return found;
}

int json_decode_lifting(const void *buf, size_t len, const char *key,
                        const struct decode_limits *lim, celeriac_value **out, char *err,
                        size_t errlen, struct json_lifted *where)
{
    size_t off = 0, vlen = 0;
    if (where)
        where->found = 0;
    if (!buf || !out || !key || (lim && len > lim->max_bytes) ||
        !json_find_plain_member(buf, len, key, &off, &vlen))
        return json_decode(buf, len, lim, out, err, errlen);
    /* The text with the value's quotes and content replaced by "". */
    size_t rest = len - vlen;
    char *copy = malloc(rest);
    if (!copy)
        return CELERIAC_ENOMEM;
    memcpy(copy, buf, off);
    memcpy(copy + off, (const char *)buf + off + vlen, len - off - vlen);
    celeriac_value *v = NULL, *s = NULL;
    int rc = json_decode(copy, rest, lim, &v, NULL, 0);
    free(copy);
    if (rc == 0 && v->type != CELERIAC_OBJECT) {
        celeriac_value_free(v); /* a {"__type__": ...} form: leave it to the plain decode */
        rc = CELERIAC_EPARSE;
    }
    if (rc < 0) /* the plain decode says what is wrong, where */
        return json_decode(buf, len, lim, out, err, errlen);
    if (where) {
        where->found = 1;
        where->off = off;
        where->len = vlen;
        *out = v;
        return 0;
    }
    if (!(s = celeriac_value_new_stringn((const char *)buf + off, vlen)) ||
        celeriac_value_set(v, key, s) < 0) {
        celeriac_value_free(v);
        return CELERIAC_ENOMEM; /* celeriac_value_set() frees s on failure */
    }
    *out = v;
    return 0;
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
    case CELERIAC_INT: {
        /* Digits from the end: snprintf was a visible part of encoding results. */
        uint64_t u = v->u.i < 0 ? 0 - (uint64_t)v->u.i : (uint64_t)v->u.i;
        char *p = num + sizeof num;
        do
            *--p = (char)('0' + u % 10);
        while ((u /= 10) != 0);
        if (v->u.i < 0)
            *--p = '-';
        return buf_append(b, p, (size_t)(num + sizeof num - p));
    }
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
