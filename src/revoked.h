/* revoked.h - the set of revoked task ids: bounded like Celery's LimitedSet
 * (50,000 ids, 3 hours), optionally persisted to a state file. */
#ifndef CELERIAC_REVOKED_H
#define CELERIAC_REVOKED_H

#include <stddef.h>

#define REVOKES_MAX 50000
#define REVOKE_EXPIRES (3 * 3600.0)

struct revoked_entry {
    char id[64];   /* task id */
    double when;   /* wall-clock time revoked */
};

struct revoked {
    struct revoked_entry *items; /* owned, oldest first */
    size_t len, cap;
    char *statedb;               /* owned path, or NULL */
    int dirty;                   /* changed since the last save */
};

/* Loads ids from statedb (may be NULL; a missing file is an empty set). */
int revoked_init(struct revoked *r, const char *statedb);
void revoked_free(struct revoked *r);
void revoked_add(struct revoked *r, const char *id, double now);
int revoked_contains(struct revoked *r, const char *id, double now);
/* Drops expired ids. */
void revoked_purge(struct revoked *r, double now);
/* Writes the state file when changed (atomically: temp file + rename). */
int revoked_save(struct revoked *r);

#endif
