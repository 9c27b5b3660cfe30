/* broker_redis.c - kombu's Redis transport as a broker: priority queues,
 * BRPOP, bindings, the unacked/unacked_index ack emulation and visibility
 * restore. It does not decode task messages (only envelopes it restores). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "log.h"
#include "redis_conn.h"
#include "util.h"
#include "value.h"

#define UNACKED "unacked"
#define UNACKED_INDEX "unacked_index"
#define UNACKED_MUTEX "unacked_mutex"
#define UNACKED_MUTEX_EXPIRE_MS 300000
#define BRPOP_TIMEOUT "1"


struct broker_redis {
    struct broker base;
    struct redis_conn cmd;     /* commands: acks, restore, publish */
    struct redis_conn consume; /* BRPOP only, read from the poll loop */
    char **queues;             /* owned; consume order, rotated round-robin */
    size_t nqueues;
    int fetching;              /* outstanding on consume: FETCH_NONE/BRPOP/BATCH */
    char *batch_cmd;           /* owned (an sds): the batch request as sent (resent after
                                * NOSCRIPT) */
    size_t batch_len;
    int batch_reloaded;        /* the script was loaded again for this batch */
    struct redis_conn sub;     /* PSUBSCRIBE (fanout in), non-blocking */
    struct redis_conn pub;     /* fanout out, pipelined by flush() */
    char **patterns;           /* owned: PSUBSCRIBE patterns, re-sent on reconnect */
    size_t npatterns;
    int pub_pending;           /* commands appended on pub, replies not read */
    char fetch_sha[41];        /* SHA1 of fetch_script */
    long long consume_id;      /* CLIENT ID of the consume link, 0 if unknown */
    struct broker_options opt; /* sep, priority steps, queue order, key prefix */
    /* kombu's key names with opt.keyprefix in front (global_keyprefix). */
    char unacked[160], unacked_index[160], unacked_mutex[160];
    char record[300];          /* set_fetch_record(): key of this link's record, "" = none */
    /* Scratch of redis_fetch_batch_send(), kept between calls (no allocation
     * per fetch once they are large enough). */
    const char **fetch_argv;   /* owned array, fetch_cap entries */
    char (*fetch_keys)[256];   /* owned array, fetch_cap entries */
    size_t fetch_cap;
};
#define NSTEPS (r->opt.nsteps)
enum { FETCH_NONE, FETCH_BRPOP, FETCH_BATCH };
/* How long a fetch record outlives its last fetch. It matters only between
 * a fetch and the process's report of what it took; the expiry only cleans
 * up after a worker killed whole (a message it took is still in unacked,
 * restored after visibility_timeout). */
#define FETCH_RECORD_TTL_MS "3600000"

static void batch_forget(struct broker_redis *r)
{
    if (r->batch_cmd)
        redisFreeSdsCommand(r->batch_cmd);
    r->batch_cmd = NULL;
    r->batch_len = 0;
    r->batch_reloaded = 0;
}

static void set_err(struct broker_redis *r, int err, const char *s)
{
    r->base.err = err;
    snprintf(r->base.errstr, sizeof r->base.errstr, "%s", s);
}

/* The list key for a queue at a priority, as kombu's _q_for_pri names it:
 * the largest step <= priority; step 0 is the queue itself. */
static void priority_key(const struct broker_redis *r, const char *queue, int priority, char *buf,
                         size_t len)
{
    int step = 0;
    if (priority < 0)
        priority = 0;
    if (priority > 9)
        priority = 9;
    for (size_t i = 0; i < r->opt.nsteps; i++)
        if (r->opt.steps[i] <= priority)
            step = r->opt.steps[i];
    if (step)
        snprintf(buf, len, "%s%s%s%d", r->opt.keyprefix, queue, r->opt.sep, step);
    else
        snprintf(buf, len, "%s%s", r->opt.keyprefix, queue);
}

/* The queue a popped key belongs to: matched against the keys we listen on,
 * so queue names containing the separator are safe. */
static void queue_of_key(const struct broker_redis *r, const char *key, size_t klen, char *out,
                         size_t outlen)
{
    char k[300];
    for (size_t q = 0; q < r->nqueues; q++)
        for (size_t st = 0; st < r->opt.nsteps; st++) {
            priority_key(r, r->queues[q], r->opt.steps[st], k, sizeof k);
            if (strlen(k) == klen && memcmp(k, key, klen) == 0) {
                snprintf(out, outlen, "%s", r->queues[q]);
                return;
            }
        }
    snprintf(out, outlen, "%.*s", (int)(klen < outlen ? klen : outlen - 1), key);
}

/* Pops up to n messages across the priority keys in BRPOP order; each goes
 * into unacked/unacked_index in the same atomic step (so no crash between
 * pop and reserve can lose them, even one handed to an idle process at once:
 * its early ack removes it again). The hash value is
 * kombu's [envelope, exchange, routing_key] with the default exchange and the
 * queue name, which routes a restore to the same queue. The delivery tag is
 * the last "delivery_tag" key (kombu writes properties last), found by plain
 * search from the tail (a Lua pattern over a large envelope costs Redis
 * ~0.1 ms); the caller checks it against the decoded message. Acks of the
 * caller ride along: ARGV after the queue names are delivery tags to remove
 * from unacked first (kombu's basic_ack). KEYS[3] with ARGV[3] a TTL in ms
 * (not '0'): a string that holds the tags this call reserved, and only those,
 * one per line (a fetching pool process's record, read by the main process
 * if the process dies before it reports them); it expires, so that the
 * record of a worker killed whole does not stay in Redis. */
static const char fetch_script[] =
    "local function tag_of(v)\n"
    "  for _, key in ipairs({'\"delivery_tag\": \"', '\"delivery_tag\":\"'}) do\n"
    "    local last = nil\n"
    "    for _, from in ipairs({math.max(1, #v - 1024), 1}) do\n"
    "      while not last or from > 1 do\n"
    "        local s, e = string.find(v, key, from, true)\n"
    "        if not s then break end\n"
    "        last, from = e, e + 1\n"
    "      end\n"
    "      if last then break end\n"
    "    end\n"
    "    if last then\n"
    "      local q = string.find(v, '\"', last + 1, true)\n"
    "      if q then return string.sub(v, last + 1, q - 1) end\n"
    "    end\n"
    "  end\n"
    "  return ''\n"
    "end\n"
    "local nres, now, rec = tonumber(ARGV[1]), ARGV[2], ARGV[3] ~= '0'\n"
    "local nq = #KEYS - 3\n"
    "if #ARGV > 3 + nq then\n"
    "  local acks = {unpack(ARGV, 4 + nq)}\n"
    "  redis.call('ZREM', KEYS[2], unpack(acks))\n"
    "  redis.call('HDEL', KEYS[1], unpack(acks))\n"
    "end\n"
    "local out, z, h, t = {}, {}, {}, {}\n"
    "for i = 4, #KEYS do\n"
    "  while nres > 0 do\n"
    "    local v = redis.call('RPOP', KEYS[i])\n"
    "    if not v then break end\n"
    "    local tag = tag_of(v)\n"
    "    if tag ~= '' then\n"
    "      nres = nres - 1\n"
    "      z[#z + 1] = now; z[#z + 1] = tag; t[#t + 1] = tag\n"
    "      h[#h + 1] = tag; h[#h + 1] = '[' .. v .. ', \"\", ' .. ARGV[i] .. ']'\n"
    "    end\n"
    "    out[#out + 1] = KEYS[i]; out[#out + 1] = v; out[#out + 1] = tag\n"
    "  end\n"
    "end\n"
    "if #z > 0 then\n"
    "  redis.call('ZADD', KEYS[2], unpack(z))\n"
    "  redis.call('HSET', KEYS[1], unpack(h))\n"
    "  if rec then redis.call('SET', KEYS[3], table.concat(t, '\\n'), 'PX', ARGV[3]) end\n"
    "elseif rec then\n"
    "  redis.call('DEL', KEYS[3])\n"
    "end\n"
    "return out\n";

