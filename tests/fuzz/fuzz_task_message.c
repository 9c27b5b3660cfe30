/* fuzz_task_message.c - libFuzzer target for the pure decoders: task_message_decode() (and the packed hand-off to pool processes), the JSON and msgpack serializers, base64 and decompression.
 *
 * Run (clang only):
 *   CC=clang cmake -S . -B /tmp/build-fuzz -DCELERIAC_FUZZ=ON -DCELERIAC_ASAN=ON \
 *       -DCELERIAC_UBSAN=ON -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link
 *   cmake --build /tmp/build-fuzz --target fuzz_task_message
 *   mkdir -p /tmp/corpus && cp protocol/fixtures/task-*.json /tmp/corpus/
 *   /tmp/build-fuzz/fuzz_task_message -max_total_time=60 -rss_limit_mb=1024 /tmp/corpus
 * (-fsanitize=fuzzer-no-link gives libFuzzer coverage of the library code,
 * not only of this file.) Small caps keep each run fast; they are what the
 * worker's config allows to be lowered to. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "serializer.h"
#include "task_message.h"
#include "util.h"
#include "value.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct task_message_limits tlim = {
        .max_message_bytes = 1 << 20, .max_body_bytes = 1 << 20, .max_depth = 64,
        .max_items = 100000};
    /* What the main process decodes: headers only, the body left for later. */
    static const struct task_message_limits hlim = {
        .max_message_bytes = 1 << 20, .max_body_bytes = 1 << 20, .max_depth = 64,
        .max_items = 100000, .headers_only = 1};
    static const struct decode_limits dlim = {1 << 20, 64, 100000};
    char err[256];

    struct task_message m;
    task_message_decode((const char *)data, size, &tlim, &m, err, sizeof err);
    (void)task_message_display_name(&m);
    if (m.args) {
        char *r = value_repr_tuple(m.args, 200);
        free(r);
    }
    task_message_clear(&m);
    task_message_decode((const char *)data, size, &hlim, &m, err, sizeof err);
    /* The packed hand-off to a pool process gives what the full decode gives. */
    struct buf pk = {0};
    if (task_message_pack(&m, &pk) == 0 && buf_append(&pk, data, size) == 0) {
        struct task_message f, p;
        char ef[256] = "", ep[256] = "";
        int rf = task_message_decode((const char *)data, size, &tlim, &f, ef, sizeof ef);
        int rp = task_message_decode_packed(pk.p, pk.len, &tlim, &p, ep, sizeof ep);
        if (rf != rp || strcmp(ef, ep) != 0)
            abort();
        const char *fs[] = {f.id, f.task, f.parent_id, f.root_id, f.group, f.delivery_tag,
                            f.reply_to, f.content_type, f.compression, f.argsrepr};
        const char *ps[] = {p.id, p.task, p.parent_id, p.root_id, p.group, p.delivery_tag,
                            p.reply_to, p.content_type, p.compression, p.argsrepr};
        for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++)
            if ((fs[i] == NULL) != (ps[i] == NULL) || (fs[i] && strcmp(fs[i], ps[i]) != 0))
                abort();
        if (f.retries != p.retries || f.expires != p.expires || f.eta != p.eta ||
            f.time_limit != p.time_limit || f.ignore_result != p.ignore_result)
            abort();
        const celeriac_value *fv[] = {f.args, f.kwargs, f.embed}, *pv[] = {p.args, p.kwargs, p.embed};
        for (size_t i = 0; i < 3; i++) {
            char *a = fv[i] ? celeriac_value_to_json(fv[i]) : NULL;
            char *b = pv[i] ? celeriac_value_to_json(pv[i]) : NULL;
            if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0))
                abort();
            free(a);
            free(b);
        }
        task_message_clear(&f);
        task_message_clear(&p);
    }
    buf_free(&pk);
    task_message_clear(&m);
    /* The input as a packed message itself (never sent by anyone but the
     * main process; still bounded). */
    task_message_decode_packed((const char *)data, size, &tlim, &m, err, sizeof err);
    task_message_clear(&m);
    task_message_unpack_headers((const char *)data, size, &m);
    task_message_clear(&m);
    /* A fetching pool process's headers pack carries its decode's fields. */
    if (task_message_decode((const char *)data, size, &tlim, &m, err, sizeof err) == 0) {
        struct task_message u;
        buf_free(&pk);
        if (task_message_pack_headers(&m, &pk) == 0 && buf_append(&pk, data, size) == 0) {
            if (task_message_unpack_headers(pk.p, pk.len, &u) < 0 || strcmp(u.id, m.id) != 0 ||
                strcmp(u.task, m.task) != 0 || u.eta != m.eta || u.retries != m.retries)
                abort();
            task_message_clear(&u);
        }
        buf_free(&pk);
    }
    task_message_clear(&m);

    /* The input as a body inside a well-formed envelope, so that the body
     * paths (protocol 1, 2, hybrid; json and msgpack) are reached directly.
     * The first byte picks the serializer and the protocol. */
    if (size > 0 && size < (64u << 10)) {
        char *b64 = codec_base64_encode(data + 1, size - 1, NULL);
        if (b64) {
            struct buf e = {0};
            buf_printf(&e,
                       "{\"body\": \"%s\", \"content-type\": \"%s\", \"headers\": %s, "
                       "\"properties\": {\"correlation_id\": \"c\", \"body_encoding\": "
                       "\"base64\", \"delivery_tag\": \"d\"}}",
                       b64, data[0] & 1 ? "application/x-msgpack" : "application/json",
                       data[0] & 2 ? "{}" : "{\"task\": \"t\", \"id\": \"i\"}");
            if (e.p) {
                task_message_decode(e.p, e.len, &tlim, &m, err, sizeof err);
                task_message_clear(&m);
            }
            buf_free(&e);
            free(b64);
        }
    }

    /* Lifting a long string member out must not change any outcome: the
     * input as it is, and (when it is an object) with a long plain body
     * spliced in first. */
    for (int k = 0; k < 2; k++) {
        struct buf t = {0};
        if (k == 0)
            buf_append(&t, data, size);
        else if (size > 1 && data[0] == '{') {
            buf_puts(&t, "{\"body\": \"");
            for (int i = 0; i < 300; i++)
                buf_puts(&t, "Q");
            buf_puts(&t, size > 2 && data[1] != '}' ? "\", " : "\"");
            buf_append(&t, data + 1, size - 1);
        }
        if (!t.p)
            continue;
        celeriac_value *a = NULL, *b = NULL;
        char ea[256] = "", eb[256] = "";
        int ra = serializer_json.decode(t.p, t.len, &dlim, &a, ea, sizeof ea);
        int rb = json_decode_lifting(t.p, t.len, "body", &dlim, &b, eb, sizeof eb, NULL);
        char *ja = a ? celeriac_value_to_json(a) : NULL, *jb = b ? celeriac_value_to_json(b) : NULL;
        if (ra != rb || strcmp(ea, eb) != 0 || (ja == NULL) != (jb == NULL) ||
            (ja && strcmp(ja, jb) != 0))
            abort();
        free(ja);
        free(jb);
        celeriac_value_free(a);
        celeriac_value_free(b);
        buf_free(&t);
    }

    celeriac_value *v = NULL;
    if (serializer_json.decode(data, size, &dlim, &v, err, sizeof err) == 0) {
        char *out = NULL;
        size_t n = 0;
        if (serializer_json.encode(v, &out, &n) == 0) {
            /* Encoding what we decoded must decode again. */
            celeriac_value *w = NULL;
            if (serializer_json.decode(out, n, &dlim, &w, err, sizeof err) != 0)
                abort();
            celeriac_value_free(w);
        }
        free(out);
        char *r = value_repr(v, 300);
        free(r);
    }
    celeriac_value_free(v);

    v = NULL;
    if (serializer_msgpack.decode(data, size, &dlim, &v, err, sizeof err) == 0) {
        char *out = NULL;
        size_t n = 0;
        if (serializer_msgpack.encode(v, &out, &n) == 0) {
            celeriac_value *w = NULL;
            if (serializer_msgpack.decode(out, n, &dlim, &w, err, sizeof err) != 0)
                abort();
            celeriac_value_free(w);
        }
        free(out);
    }
    celeriac_value_free(v);

    unsigned char *raw = NULL;
    size_t rn = 0;
    if (codec_base64_decode((const char *)data, size, 1 << 20, &raw, &rn) == 0)
        free(raw);
    if (codec_decompress("application/x-gzip", data, size, 1 << 20, &raw, &rn) == 0)
        free(raw);
    if (codec_decompress("application/x-bz2", data, size, 1 << 20, &raw, &rn) == 0)
        free(raw);
    return 0;
}
