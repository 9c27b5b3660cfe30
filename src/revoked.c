/* revoked.c - keeps revoked task ids bounded and persists them; it does not
 * decide what happens to a revoked task (worker.c does). */
#include "revoked.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "celeriac.h"
#include "log.h"
#include "util.h"

static void drop_front(struct revoked *r, size_t n)
{
    memmove(r->items, r->items + n, (r->len - n) * sizeof *r->items);
    r->len -= n;
}

void revoked_add(struct revoked *r, const char *id, double now)
{
    if (!id || !*id || strlen(id) >= sizeof r->items[0].id)
        return;
    for (size_t i = 0; i < r->len; i++)
        if (strcmp(r->items[i].id, id) == 0) {
            r->items[i].when = now;
            r->dirty = 1;
            return;
        }
    if (r->len == REVOKES_MAX)
        drop_front(r, 1);
    if (r->len == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        struct revoked_entry *p = realloc(r->items, cap * sizeof *p);
        if (!p)
            return;
        r->items = p;
        r->cap = cap;
    }
    snprintf(r->items[r->len].id, sizeof r->items[0].id, "%s", id);
    r->items[r->len].when = now;
    r->len++;
    r->dirty = 1;
}

void revoked_purge(struct revoked *r, double now)
{
    size_t n = 0;
    while (n < r->len && r->items[n].when + REVOKE_EXPIRES < now)
        n++;
    if (n) {
        drop_front(r, n);
        r->dirty = 1;
    }
}

int revoked_contains(struct revoked *r, const char *id, double now)
{
    if (!id)
        return 0;
    for (size_t i = r->len; i-- > 0;)
        if (strcmp(r->items[i].id, id) == 0)
            return r->items[i].when + REVOKE_EXPIRES >= now;
    return 0;
}

int revoked_init(struct revoked *r, const char *statedb)
{
    memset(r, 0, sizeof *r);
    if (!statedb || !*statedb)
        return 0;
    r->statedb = strdup(statedb);
    FILE *f = fopen(statedb, "r");
    if (!f)
        return 0;
    char line[256];
    double now = util_now();
    /* Format: "celeriac-statedb 1" then one "revoked <unix time> <id>" per line. */
    if (!fgets(line, sizeof line, f) || strncmp(line, "celeriac-statedb 1", 18) != 0) {
        log_warning("state file %s is not a celeriac state file; ignoring it", statedb);
        fclose(f);
        return 0;
    }
    while (fgets(line, sizeof line, f)) {
        char id[64];
        double when;
        if (sscanf(line, "revoked %lf %63s", &when, id) == 2 && when + REVOKE_EXPIRES >= now)
            revoked_add(r, id, when);
    }
    fclose(f);
    r->dirty = 0;
    log_info("state file %s: %zu revoked id(s) loaded", statedb, r->len);
    return 0;
}

int revoked_save(struct revoked *r)
{
    if (!r->statedb || !r->dirty)
        return 0;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", r->statedb);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        log_error("cannot write state file %s", tmp);
        return CELERIAC_EIO;
    }
    fprintf(f, "celeriac-statedb 1\n");
    for (size_t i = 0; i < r->len; i++)
        fprintf(f, "revoked %.6f %s\n", r->items[i].when, r->items[i].id);
    int bad = fflush(f) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, r->statedb) < 0) {
        log_error("cannot write state file %s", r->statedb);
        return CELERIAC_EIO;
    }
    r->dirty = 0;
    return 0;
}

void revoked_free(struct revoked *r)
{
    revoked_save(r);
    free(r->items);
    free(r->statedb);
    memset(r, 0, sizeof *r);
}