static int binding_cmd(struct broker_redis *r, const char *verb, const char *exchange,
                       const char *routing_key, const char *queue);

/* kombu binds each task queue to the exchange of its own name. */
static int declare_bindings(struct broker_redis *r)
{
    for (size_t i = 0; i < r->nqueues; i++) {
        int rc = binding_cmd(r, "SADD", r->queues[i], r->queues[i], r->queues[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int psubscribe_all(struct broker_redis *r);

static void redis_disconnect(struct broker *b)
{
    struct broker_redis *r = (struct broker_redis *)b;
    redis_conn_close(&r->cmd);
    redis_conn_close(&r->consume);
    redis_conn_close(&r->sub);
    redis_conn_close(&r->pub);
    r->fetching = FETCH_NONE;
    batch_forget(r);
    r->pub_pending = 0;
}

static int redis_connect(struct broker *b)
{
    struct broker_redis *r = (struct broker_redis *)b;
    r->fetching = FETCH_NONE;
    batch_forget(r);
    r->pub_pending = 0;
    int rc = redis_conn_open(&r->cmd);
    if (rc == 0)
        rc = redis_conn_open(&r->consume);
    if (rc == 0)
        rc = redis_conn_open(&r->pub);
    if (rc == 0 && r->npatterns)
        rc = psubscribe_all(r);
    if (rc < 0) {
        const struct redis_conn *c = r->cmd.err ? &r->cmd : r->consume.err ? &r->consume
                                                       : r->pub.err ? &r->pub : &r->sub;
        set_err(r, rc, c->errstr);
        redis_disconnect(b);
        return rc;
    }
    redisReply *id = redis_conn_cmdf(&r->consume, "CLIENT ID");
    r->consume_id = id && id->type == REDIS_REPLY_INTEGER ? id->integer : 0;
    if (id)
        freeReplyObject(id);
    redisReply *sha = redis_conn_cmdf(&r->cmd, "SCRIPT LOAD %s", fetch_script);
    if (!sha) {
        set_err(r, CELERIAC_ECONN, r->cmd.errstr);
        redis_disconnect(b);
        return CELERIAC_ECONN;
    }
    if (sha->type == REDIS_REPLY_STRING && sha->len == 40)
        memcpy(r->fetch_sha, sha->str, 41);
    freeReplyObject(sha);
    return declare_bindings(r);
}

static int redis_connect_publisher(struct broker *b)
{
    struct broker_redis *r = (struct broker_redis *)b;
    int rc = redis_conn_open(&r->cmd);
    if (rc < 0)
        set_err(r, rc, r->cmd.errstr);
    return rc;
}

static void free_queues(struct broker_redis *r)
{
    for (size_t i = 0; i < r->nqueues; i++)
        free(r->queues[i]);
    free(r->queues);
    r->queues = NULL;
    r->nqueues = 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *json_string(const char *s);

/* A queue's name as JSON, as the fetch script writes it into unacked: it
 * follows the name in the same allocation (see redis_set_queues()). */
static const char *queue_json(const char *queue)
{
    return queue + strlen(queue) + 1;
}

static int redis_set_queues(struct broker *b, char **queues, size_t n)
{
    struct broker_redis *r = (struct broker_redis *)b;
    char **q = calloc(n ? n : 1, sizeof *q);
    if (!q)
        return CELERIAC_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(queues[i]);
        char *json = len <= 200 ? json_string(queues[i]) : NULL;
        q[i] = json ? malloc(len + strlen(json) + 2) : NULL;
        if (q[i]) {
            memcpy(q[i], queues[i], len + 1);
            memcpy(q[i] + len + 1, json, strlen(json) + 1);
        }
        free(json);
        if (!q[i]) {
            int rc = len > 200 ? CELERIAC_EINVAL : CELERIAC_ENOMEM;
            for (size_t k = 0; k <= i; k++)
                free(q[k]);
            free(q);
            return rc;
        }
    }
    free_queues(r);
    r->queues = q;
    r->nqueues = n;
    if (r->opt.order == QUEUE_ORDER_SORTED)
        qsort(r->queues, n, sizeof *r->queues, cmp_names);
    return r->cmd.ctx ? declare_bindings(r) : 0;
}

/* Writes the pending request bytes of the consume link. */
static int consume_write(struct broker_redis *r, const char *what)
{
    int done = 0;
    while (!done)
        if (redisBufferWrite(r->consume.ctx, &done) != REDIS_OK) {
            redis_conn_fail(&r->consume, what);
            set_err(r, CELERIAC_ECONN, r->consume.errstr);
            r->fetching = FETCH_NONE;
            batch_forget(r);
            return CELERIAC_ECONN;
        }
    return 0;
}

static int redis_fetch_start(struct broker *b)
{
    struct broker_redis *r = (struct broker_redis *)b;
    if (r->fetching)
        return 0;
    if (!r->consume.ctx) {
        set_err(r, CELERIAC_ECONN, "not connected");
        return CELERIAC_ECONN;
    }
    if (r->nqueues == 0)
        return 0;
    /* BRPOP q1 q2 q1<sep>3 q2<sep>3 ... q2<sep>9 timeout: step 0 of every queue first. */
    size_t argc = 1 + r->nqueues * NSTEPS + 1;
    const char **argv = calloc(argc, sizeof *argv);
    char (*keys)[256] = calloc(r->nqueues * NSTEPS, sizeof *keys);
    if (!argv || !keys) {
        free(argv);
        free(keys);
        return CELERIAC_ENOMEM;
    }
    size_t k = 0;
    argv[k++] = "BRPOP";
    for (size_t s = 0; s < NSTEPS; s++)
        for (size_t q = 0; q < r->nqueues; q++) {
            char *key = keys[s * r->nqueues + q];
            priority_key(r, r->queues[q], r->opt.steps[s], key, 256);
            argv[k++] = key;
        }
    argv[k++] = BRPOP_TIMEOUT;
    int rc = redisAppendCommandArgv(r->consume.ctx, (int)argc, argv, NULL);
    free(argv);
    free(keys);
    if (rc != REDIS_OK) {
        redis_conn_fail(&r->consume, "BRPOP");
        set_err(r, CELERIAC_ECONN, r->consume.errstr);
        return CELERIAC_ECONN;
    }
    r->fetching = FETCH_BRPOP;
    return consume_write(r, "BRPOP");
}

static int redis_fetch_cancel(struct broker *b)
{
    struct broker_redis *r = (struct broker_redis *)b;
    if (r->fetching != FETCH_BRPOP || !r->consume_id || !r->cmd.ctx)
        return 0; /* a batch returns by itself */
    /* BRPOP returns nil as if its timeout had passed. */
    redisReply *rep = redis_conn_cmdf(&r->cmd, "CLIENT UNBLOCK %lld", r->consume_id);
    if (!rep) {
        set_err(r, CELERIAC_ECONN, r->cmd.errstr);
        return CELERIAC_ECONN;
    }
    freeReplyObject(rep);
    return 0;
}

static int redis_fetch_fd(struct broker *b)
{
    struct broker_redis *r = (struct broker_redis *)b;
    return r->fetching != FETCH_NONE && r->consume.ctx ? r->consume.ctx->fd : -1;
}


/* Moves queue i to the end of the consume order (kombu's round_robin). */
static void rotate(struct broker_redis *r, size_t i)
{
    if (r->opt.order != QUEUE_ORDER_ROUND_ROBIN)
        return; /* sorted / priority: the configured order stays */
    char *q = r->queues[i];
    memmove(&r->queues[i], &r->queues[i + 1], (r->nqueues - i - 1) * sizeof *r->queues);
    r->queues[r->nqueues - 1] = q;
}

/* Reads what has arrived on the consume link: 1 with *reply (caller frees),
 * 0 while the reply is incomplete, CELERIAC_ECONN when the link broke. */
static int consume_reply(struct broker_redis *r, const char *what, void **reply)
{
    *reply = NULL;
    if (redisBufferRead(r->consume.ctx) != REDIS_OK ||
        redisGetReplyFromReader(r->consume.ctx, reply) != REDIS_OK) {
        redis_conn_fail(&r->consume, what);
        set_err(r, CELERIAC_ECONN, r->consume.errstr);
        r->fetching = FETCH_NONE;
        batch_forget(r);
        return CELERIAC_ECONN;
    }
    return *reply ? 1 : 0;
}

static int redis_fetch_read(struct broker *b, struct broker_delivery *out)
{
    struct broker_redis *r = (struct broker_redis *)b;
    if (r->fetching != FETCH_BRPOP || !r->consume.ctx)
        return 0;
    void *reply = NULL;
    int rc0 = consume_reply(r, "BRPOP", &reply);
    if (rc0 <= 0)
        return rc0;
    r->fetching = FETCH_NONE;
    redisReply *rep = reply;
    int rc = 0;
    if (rep->type == REDIS_REPLY_NIL) {
        rc = 0;
    } else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
               rep->element[0]->type == REDIS_REPLY_STRING &&
               rep->element[1]->type == REDIS_REPLY_STRING) {
        const char *key = rep->element[0]->str;
        size_t klen = rep->element[0]->len;
        queue_of_key(r, key, klen, out->queue, sizeof out->queue);
        out->body = malloc(rep->element[1]->len + 1);
        if (!out->body) {
            rc = CELERIAC_ENOMEM;
        } else {
            memcpy(out->body, rep->element[1]->str, rep->element[1]->len);
            out->body[rep->element[1]->len] = 0;
            out->len = rep->element[1]->len;
            rc = 1;
        }
        size_t qi = r->nqueues;
        for (size_t i = 0; i < r->nqueues; i++)
            if (strcmp(r->queues[i], out->queue) == 0) {
                qi = i;
                break;
            }
        if (qi < r->nqueues) {
            rotate(r, qi);
        } else if (rc == 1 && klen > 0) {
            /* The queue was cancelled while this BRPOP was outstanding: put the
             * message back at the head of the very key it came from, as kombu
             * requeues deliveries that have no consumer. */
            const char *argv[3] = {"RPUSH", key, out->body};
            size_t lens[3] = {5, klen, out->len};
            redisReply *p = redis_conn_cmd(&r->cmd, 3, argv, lens);
            if (p) {
                freeReplyObject(p);
                free(out->body);
                out->body = NULL;
                out->len = 0;
                rc = 0;
            } else {
                /* Never drop it: deliver it after all. */
                log_warning("message from cancelled queue %s could not be returned; running it",
                            out->queue);
            }
        }
    } else if (rep->type == REDIS_REPLY_ERROR) {
        set_err(r, CELERIAC_EPROTO, rep->str);
        rc = CELERIAC_EPROTO;
    } else {
        set_err(r, CELERIAC_EPROTO, "unexpected BRPOP reply");
        rc = CELERIAC_EPROTO;
    }
    freeReplyObject(rep);
    return rc;
}

/* Runs queued commands MULTI ... EXEC (n commands including both) and checks
 * the EXEC reply. */
static int run_pipeline(struct broker_redis *r, int n, const char *what)
{
    redisReply *reps[8];
    if (redis_conn_pipeline_read(&r->cmd, reps, n) < 0) {
        set_err(r, CELERIAC_ECONN, r->cmd.errstr);
        return CELERIAC_ECONN;
    }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (reps[i]->type == REDIS_REPLY_ERROR && rc == 0) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s: %s", what, reps[i]->str);
            set_err(r, CELERIAC_EPROTO, msg);
            rc = CELERIAC_EPROTO;
        }
        freeReplyObject(reps[i]);
    }
    return rc;
}

static int append(struct broker_redis *r, int argc, const char **argv, const size_t *lens)
{
    if (!r->cmd.ctx || redisAppendCommandArgv(r->cmd.ctx, argc, argv, lens) != REDIS_OK) {
        set_err(r, CELERIAC_ECONN, "not connected");
        return CELERIAC_ECONN;
    }
    return 0;
}

static char *json_string(const char *s)
{
    celeriac_value *v = celeriac_value_new_string(s ? s : "");
    char *out = v ? celeriac_value_to_json(v) : NULL;
    celeriac_value_free(v);
    return out;
}

/* The unacked_index score: kombu writes time() as a float; whole seconds,
 * rounded up, compare the same way in every restore scan (a message can only
 * look younger, by < 1 s, never older) and cost Redis a third as much in
 * ZADD (listpack scores are stored as text: 3.6 instead of 11 us for 5). */
static void unacked_score(char *buf, size_t len)
{
    snprintf(buf, len, "%.0f", ceil(util_now()));
}

static int redis_reserve(struct broker *b, const struct broker_reservation *res,
                         const char *body, size_t len)
{
    struct broker_redis *r = (struct broker_redis *)b;
    /* unacked value: [envelope, exchange, routing_key] as kombu's QoS.append. */
    char *ex = json_string(res->exchange), *rk = json_string(res->routing_key);
    struct buf v = {0};
    int rc = CELERIAC_ENOMEM;
    if (!ex || !rk || buf_puts(&v, "[") < 0 || buf_append(&v, body, len) < 0 ||
        buf_printf(&v, ", %s, %s]", ex, rk) < 0)
        goto out;
    char score[40];
    unacked_score(score, sizeof score);
    const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    const char *zadd[4] = {"ZADD", r->unacked_index, score, res->delivery_tag};
    const char *hset[4] = {"HSET", r->unacked, res->delivery_tag, v.p};
    size_t hlens[4] = {4, strlen(r->unacked), strlen(res->delivery_tag), v.len};
    /* A fetching pool process's record names what it reserved last, as a
     * batch fetch leaves it (see fetch_script). */
    const char *set[5] = {"SET", r->record, res->delivery_tag, "PX", FETCH_RECORD_TTL_MS};
    int record = r->record[0] != '\0';
    if ((rc = append(r, 1, multi, NULL)) < 0 || (rc = append(r, 4, zadd, NULL)) < 0 ||
        (rc = append(r, 4, hset, hlens)) < 0 || (record && (rc = append(r, 5, set, NULL)) < 0) ||
        (rc = append(r, 1, exec, NULL)) < 0)
        goto out;
    rc = run_pipeline(r, record ? 5 : 4, "reserve");
out:
    free(ex);
    free(rk);
    buf_free(&v);
    return rc;
}

/* Writes the batch request on the consume link; its reply is read by
 * redis_fetch_batch_read() once fetch_fd is readable. */
static int redis_fetch_batch_send(struct broker *b, const char *const *acks, size_t nacks,
                                  size_t n)
{
    struct broker_redis *r = (struct broker_redis *)b;
    if (r->fetching != FETCH_NONE) {
        set_err(r, CELERIAC_EINVAL, "a fetch is outstanding");
        return CELERIAC_EINVAL;
    }
    if (!r->consume.ctx) {
        set_err(r, CELERIAC_ECONN, "not connected");
        return CELERIAC_ECONN;
    }
    size_t nkeys = r->nqueues * NSTEPS;
    size_t argc = 3 + 3 + nkeys + 3 + nkeys + nacks;
    if (argc > r->fetch_cap) {
        const char **argv = realloc(r->fetch_argv, argc * sizeof *argv);
        if (argv)
            r->fetch_argv = argv;
        char(*keys)[256] = argv ? realloc(r->fetch_keys, argc * sizeof *keys) : NULL;
        if (keys)
            r->fetch_keys = keys;
        if (!argv || !keys) {
            set_err(r, CELERIAC_ENOMEM, "out of memory");
            return CELERIAC_ENOMEM;
        }
        r->fetch_cap = argc;
    }
    const char **argv = r->fetch_argv;
    char(*keys)[256] = r->fetch_keys;
    int rc;
    char nkeys_s[24], nr[24], now[40];
    snprintf(nkeys_s, sizeof nkeys_s, "%zu", nkeys + 3);
    snprintf(nr, sizeof nr, "%zu", n);
    unacked_score(now, sizeof now);
    size_t k = 0;
    argv[k++] = "EVALSHA";
    argv[k++] = r->fetch_sha;
    argv[k++] = nkeys_s;
    argv[k++] = r->unacked;
    argv[k++] = r->unacked_index;
    argv[k++] = r->record[0] ? r->record : r->unacked_index; /* unused without a record */
    for (size_t st = 0; st < NSTEPS; st++)
        for (size_t q = 0; q < r->nqueues; q++) {
            char *key = keys[st * r->nqueues + q];
            priority_key(r, r->queues[q], r->opt.steps[st], key, 256);
            argv[k++] = key;
        }
    argv[k++] = nr;
    argv[k++] = now;
    argv[k++] = r->record[0] ? FETCH_RECORD_TTL_MS : "0";
    for (size_t st = 0; st < NSTEPS; st++)
        for (size_t q = 0; q < r->nqueues; q++)
            argv[k++] = queue_json(r->queues[q]);
    for (size_t i = 0; i < nacks; i++)
        argv[k++] = acks[i];
    sds cmd = NULL; /* hiredis's own string: formatted without printf */
    long long len = redisFormatSdsCommandArgv(&cmd, (int)k, argv, NULL);
    if (len < 0) {
        set_err(r, CELERIAC_ENOMEM, "out of memory");
        return CELERIAC_ENOMEM;
    }
    batch_forget(r);
    r->batch_cmd = cmd;
    r->batch_len = (size_t)len;
    if (redisAppendFormattedCommand(r->consume.ctx, cmd, (size_t)len) != REDIS_OK) {
        redis_conn_fail(&r->consume, "fetch");
        set_err(r, CELERIAC_ECONN, r->consume.errstr);
        batch_forget(r);
        return CELERIAC_ECONN;
    }
    r->fetching = FETCH_BATCH;
    rc = consume_write(r, "fetch");
    return rc;
}

/* The reply of redis_fetch_batch_send(): 1 with out[0..*count) filled (caller
 * frees each body), 0 while incomplete (also after resending the request
 * when the script cache was flushed), negative on error. */
static int redis_fetch_batch_read(struct broker *b, struct broker_delivery *out, size_t max,
                                  size_t *count)
{
    struct broker_redis *r = (struct broker_redis *)b;
    *count = 0;
    if (r->fetching != FETCH_BATCH || !r->consume.ctx)
        return 0;
    void *reply = NULL;
    int rc = consume_reply(r, "fetch", &reply);
    if (rc <= 0)
        return rc;
    redisReply *rep = reply;
    if (rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0 &&
        !r->batch_reloaded) {
        /* SCRIPT FLUSH (or a restarted Redis): nothing ran; load it, ask again. */
        freeReplyObject(rep);
        r->batch_reloaded = 1;
        redisReply *sha = redis_conn_cmdf(&r->cmd, "SCRIPT LOAD %s", fetch_script);
        if (!sha) {
            set_err(r, CELERIAC_ECONN, r->cmd.errstr);
            r->fetching = FETCH_NONE;
            batch_forget(r);
            return CELERIAC_ECONN;
        }
        freeReplyObject(sha);
        if (redisAppendFormattedCommand(r->consume.ctx, r->batch_cmd, r->batch_len) != REDIS_OK) {
            redis_conn_fail(&r->consume, "fetch");
            set_err(r, CELERIAC_ECONN, r->consume.errstr);
            r->fetching = FETCH_NONE;
            batch_forget(r);
            return CELERIAC_ECONN;
        }
        return consume_write(r, "fetch");
    }
    r->fetching = FETCH_NONE;
    batch_forget(r);
    if (rep->type != REDIS_REPLY_ARRAY) {
        set_err(r, CELERIAC_EPROTO, rep->type == REDIS_REPLY_ERROR ? rep->str : "fetch script");
        freeReplyObject(rep);
        return CELERIAC_EPROTO;
    }
    rc = 1;
    for (size_t i = 0; i + 2 < rep->elements && *count < max; i += 3) {
        struct broker_delivery *d = &out[*count];
        const redisReply *key = rep->element[i], *val = rep->element[i + 1],
                         *tag = rep->element[i + 2];
        memset(d, 0, sizeof *d);
        queue_of_key(r, key->str, key->len, d->queue, sizeof d->queue);
        if (!(d->body = malloc(val->len + 1))) {
            rc = CELERIAC_ENOMEM; /* the rest stays in unacked and is restored later */
            break;
        }
        memcpy(d->body, val->str, val->len);
        d->body[val->len] = 0;
        d->len = val->len;
        d->reserved = tag->len > 0;
        snprintf(d->tag, sizeof d->tag, "%.*s", (int)tag->len, tag->str);
        (*count)++;
    }
    /* Round-robin between queues, as BRPOP deliveries rotate them. */
    if (*count && r->nqueues > 1)
        for (size_t q = 0; q < r->nqueues; q++)
            if (strcmp(r->queues[q], out[*count - 1].queue) == 0) {
                rotate(r, q);
                break;
            }
    freeReplyObject(rep);
    return rc;
}

static int redis_ack_many(struct broker *b, const char **tags, size_t n)
{
    struct broker_redis *r = (struct broker_redis *)b;
    if (n == 0)
        return 0;
    const char **argv = calloc(n + 2, sizeof *argv);
    if (!argv)
        return CELERIAC_ENOMEM;
    const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    int rc = append(r, 1, multi, NULL);
    argv[0] = "ZREM";
    argv[1] = r->unacked_index;
    memcpy(argv + 2, tags, n * sizeof *tags);
    if (rc == 0)
        rc = append(r, (int)n + 2, argv, NULL);
    argv[0] = "HDEL";
    argv[1] = r->unacked;
    if (rc == 0)
        rc = append(r, (int)n + 2, argv, NULL);
    if (rc == 0)
        rc = append(r, 1, exec, NULL);
    free(argv);
    return rc < 0 ? rc : run_pipeline(r, 4, "ack");
}

static int redis_ack(struct broker *b, const char *tag)
{
    struct broker_redis *r = (struct broker_redis *)b;
    const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    const char *zrem[3] = {"ZREM", r->unacked_index, tag};
    const char *hdel[3] = {"HDEL", r->unacked, tag};
    int rc;
    if ((rc = append(r, 1, multi, NULL)) < 0 || (rc = append(r, 3, zrem, NULL)) < 0 ||
        (rc = append(r, 3, hdel, NULL)) < 0 || (rc = append(r, 1, exec, NULL)) < 0)
        return rc;
    return run_pipeline(r, 4, "ack");
}

/* Finds the queue(s) for (exchange, routing_key): the default exchange routes
 * by queue name; others through their _kombu.binding set. Writes the first
 * match into queue. */
static int route(struct broker_redis *r, const char *exchange, const char *rk, char *queue,
                 size_t len)
{
    if (!exchange || !*exchange) {
        snprintf(queue, len, "%s", rk ? rk : "");
        return queue[0] ? 0 : CELERIAC_ENOTFOUND;
    }
    redisReply *rep = redis_conn_cmdf(&r->cmd, "SMEMBERS %s_kombu.binding.%s", r->opt.keyprefix, exchange);
    if (!rep)
        return CELERIAC_ECONN;
    int rc = CELERIAC_ENOTFOUND;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements && rc; i++) {
        const char *m = rep->element[i]->str;
        size_t sl = strlen(r->opt.sep);
        const char *s1 = m ? strstr(m, r->opt.sep) : NULL;
        const char *s2 = s1 ? strstr(s1 + sl, r->opt.sep) : NULL;
        if (!s2)
            continue;
        if ((size_t)(s1 - m) == strlen(rk ? rk : "") && strncmp(m, rk ? rk : "", (size_t)(s1 - m)) == 0) {
            snprintf(queue, len, "%s", s2 + sl);
            rc = 0;
        }
    }
    freeReplyObject(rep);
    if (rc && rk && *rk) {
        snprintf(queue, len, "%s", rk); /* kombu would drop it; keeping it is safer */
        rc = 0;
    }
    return rc;
}

