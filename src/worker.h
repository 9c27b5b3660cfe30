/* worker.h - the worker: consumes from the broker, schedules jobs onto the
 * pool, acknowledges, restores, reconnects and shuts down like Celery's. */
#ifndef CELERIAC_WORKER_H
#define CELERIAC_WORKER_H

#include "config.h"

struct worker;

/* Builds the worker from a loaded config (borrowed until worker_free): loads
 * plugins and aliases, opens broker and backend objects. NULL with a message
 * logged when the configuration cannot work. */
struct worker *worker_new(const struct config *cfg);
/* Connects, starts the pool and runs until shutdown. Returns the process exit
 * code: 0 after a clean shutdown, 69 when the broker is unreachable at start,
 * 70 on an internal error. */
int worker_run(struct worker *w);
void worker_free(struct worker *w);

#endif
