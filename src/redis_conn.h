/* redis_conn.h - one hiredis connection opened from a parsed URL: connect,
 * AUTH, SELECT, timeouts, and a command call that marks the link broken on
 * I/O errors. Shared by the Redis broker and the Redis result backend. */
#ifndef CELERIAC_REDIS_CONN_H
#define CELERIAC_REDIS_CONN_H

#include <hiredis/hiredis.h>
#include "url.h"

struct redis_conn {
    redisContext *ctx;   /* owned; NULL while disconnected */
    struct redis_url url;
    double timeout;      /* socket timeout for commands, seconds */
    int err;             /* last CELERIAC_E* */
    char errstr[256];    /* last error, one line */
};

/* Connects (closing any previous link), authenticates and selects the db.
 * 0, or CELERIAC_ECONN / CELERIAC_EAUTH with errstr set. */
int redis_conn_open(struct redis_conn *c);
void redis_conn_close(struct redis_conn *c);
/* Runs one command (argv form). Returns the reply (caller frees with
 * freeReplyObject()), or NULL on I/O failure (link closed, errstr set).
 * An error reply is returned as a reply of type REDIS_REPLY_ERROR. */
redisReply *redis_conn_cmd(struct redis_conn *c, int argc, const char **argv, const size_t *lens);
/* printf-style command, same contract. */
redisReply *redis_conn_cmdf(struct redis_conn *c, const char *fmt, ...);
/* Reads the replies of n commands queued with redisAppendCommand*; stores
 * them in replies[] (caller frees each). 0 or CELERIAC_ECONN. */
int redis_conn_pipeline_read(struct redis_conn *c, redisReply **replies, int n);
/* Marks the connection broken after an I/O error. */
void redis_conn_fail(struct redis_conn *c, const char *what);

#endif