/* Marks an envelope redelivered (headers and delivery_info), as kombu does on
 * restore. Returns a new JSON text (caller frees) or NULL to keep it as is. */
static char *mark_redelivered(const char *env, size_t len, int *priority)
{
    celeriac_value *v = celeriac_value_from_json(env, len);
    char *out = NULL;
    *priority = 0;
    if (!v || celeriac_value_type(v) != CELERIAC_OBJECT)
        goto out;
    celeriac_value *h = (celeriac_value *)celeriac_value_get(v, "headers");
    celeriac_value *p = (celeriac_value *)celeriac_value_get(v, "properties");
    if (celeriac_value_type(h) == CELERIAC_OBJECT) {
        celeriac_value_set(h, "redelivered", celeriac_value_new_bool(1));
        /* Counted so a worker can stop a poison message (max_redeliveries). */
        int64_t n = celeriac_value_int(celeriac_value_get(h, "x-celeriac-redeliveries"));
        celeriac_value_set(h, "x-celeriac-redeliveries", celeriac_value_new_int(n + 1));
    }
    if (celeriac_value_type(p) == CELERIAC_OBJECT) {
        *priority = (int)celeriac_value_int(celeriac_value_get(p, "priority"));
        celeriac_value *di = (celeriac_value *)celeriac_value_get(p, "delivery_info");
        if (celeriac_value_type(di) == CELERIAC_OBJECT)
            celeriac_value_set(di, "redelivered", celeriac_value_new_bool(1));
    }
    out = celeriac_value_to_json(v);
out:
    celeriac_value_free(v);
    return out;
}

