/* canvas.h - what a pool process sends on after a task ran, as Celery's tracer
 * and result backend do: link callbacks, the next chain step, errbacks, the
 * chord join and body, and the message of a retry. */
#ifndef CELERIAC_CANVAS_H
#define CELERIAC_CANVAS_H

#include "backend.h"
#include "broker.h"
#include "celeriac.h"
#include "task_message.h"

/* Where canvas messages and states go. All pointers borrowed. */
struct canvas_env {
    /* The publishing link, opened on first use; NULL when it cannot be had
     * (the caller has logged why). */
    struct broker *(*publisher)(void *ud);
    void *ud;
    struct backend *backend; /* NULL = results disabled (no chord join either) */
    const char *hostname;    /* node name: origin of the messages sent */
    const char *reply_to;    /* reply_to for signatures that carry none */
};

/* A task succeeded with retval (borrowed): sends its link callbacks (more
 * than one go out as a group with a common fresh group id) and the next step
 * of its chain, with retval prepended to their args unless a signature is
 * immutable. Call before storing the result: the result tuple of everything
 * sent is appended to children (an ARRAY) for the stored meta. Signatures
 * that cannot be built get a FAILURE (NotImplementedError) under their own
 * id. 0, or the first negative code (logged). */
int canvas_on_success(const struct canvas_env *e, const struct task_message *m,
                      const celeriac_value *retval, celeriac_value *children);

/* A stored state of a chord header part (m has embed.chord and a group): adds
 * it to the join; the part that completes the chord sends the body with the
 * ordered results, or stores ChordError on the body when a part failed and
 * sends the body's errbacks. Call after the part's own state was stored. */
/* 1 when m is a header part of a chord (its outcome joins the chord). */
int canvas_in_chord(const struct task_message *m);
void canvas_chord_part(const struct canvas_env *e, const struct task_message *m,
                       const char *state, const celeriac_value *result);

/* A task failed with exc (an exception document, borrowed): joins its chord,
 * stores the same FAILURE for every remaining chain step when stored is set
 * (as the task's own result was), and sends its errbacks as a group with
 * args [task id] + errback args. Call after the FAILURE was stored. */
void canvas_on_failure(const struct canvas_env *e, const struct task_message *m,
                       const celeriac_value *exc, const char *traceback, int stored);

/* A task asked for a retry: publishes m again with the same id, retries + 1,
 * eta = now + countdown (none when countdown <= 0) and the same embed, group,
 * limits, queue and priority; parent_id stays, or becomes the task's own id
 * when it had none (Celery 5.2). Appends the new message's result tuple to
 * children. 0 or a negative code (logged). */
int canvas_retry(const struct canvas_env *e, const struct task_message *m, double countdown,
                 celeriac_value *children);

/* Python repr() of the exception an exception document describes, as a
 * client rebuilds it: ValueError('boom'). Caller frees with free(). */
char *canvas_exception_repr(const celeriac_value *exc);

#endif
