/* bench-responder: the least a worker can do for one `examples.add` task,
 * used by bench.py to measure the latency floor of the Python client.
 *
 *     bench-responder HOST PORT
 *
 * Loop: BRPOP the "celery" list of db 0, take the task id from the envelope's
 * headers and (a, b) from its base64 JSON body, then SET the SUCCESS result
 * (Celery's JSON layout) under celery-task-meta-<id> in db 1 and PUBLISH it
 * on the same name, both in one pipelined round trip. No ack bookkeeping, no
 * events, no pool: whatever latency the Python producer measures against it
 * is the producer's own (send_task, the result subscription, get()) plus the
 * unavoidable Redis round trips. Anything but a well-formed add is logged
 * and dropped. It is a measuring tool, not a worker; SIGTERM stops it.
 */
#include <hiredis/hiredis.h>
#include <yajl/yajl_tree.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

enum { MAX_MESSAGE = 1 << 20 };

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decodes standard padded base64 into out (NUL-terminated); -1 on bad input. */
static int b64_decode(const char *in, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '=') break;
        int v = b64_value((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= cap) return -1;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    return 0;
}

static const char *ID_PATH[] = {"headers", "id", NULL};
static const char *BODY_PATH[] = {"body", NULL};

/* Fills id and *sum from one message; -1 (with a log line) when it is not an add. */
static int parse_add(const char *msg, char *id, size_t idcap, long long *sum)
{
    char err[128];
    yajl_val env = yajl_tree_parse(msg, err, sizeof err);
    if (!env) {
        fprintf(stderr, "bench-responder: not JSON: %s\n", err);
        return -1;
    }
    int rc = -1;
    yajl_val idv = yajl_tree_get(env, ID_PATH, yajl_t_string);
    yajl_val bodyv = yajl_tree_get(env, BODY_PATH, yajl_t_string);
    if (idv && bodyv && strlen(idv->u.string) < idcap) {
        const char *b = bodyv->u.string;
        size_t blen = strlen(b);
        char *body = malloc(blen + 1);
        if (body && b64_decode(b, blen, body, blen + 1) == 0) {
            yajl_val v = yajl_tree_parse(body, err, sizeof err);
            /* [[a, b], {}, {}] */
            if (v && YAJL_IS_ARRAY(v) && v->u.array.len >= 1) {
                yajl_val args = v->u.array.values[0];
                if (YAJL_IS_ARRAY(args) && args->u.array.len == 2 &&
                    YAJL_IS_INTEGER(args->u.array.values[0]) &&
                    YAJL_IS_INTEGER(args->u.array.values[1])) {
                    *sum = YAJL_GET_INTEGER(args->u.array.values[0]) +
                           YAJL_GET_INTEGER(args->u.array.values[1]);
                    snprintf(id, idcap, "%s", idv->u.string);
                    rc = 0;
                }
            }
            yajl_tree_free(v);
        }
        free(body);
    }
    if (rc != 0) fprintf(stderr, "bench-responder: not an examples.add message, dropped\n");
    yajl_tree_free(env);
    return rc;
}

static redisContext *connect_db(const char *host, int port, int db)
{
    redisContext *c = redisConnect(host, port);
    if (!c || c->err) {
        fprintf(stderr, "bench-responder: connect %s:%d: %s\n", host, port,
                c ? c->errstr : "out of memory");
        return NULL;
    }
    redisReply *r = redisCommand(c, "SELECT %d", db);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "bench-responder: SELECT %d failed\n", db);
        return NULL;
    }
    freeReplyObject(r);
    return c;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: bench-responder HOST PORT\n");
        return 2;
    }
    char *end;
    errno = 0;
    long port = strtol(argv[2], &end, 10);
    if (errno || *end || port <= 0 || port > 65535) {
        fprintf(stderr, "bench-responder: bad port %s\n", argv[2]);
        return 2;
    }
    redisContext *broker = connect_db(argv[1], (int)port, 0);
    redisContext *backend = connect_db(argv[1], (int)port, 1);
    if (!broker || !backend) return 1;
    for (;;) {
        redisReply *r = redisCommand(broker, "BRPOP celery 0");
        if (!r) {
            fprintf(stderr, "bench-responder: broker link: %s\n", broker->errstr);
            return 1;
        }
        char id[256];
        long long sum = 0;
        int ok = r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                 r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->len < MAX_MESSAGE &&
                 parse_add(r->element[1]->str, id, sizeof id, &sum) == 0;
        freeReplyObject(r);
        if (!ok) continue;

        struct timeval tv;
        gettimeofday(&tv, NULL);
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        char stamp[32];
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        char meta[512], key[300];
        int n = snprintf(meta, sizeof meta,
                         "{\"status\": \"SUCCESS\", \"result\": %lld, \"traceback\": null, "
                         "\"children\": [], \"date_done\": \"%s.%06ld\", \"task_id\": \"%s\"}",
                         sum, stamp, (long)tv.tv_usec, id);
        snprintf(key, sizeof key, "celery-task-meta-%s", id);
        redisAppendCommand(backend, "SET %s %b EX 86400", key, meta, (size_t)n);
        redisAppendCommand(backend, "PUBLISH %s %b", key, meta, (size_t)n);
        for (int i = 0; i < 2; i++) {
            void *reply;
            if (redisGetReply(backend, &reply) != REDIS_OK) {
                fprintf(stderr, "bench-responder: backend link: %s\n", backend->errstr);
                return 1;
            }
            freeReplyObject(reply);
        }
    }
}