/* Moves one unacked message back to its queue: head (RPUSH) for restore,
 * tail (LPUSH) for reject-requeue. 1 = moved, 0 = not there any more. */
static int move_back(struct broker_redis *r, const char *tag, int head)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        redisReply *w = redis_conn_cmdf(&r->cmd, "WATCH %s", r->unacked);
        if (!w)
            return CELERIAC_ECONN;
        freeReplyObject(w);
        redisReply *g = redis_conn_cmdf(&r->cmd, "HGET %s %s", r->unacked, tag);
        if (!g)
            return CELERIAC_ECONN;
        if (g->type != REDIS_REPLY_STRING) {
            freeReplyObject(g);
            redisReply *u = redis_conn_cmdf(&r->cmd, "UNWATCH");
            if (u)
                freeReplyObject(u);
            /* Not in the hash: drop any stale index entry. */
            redisReply *z = redis_conn_cmdf(&r->cmd, "ZREM %s %s", r->unacked_index, tag);
            if (z)
                freeReplyObject(z);
            return 0;
        }
        /* [envelope, exchange, routing_key] */
        celeriac_value *item = celeriac_value_from_json(g->str, g->len);
        char queue[256] = "";
        char *env = NULL;
        int priority = 0;
        if (item && celeriac_value_type(item) == CELERIAC_ARRAY && celeriac_value_len(item) == 3) {
            char *raw = celeriac_value_to_json(celeriac_value_at(item, 0));
            if (raw) {
                env = mark_redelivered(raw, strlen(raw), &priority);
                if (!env)
                    env = raw;
                else
                    free(raw);
            }
            route(r, celeriac_value_string(celeriac_value_at(item, 1), NULL),
                  celeriac_value_string(celeriac_value_at(item, 2), NULL), queue, sizeof queue);
        }
        celeriac_value_free(item);
        freeReplyObject(g);
        if (!env || !queue[0]) {
            log_error("unacked message %s cannot be restored (malformed entry); dropping it", tag);
            free(env);
            redisReply *u = redis_conn_cmdf(&r->cmd, "UNWATCH");
            if (u)
                freeReplyObject(u);
            return redis_ack(&r->base, tag) < 0 ? CELERIAC_ECONN : 0;
        }
        char key[300];
        priority_key(r, queue, priority, key, sizeof key);
        const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
        const char *zrem[3] = {"ZREM", r->unacked_index, tag};
        const char *hdel[3] = {"HDEL", r->unacked, tag};
        const char *push[3] = {head ? "RPUSH" : "LPUSH", key, env};
        int rc;
        if ((rc = append(r, 1, multi, NULL)) < 0 || (rc = append(r, 3, zrem, NULL)) < 0 ||
            (rc = append(r, 3, hdel, NULL)) < 0 || (rc = append(r, 3, push, NULL)) < 0 ||
            (rc = append(r, 1, exec, NULL)) < 0) {
            free(env);
            return rc;
        }
        free(env);
        redisReply *reps[5];
        if (redis_conn_pipeline_read(&r->cmd, reps, 5) < 0)
            return CELERIAC_ECONN;
        int aborted = reps[4]->type == REDIS_REPLY_NIL;
        for (int i = 0; i < 5; i++)
            freeReplyObject(reps[i]);
        if (!aborted)
            return 1;
        /* Another worker changed the hash meanwhile: try again. */
    }
    return 0;
}

