/* discovery.h: which NATS subject serves /kapis/<group>/<version>/...
 * (docs/gateway.md, "Discovery"; the announcement format and the subjects
 * are decided in docs/subjects.md).
 *
 * Every service announces the APIs it serves in the "ks.api.groups" key of
 * its $SRV.INFO metadata: a comma-separated list of
 * <group>/<version>[/<path prefix>]. The gateway scans $SRV.INFO (a request
 * that gathers every reply for a short window) at start, every interval,
 * after NATS comes back, and whenever a $SRV.PING scan (every second) shows
 * an instance it does not know. The routing table is the union of what the
 * instances seen in the last three scans announce.
 *
 * A request for group G, version V and path segments S (after the version)
 * goes to the announced entry of G/V whose prefix matches the most leading
 * segments of S (an entry without a prefix matches everything); its subject
 * is ks.api.<G>.<V> with each prefix segment appended as an escaped token.
 * When nothing announced G/V (or no prefix of it matches), the request goes
 * to ks.api.<G>.<V>, so a service that subscribes without announcing still
 * gets its requests. */
#ifndef GW_DISCOVERY_H
#define GW_DISCOVERY_H

#include <stddef.h>

#include "bus.h"
#include "status.h"

#define GW_DISCOVERY_KEY "ks.api.groups"
#define GW_DISCOVERY_MAX_PREFIX 8        /* prefix segments of one entry */
#define GW_DISCOVERY_MAX_ROUTES 1024     /* entries in the table */
#define GW_DISCOVERY_MAX_INSTANCES 1024  /* service instances remembered */
#define GW_DISCOVERY_VALUE_MAX 4096      /* bytes of one "ks.api.groups" value */
#define GW_DISCOVERY_REPLY_MAX 65536     /* bytes of one $SRV reply */
#define GW_DISCOVERY_SUBJECT_MAX 512

typedef struct gw_discovery gw_discovery;

typedef struct {
    int interval_ms;   /* full $SRV.INFO scan; 0 = 5000 */
    int ping_ms;       /* $SRV.PING scan for new instances; 0 = 1000 */
    int window_ms;     /* how long a scan gathers replies; 0 = 200 */
} gw_discovery_opts;

/* Start scanning on bus (a thread and one inbox subscription). bus NULL
 * makes a table fed only by gw_discovery_announce (tests). *out is set only
 * on success. */
ks_status gw_discovery_create(ks_bus *bus, const gw_discovery_opts *opts, gw_discovery **out)
    __attribute__((warn_unused_result));

/* Stop the thread and the subscription, and free. NULL is a no-op. */
void gw_discovery_destroy(gw_discovery *d);

/* The subject for group/version and the decoded path segments after the
 * version (rest[0..nrest-1]). *announced (may be NULL) is 1 when an
 * announced entry matched, 0 for the fallback. KS_ERR_INVALID when group or
 * version cannot form a subject (empty version, bytes a group never has),
 * KS_ERR_TOO_LARGE when cap is too small. Thread-safe; never waits on NATS. */
ks_status gw_discovery_resolve(gw_discovery *d, const char *group, const char *version,
                               const char *const *rest, size_t nrest, char *subject, size_t cap,
                               int *announced) __attribute__((warn_unused_result));

/* Record what instance id (of service name) announces (value: the
 * "ks.api.groups" string, NULL or "" for nothing) and rebuild the table, as
 * a scan does for each reply. Entries that do not parse are logged and
 * skipped. For tests and for the scan itself. */
void gw_discovery_announce(gw_discovery *d, const char *id, const char *name, const char *value);

/* Forget an instance at once (tests). */
void gw_discovery_forget(gw_discovery *d, const char *id);

/* Ask for a $SRV.INFO scan now (returns at once). */
void gw_discovery_kick(gw_discovery *d);

/* Entries in the table; scans completed (INFO only). */
size_t gw_discovery_routes(gw_discovery *d);
unsigned long gw_discovery_scans(gw_discovery *d);

/* Parse one entry "<group>/<version>[/<seg>...]" of len bytes. On success
 * fills group (cap 254), version (cap 64), prefix segments (each cap 128)
 * and *nprefix. KS_ERR_INVALID otherwise: an empty or non-DNS group (lower
 * case letters, digits, '-' and '.', no empty label), a version outside
 * [a-z0-9]{1,63}, an empty, "." or ".." segment, a segment with bytes other
 * than [A-Za-z0-9._~-], more than GW_DISCOVERY_MAX_PREFIX segments. */
ks_status gw_discovery_parse_entry(const char *text, size_t len, char group[254],
                                   char version[64], char prefix[][128], size_t *nprefix)
    __attribute__((warn_unused_result));

#endif
