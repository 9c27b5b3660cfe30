/* status.h - the liveness file a worker rewrites every second and the
 * `celeriac status` command that reads it (no broker round trip). */
#ifndef CELERIAC_STATUS_H
#define CELERIAC_STATUS_H

#include <stddef.h>

/* Writes path atomically (temp file + rename): pid, state, time, node,
 * counters. Does nothing when path is NULL. */
void status_write(const char *path, const char *state, const char *node, size_t active,
                  unsigned long processed);
/* `celeriac status (--pidfile F | --status-file F) [--max-age S]`: 0 when that
 * worker is alive, running and fresh; 1 when not; 64 on a usage error. */
int status_main(int argc, char **argv);

#endif