static int redis_reject(struct broker *b, const char *tag, int requeue)
{
    struct broker_redis *r = (struct broker_redis *)b;
    if (!requeue)
        return redis_ack(b, tag); /* reject without requeue discards, as in kombu */
    int rc = move_back(r, tag, 0);
    if (rc == CELERIAC_ECONN)
        set_err(r, rc, r->cmd.errstr);
    return rc < 0 ? rc : 0;
}

static void redis_set_fetch_record(struct broker *b, const char *name)
{
    struct broker_redis *r = (struct broker_redis *)b;
    if (!name || !*name)
        r->record[0] = '\0';
    else
        snprintf(r->record, sizeof r->record, "%s%s", r->opt.keyprefix, name);
}

static int redis_take_fetch_record(struct broker *b, const char *name, char ***tags, size_t *n)
{
    struct broker_redis *r = (struct broker_redis *)b;
    char key[300];
    snprintf(key, sizeof key, "%s%s", r->opt.keyprefix, name);
    *tags = NULL;
    *n = 0;
    redisReply *m = redis_conn_cmdf(&r->cmd, "GET %s", key);
    if (!m) {
        set_err(r, CELERIAC_ECONN, r->cmd.errstr);
        return CELERIAC_ECONN;
    }
    int rc = 0;
    if (m->type == REDIS_REPLY_STRING && m->len > 0) {
        size_t lines = 1;
        for (size_t i = 0; i < m->len; i++)
            lines += m->str[i] == '\n';
        if (!(*tags = calloc(lines, sizeof **tags)))
            rc = CELERIAC_ENOMEM;
        for (const char *p = m->str, *end = m->str + m->len; rc == 0 && p < end;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
            if (len && ((*tags)[*n] = strndup(p, len)) != NULL)
                (*n)++;
            p += len + 1;
        }
    }
    freeReplyObject(m);
    redisReply *d = redis_conn_cmdf(&r->cmd, "DEL %s", key);
    if (!d) {
        set_err(r, CELERIAC_ECONN, r->cmd.errstr);
        return rc < 0 ? rc : CELERIAC_ECONN;
    }
    freeReplyObject(d);
    return rc;
}

