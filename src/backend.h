/* backend.h - result backends behind one vtable, and the backend-independent
 * part: Celery's result meta document and exception documents. */
#ifndef CELERIAC_BACKEND_H
#define CELERIAC_BACKEND_H

#include <stddef.h>
#include "celeriac.h"

/* One stored state, as Celery's _get_result_meta writes it. */
struct result_meta {
    const char *task_id;
    const char *status;            /* SUCCESS, FAILURE, STARTED, PROCESSING, ... */
    const celeriac_value *result;  /* borrowed; NULL is JSON null */
    const char *traceback;         /* or NULL */
    const char *group_id;          /* written only when set */
    const char *parent_id;         /* written only when set */
    int ready;                     /* SUCCESS/FAILURE/REVOKED: date_done is set */
    const celeriac_value *children;/* borrowed ARRAY of result tuples of the tasks this
                                    * one sent ([[id, null], null] each); NULL = [] */
};

struct backend;

struct backend_ops {
    const char *scheme;
    /* Stores an encoded meta document for task_id unless the stored state is
     * already SUCCESS (success is final), and wakes waiters. 0 or negative. */
    int (*store)(struct backend *b, const char *task_id, const char *json, size_t len);
    /* The same for n documents at once (NULL = store() one by one). */
    int (*store_many)(struct backend *b, size_t n, const char *const *task_ids,
                      const char *const *jsons, const size_t *lens);
    /* store_many in two halves, so a caller can overlap the round trip with
     * another: send() writes the request (0, or negative when it could not),
     * recv() reads its outcome and takes the same arguments (the documents
     * must live until then; it may resend them). Both NULL = not split. */
    int (*store_many_send)(struct backend *b, size_t n, const char *const *task_ids,
                           const char *const *jsons, const size_t *lens);
    int (*store_many_recv)(struct backend *b, size_t n, const char *const *task_ids,
                           const char *const *jsons, const size_t *lens);
    /* fd that turns readable when the reply of store_many_send() arrives,
     * -1 when none is outstanding (NULL = not split). */
    int (*store_many_fd)(struct backend *b);
    /* Writes a store without waiting for its reply (in order with later
     * commands on the same link); settle() reads the replies of every post,
     * and every other call settles first. Both NULL = post stores at once. */
    int (*post)(struct backend *b, const char *task_id, const char *json, size_t len);
    void (*settle)(struct backend *b);
    /* Reads the stored status into buf ("" when there is none). */
    int (*get_status)(struct backend *b, const char *task_id, char *buf, size_t len);
    /* ---- chord join (Celery's on_chord_part_return); NULL = not supported ---- */
    /* Adds one header part (part_json = [1, id, state, result]) to the join of
     * group_id with score group_index ("+inf" when it has none) and reads the
     * counts. Returns 1 when this part completed the chord, with the parts in
     * index order in *parts (ARRAY of decoded [1, id, state, result]; caller
     * frees with celeriac_value_free()); 0 when not complete (or no chord size
     * is stored); negative on error. */
    int (*chord_part_return)(struct backend *b, const char *group_id, const char *part_json,
                             size_t len, const char *score, celeriac_value **parts);
    /* Deletes the join state of group_id (.j, .t, .s). */
    int (*chord_clear)(struct backend *b, const char *group_id);
    /* Stores the chord size of group_id, as a producer applying a chord does. */
    int (*chord_set_size)(struct backend *b, const char *group_id, long size);
    void (*free)(struct backend *b);
};

struct backend {
    const struct backend_ops *ops;
    long expires;          /* result_expires seconds, 0 = keep forever */
    double retry_timeout;  /* how long store() retries while unreachable; negative:
                            * one attempt, no log (the caller retries later) */
    int err;               /* last CELERIAC_E* */
    char errstr[256];      /* last error, one line */
    int send_rc;           /* outcome kept by backend_store_send() when not split */
    char keyprefix[72];    /* Celery >= 5.3 result_backend_transport_options global_keyprefix,
                            * with its separator: in front of every key ("" = none) */
};

/* Opens a backend by URL scheme (redis://, redis+socket://, unix://). The
 * connection is made lazily on first use. keyprefix (NULL = none) is Celery's
 * global_keyprefix of the result backend. Caller frees with backend_free().
 * NULL with err set when the URL is unusable. */
struct backend *backend_new(const char *url, long expires, double retry_timeout,
                            const char *keyprefix, char *err, size_t errlen);
void backend_free(struct backend *b);

/* Encodes m as JSON (key order as Celery 5.2 writes it). Caller frees with free(). */
char *backend_encode_meta(const struct result_meta *m, size_t *len);
/* Stores n encoded documents (see backend_ops.store_many). */
int backend_store_many(struct backend *b, size_t n, const char *const *task_ids,
                       const char *const *jsons, const size_t *lens);
/* backend_store_many() in two halves (see backend_ops.store_many_send):
 * every successful send must be followed by one recv with the same
 * arguments before the backend is used again. A backend that cannot split
 * stores in send() and reports the outcome from recv(). One attempt each,
 * whatever retry_timeout says. */
int backend_store_send(struct backend *b, size_t n, const char *const *task_ids,
                       const char *const *jsons, const size_t *lens);
int backend_store_recv(struct backend *b, size_t n, const char *const *task_ids,
                       const char *const *jsons, const size_t *lens);
/* Encodes and stores m. */
int backend_store_meta(struct backend *b, const struct result_meta *m);
/* fd to poll for the reply of backend_store_send(), or -1 (then
 * backend_store_recv() does not wait on the network). */
int backend_store_fd(struct backend *b);
/* Encodes m and posts it (see backend_ops.post): 0 once written, or negative
 * when it could not be (out of memory, link down). How the store went is
 * only logged, by backend_settle() or the next call that settles. */
int backend_post_meta(struct backend *b, const struct result_meta *m);
/* Reads the replies of the posted stores (see backend_ops.settle). */
void backend_settle(struct backend *b);
/* Celery's exception document {"exc_type", "exc_message": [message], "exc_module"}.
 * Caller frees with celeriac_value_free(). */
celeriac_value *backend_exception(const char *exc_module, const char *exc_type,
                                  const char *message);
/* The traceback text stored with an exception celeriac raised on behalf of a
 * task. Caller frees with free(); NULL when out of memory. */
char *backend_traceback(const char *exc_module, const char *exc_type, const char *message);
/* Records one chord header part's outcome (result borrowed; group_index NULL
 * or an INT). 1 with *parts when the chord is complete (see chord_part_return),
 * 0 when not, CELERIAC_EUNSUPPORTED when the backend has no native join. */
int backend_chord_part_return(struct backend *b, const char *group_id, const char *task_id,
                              const celeriac_value *group_index, const char *state,
                              const celeriac_value *result, celeriac_value **parts);
int backend_chord_clear(struct backend *b, const char *group_id);
int backend_chord_set_size(struct backend *b, const char *group_id, long size);
/* Stores FAILURE with an exception document for task_id (a traceback line is
 * generated). */
int backend_store_failure(struct backend *b, const char *task_id, const char *exc_module,
                          const char *exc_type, const char *message, const char *parent_id,
                          const char *group_id);

#endif
