/* builtin.h - tasks compiled into the worker, and the settings they read. */
#ifndef CELERIAC_TASKS_BUILTIN_H
#define CELERIAC_TASKS_BUILTIN_H

#include <stddef.h>
#include "celeriac.h"

struct builtin_config {
    size_t document_max_bytes;     /* cap on document bytes (inline or fetched); 50 MiB */
    long fetch_timeout_ms;         /* whole URL fetch; 30000 */
    long fetch_connect_timeout_ms; /* connect phase; 10000 */
    long fetch_max_redirects;      /* 5 */
    size_t default_chunk_size;     /* characters per chunk unless options.chunk_size; 1000 */
};

/* Defaults as documented above. */
void builtin_config_defaults(struct builtin_config *c);
/* Registers process_document (and any later built-in). cfg is borrowed until
 * the registry is freed. */
int tasks_builtin_register(celeriac_registry *r, const struct builtin_config *cfg);

#endif