static int redis_restore(struct broker *b, const char *tag)
{
    struct broker_redis *r = (struct broker_redis *)b;
    int rc = move_back(r, tag, 1);
    if (rc == CELERIAC_ECONN)
        set_err(r, rc, r->cmd.errstr);
    return rc < 0 ? rc : 0;
}

static const char release_script[] =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end";

static int redis_restore_visible(struct broker *b, double visibility_timeout)
{
    struct broker_redis *r = (struct broker_redis *)b;
    char token[37];
    util_uuid4(token);
    redisReply *m = redis_conn_cmdf(&r->cmd, "SET %s %s PX %d NX", r->unacked_mutex, token,
                                    UNACKED_MUTEX_EXPIRE_MS);
    if (!m) {
        set_err(r, CELERIAC_ECONN, r->cmd.errstr);
        return CELERIAC_ECONN;
    }
    int locked = m->type == REDIS_REPLY_STATUS;
    freeReplyObject(m);
    if (!locked)
        return 0; /* another worker is restoring */
    char ceiling[40];
    snprintf(ceiling, sizeof ceiling, "%.6f", util_now() - visibility_timeout);
    redisReply *z =
        redis_conn_cmdf(&r->cmd, "ZREVRANGEBYSCORE %s %s 0 WITHSCORES", r->unacked_index, ceiling);
    int restored = 0, rc = 0;
    if (!z) {
        rc = CELERIAC_ECONN;
    } else {
        for (size_t i = 0; z->type == REDIS_REPLY_ARRAY && i + 1 < z->elements; i += 2) {
            int one = move_back(r, z->element[i]->str, 1);
            if (one < 0) {
                rc = one;
                break;
            }
            if (one > 0) {
                restored++;
                log_warning("restored unacknowledged message %s (older than visibility_timeout "
                            "%.0f s)",
                            z->element[i]->str, visibility_timeout);
            }
        }
        freeReplyObject(z);
    }
    redisReply *u = redis_conn_cmdf(&r->cmd, "EVAL %s 1 %s %s", release_script,
                                    r->unacked_mutex, token);
    if (u)
        freeReplyObject(u);
    if (rc < 0) {
        set_err(r, rc, r->cmd.errstr);
        return rc;
    }
    return restored;
}

