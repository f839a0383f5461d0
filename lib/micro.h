/* micro.h: a NATS micro-protocol service ($SRV.PING, $SRV.INFO, $SRV.STATS).
 *
 * cnats 3.4.1 predates the micro API, so kscore implements the protocol
 * itself. Replies follow the io.nats.micro.v1 schemas that `nats micro`
 * validates; every service instance answers (no queue group), so
 * `nats micro ls` lists each replica. Endpoints added here are request
 * handlers in a queue group whose requests, errors and processing time are
 * reported by $SRV.STATS. */
#ifndef KS_MICRO_H
#define KS_MICRO_H

#include <stddef.h>

#include "bus.h"
#include "status.h"

typedef struct ks_micro ks_micro;

typedef struct {
    const char *name;          /* [A-Za-z0-9_-]+, e.g. "iam" */
    const char *version;       /* semver, e.g. "0.1.0" */
    const char *description;
    /* Service metadata: keys[i] = values[i]; copied. The gateway reads
     * "ks.api.groups" from here (see docs/subjects.md). */
    const char *const *meta_keys;
    const char *const *meta_values;
    size_t nmeta;
} ks_micro_cfg;

/* Handle one request. Return 0 on success; non-zero counts as an error for
 * $SRV.STATS with err (NUL-terminated, may be empty) as last_error. The
 * message is destroyed by the caller after the handler returns. */
typedef int (*ks_micro_handler)(ks_bus *bus, ks_bus_msg *msg, void *arg, char *err, size_t errcap);

/* Start answering $SRV.* for this service on bus. */
ks_status ks_micro_create(ks_bus *bus, const ks_micro_cfg *cfg, ks_micro **out)
    __attribute__((warn_unused_result));

/* Serve subject in queue group `queue` (NULL = "q", the micro default).
 * name must match [A-Za-z0-9_-]+. */
ks_status ks_micro_add_endpoint(ks_micro *m, const char *name, const char *subject,
                                const char *queue, ks_micro_handler handler, void *arg)
    __attribute__((warn_unused_result));

/* The instance id (22 characters, random per process start). */
const char *ks_micro_id(const ks_micro *m);

/* Stop answering (waits for running handlers) and free. Call before
 * ks_bus_destroy. NULL is a no-op. */
void ks_micro_destroy(ks_micro *m);

/* Build the JSON replies (caller frees); for tests and the handlers. */
char *ks_micro_ping_json(ks_micro *m);
char *ks_micro_info_json(ks_micro *m);
char *ks_micro_stats_json(ks_micro *m);

#endif