static int redis_refresh(struct broker *b, const char **tags, size_t n)
{
    struct broker_redis *r = (struct broker_redis *)b;
    if (n == 0)
        return 0;
    /* ZADD unacked_index XX <now> tag ... : only entries that still exist. */
    size_t argc = 3 + 2 * n;
    const char **argv = calloc(argc, sizeof *argv);
    if (!argv)
        return CELERIAC_ENOMEM;
    char score[40];
    unacked_score(score, sizeof score);
    argv[0] = "ZADD";
    argv[1] = r->unacked_index;
    argv[2] = "XX";
    for (size_t i = 0; i < n; i++) {
        argv[3 + 2 * i] = score;
        argv[4 + 2 * i] = tags[i];
    }
    redisReply *rep = redis_conn_cmd(&r->cmd, (int)argc, argv, NULL);
    free(argv);
    if (!rep) {
        set_err(r, CELERIAC_ECONN, r->cmd.errstr);
        return CELERIAC_ECONN;
    }
    freeReplyObject(rep);
    return 0;
}

static int redis_publish(struct broker *b, const char *queue, int priority, const char *body,
                         size_t len)
{
    struct broker_redis *r = (struct broker_redis *)b;
    char key[300];
    priority_key(r, queue, priority, key, sizeof key);
    const char *argv[3] = {"LPUSH", key, body};
    size_t lens[3] = {5, strlen(key), len};
    redisReply *rep = redis_conn_cmd(&r->cmd, 3, argv, lens);
    if (!rep) {
        set_err(r, CELERIAC_ECONN, r->cmd.errstr);
        return CELERIAC_ECONN;
    }
    freeReplyObject(rep);
    return 0;
}

/* ---- fanout and direct exchanges ---------------------------------------- */

/* kombu's fanout channel: "/<db>.<exchange>" plus "/<routing key>" when the
 * key is not empty (fanout_prefix and fanout_patterns on). */
static void fanout_channel(const struct broker_redis *r, const char *exchange, const char *key,
                           char *buf, size_t len)
{
    if (key && *key)
        snprintf(buf, len, "%s/%d.%s/%s", r->opt.keyprefix, r->cmd.url.db, exchange, key);
    else
        snprintf(buf, len, "%s/%d.%s", r->opt.keyprefix, r->cmd.url.db, exchange);
}

static int psubscribe_all(struct broker_redis *r)
{
    r->sub.url = r->cmd.url;
    int rc = redis_conn_open(&r->sub);
    if (rc < 0)
        return rc;
    const char **argv = calloc(r->npatterns + 1, sizeof *argv);
    if (!argv)
        return CELERIAC_ENOMEM;
    argv[0] = "PSUBSCRIBE";
    for (size_t i = 0; i < r->npatterns; i++)
        argv[i + 1] = r->patterns[i];
    int ok = redisAppendCommandArgv(r->sub.ctx, (int)r->npatterns + 1, argv, NULL) == REDIS_OK;
    free(argv);
    int done = 0;
    while (ok && !done)
        ok = redisBufferWrite(r->sub.ctx, &done) == REDIS_OK;
    if (!ok) {
        redis_conn_fail(&r->sub, "PSUBSCRIBE");
        return CELERIAC_ECONN;
    }
    /* From here on the link is read from the poll loop without blocking. */
    int fd = r->sub.ctx->fd;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    r->sub.ctx->flags &= ~REDIS_BLOCK;
    return 0;
}

static int redis_subscribe(struct broker *b, const char *exchange, const char *binding_key)
{
    struct broker_redis *r = (struct broker_redis *)b;
    char pattern[512];
    char key[256];
    snprintf(key, sizeof key, "%s", binding_key ? binding_key : "");
    for (char *p = key; *p; p++)
        if (*p == '#')
            *p = '*';
    fanout_channel(r, exchange, key, pattern, sizeof pattern);
    char **pp = realloc(r->patterns, (r->npatterns + 1) * sizeof *pp);
    if (!pp)
        return CELERIAC_ENOMEM;
    r->patterns = pp;
    if (!(pp[r->npatterns] = strdup(pattern)))
        return CELERIAC_ENOMEM;
    r->npatterns++;
    if (!r->cmd.ctx)
        return 0; /* subscribed on connect */
    redis_conn_close(&r->sub);
    int rc = psubscribe_all(r);
    if (rc < 0)
        set_err(r, rc, r->sub.errstr);
    return rc;
}

static int redis_sub_fd(struct broker *b)
{
    struct broker_redis *r = (struct broker_redis *)b;
    return r->sub.ctx ? r->sub.ctx->fd : -1;
}

static int redis_sub_read(struct broker *b, struct broker_delivery *out)
{
    struct broker_redis *r = (struct broker_redis *)b;
    for (int round = 0; round < 2; round++) {
        if (!r->sub.ctx)
            return 0;
        void *reply = NULL;
        if (redisGetReplyFromReader(r->sub.ctx, &reply) != REDIS_OK) {
            redis_conn_fail(&r->sub, "subscription");
            set_err(r, CELERIAC_ECONN, r->sub.errstr);
            return CELERIAC_ECONN;
        }
        if (!reply) {
            if (round == 1)
                return 0;
            if (redisBufferRead(r->sub.ctx) != REDIS_OK) {
                redis_conn_fail(&r->sub, "subscription");
                set_err(r, CELERIAC_ECONN, r->sub.errstr);
                return CELERIAC_ECONN;
            }
            continue;
        }
        redisReply *rep = reply;
        int got = 0;
        if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 4 &&
            rep->element[0]->type == REDIS_REPLY_STRING &&
            strcmp(rep->element[0]->str, "pmessage") == 0 &&
            rep->element[2]->type == REDIS_REPLY_STRING &&
            rep->element[3]->type == REDIS_REPLY_STRING) {
            /* Channel "<prefix>/<db>.<exchange>[/<key>]" -> exchange. */
            const char *ch = rep->element[2]->str;
            size_t pl = strlen(r->opt.keyprefix);
            if (strncmp(ch, r->opt.keyprefix, pl) == 0)
                ch += pl;
            if (ch[0] == '/') {
                const char *dot = strchr(ch, '.');
                ch = dot ? dot + 1 : ch;
            }
            size_t n = strcspn(ch, "/");
            if (n >= sizeof out->queue)
                n = sizeof out->queue - 1;
            memcpy(out->queue, ch, n);
            out->queue[n] = 0;
            out->len = rep->element[3]->len;
            out->body = malloc(out->len + 1);
            if (out->body) {
                memcpy(out->body, rep->element[3]->str, out->len);
                out->body[out->len] = 0;
                got = 1;
            }
        }
        freeReplyObject(rep);
        if (got)
            return 1;
        round = -1; /* a subscribe confirmation: look for the next reply */
    }
    return 0;
}

static int redis_fanout(struct broker *b, const char *exchange, const char *routing_key,
                        const char *body, size_t len)
{
    struct broker_redis *r = (struct broker_redis *)b;
    if (!r->pub.ctx) {
        set_err(r, CELERIAC_ECONN, "not connected");
        return CELERIAC_ECONN;
    }
    char channel[512];
    fanout_channel(r, exchange, routing_key, channel, sizeof channel);
    const char *argv[3] = {"PUBLISH", channel, body};
    size_t lens[3] = {7, strlen(channel), len};
    if (redisAppendCommandArgv(r->pub.ctx, 3, argv, lens) != REDIS_OK) {
        redis_conn_fail(&r->pub, "PUBLISH");
        set_err(r, CELERIAC_ECONN, r->pub.errstr);
        return CELERIAC_ECONN;
    }
    r->pub_pending++;
    return 0;
}

static int redis_flush(struct broker *b)
{
    struct broker_redis *r = (struct broker_redis *)b;
    int rc = 0;
    while (r->pub_pending > 0) {
        void *reply = NULL;
        if (!r->pub.ctx || redisGetReply(r->pub.ctx, &reply) != REDIS_OK) {
            redis_conn_fail(&r->pub, "PUBLISH");
            set_err(r, CELERIAC_ECONN, r->pub.errstr);
            r->pub_pending = 0;
            return CELERIAC_ECONN;
        }
        freeReplyObject(reply);
        r->pub_pending--;
    }
    return rc;
}

static int redis_publish_direct(struct broker *b, const char *exchange, const char *routing_key,
                                const char *body, size_t len)
{
    struct broker_redis *r = (struct broker_redis *)b;
    redisReply *rep = redis_conn_cmdf(&r->cmd, "SMEMBERS %s_kombu.binding.%s", r->opt.keyprefix, exchange);
    if (!rep) {
        set_err(r, CELERIAC_ECONN, r->cmd.errstr);
        return CELERIAC_ECONN;
    }
    int rc = 0;
    size_t rklen = strlen(routing_key);
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const char *m = rep->element[i]->str;
        size_t sl = strlen(r->opt.sep);
        const char *s1 = m ? strstr(m, r->opt.sep) : NULL;
        const char *s2 = s1 ? strstr(s1 + sl, r->opt.sep) : NULL;
        if (!s2 || (size_t)(s1 - m) != rklen || strncmp(m, routing_key, rklen) != 0)
            continue;
        char key[300];
        snprintf(key, sizeof key, "%s%s", r->opt.keyprefix, s2 + sl);
        const char *argv[3] = {"LPUSH", key, body};
        size_t lens[3] = {5, strlen(key), len};
        redisReply *p = redis_conn_cmd(&r->cmd, 3, argv, lens);
        if (!p) {
            set_err(r, CELERIAC_ECONN, r->cmd.errstr);
            rc = CELERIAC_ECONN;
            break;
        }
        freeReplyObject(p);
    }
    freeReplyObject(rep);
    return rc;
}

static int binding_cmd(struct broker_redis *r, const char *verb, const char *exchange,
                       const char *routing_key, const char *queue)
{
    char key[300], member[700];
    snprintf(key, sizeof key, "%s_kombu.binding.%s", r->opt.keyprefix, exchange);
    int n = snprintf(member, sizeof member, "%s%s%s%s", routing_key ? routing_key : "",
                     r->opt.sep, r->opt.sep, queue);
    const char *argv[3] = {verb, key, member};
    size_t lens[3] = {4, strlen(key), (size_t)n};
    redisReply *rep = redis_conn_cmd(&r->cmd, 3, argv, lens);
    if (!rep) {
        set_err(r, CELERIAC_ECONN, r->cmd.errstr);
        return CELERIAC_ECONN;
    }
    freeReplyObject(rep);
    return 0;
}

static int redis_bind(struct broker *b, const char *exchange, const char *routing_key,
                      const char *queue)
{
    return binding_cmd((struct broker_redis *)b, "SADD", exchange, routing_key, queue);
}

static int redis_unbind(struct broker *b, const char *exchange, const char *routing_key,
                        const char *queue)
{
    return binding_cmd((struct broker_redis *)b, "SREM", exchange, routing_key, queue);
}

static void redis_free(struct broker *b)
{
    struct broker_redis *r = (struct broker_redis *)b;
    redis_disconnect(b);
    free_queues(r);
    for (size_t i = 0; i < r->npatterns; i++)
        free(r->patterns[i]);
    free(r->patterns);
    free(r->fetch_argv);
    free(r->fetch_keys);
    free(r);
}

static const struct broker_ops redis_ops = {
    .name = "redis",
    .connect = redis_connect,
    .connect_publisher = redis_connect_publisher,
    .disconnect = redis_disconnect,
    .set_queues = redis_set_queues,
    .fetch_start = redis_fetch_start,
    .fetch_cancel = redis_fetch_cancel,
    .fetch_fd = redis_fetch_fd,
    .fetch_read = redis_fetch_read,
    .fetch_batch_send = redis_fetch_batch_send,
    .fetch_batch_read = redis_fetch_batch_read,
    .ack_many = redis_ack_many,
    .reserve = redis_reserve,
    .ack = redis_ack,
    .reject = redis_reject,
    .restore = redis_restore,
    .set_fetch_record = redis_set_fetch_record,
    .take_fetch_record = redis_take_fetch_record,
    .restore_visible = redis_restore_visible,
    .refresh = redis_refresh,
    .publish = redis_publish,
    .subscribe = redis_subscribe,
    .sub_fd = redis_sub_fd,
    .sub_read = redis_sub_read,
    .fanout = redis_fanout,
    .flush = redis_flush,
    .publish_direct = redis_publish_direct,
    .bind = redis_bind,
    .unbind = redis_unbind,
    .free = redis_free,
};

struct broker *broker_redis_new(const char *url, const struct broker_options *opts, char *err,
                                size_t errlen);
struct broker *broker_redis_new(const char *url, const struct broker_options *opts, char *err,
                                size_t errlen)
{
    struct broker_redis *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (url_parse_redis(url, &r->cmd.url, err, errlen) < 0) {
        free(r);
        return NULL;
    }
    r->consume.url = r->cmd.url;
    r->sub.url = r->cmd.url;
    r->pub.url = r->cmd.url;
    r->cmd.timeout = 10;
    r->consume.timeout = 10;
    r->sub.timeout = 10;
    r->pub.timeout = 10;
    r->opt = *opts;
    snprintf(r->unacked, sizeof r->unacked, "%s" UNACKED, r->opt.keyprefix);
    snprintf(r->unacked_index, sizeof r->unacked_index, "%s" UNACKED_INDEX, r->opt.keyprefix);
    snprintf(r->unacked_mutex, sizeof r->unacked_mutex, "%s" UNACKED_MUTEX, r->opt.keyprefix);
    r->base.ops = &redis_ops;
    return &r->base;
}
