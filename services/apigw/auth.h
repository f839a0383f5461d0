/* auth.h: what the gateway's two auth stages share (docs/gateway-auth.md).
 *
 *   revoked.c  the revocation set: token ids and per-user cutoffs, fed by
 *              ks.iam.revoked and by a watch of the KV bucket KS_REVOKED
 *   authn.c    gw_stage_authn (gw.h) and the anonymous/authenticated groups
 *   authz.c    gw_stage_authz (gw.h), the public paths, the decision cache */
#ifndef GW_AUTH_H
#define GW_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "status.h"

#define GW_REVOKED_BUCKET "KS_REVOKED"
#define GW_REVOKED_SUBJECT "ks.iam.revoked"
/* Entries kept at most; beyond, the set stops answering (see
 * gw_revoked_ready) rather than forget a revocation. */
#define GW_REVOKED_MAX_ENTRIES 1000000

#define GW_USER_ANONYMOUS "system:anonymous"
#define GW_GROUP_UNAUTHENTICATED "system:unauthenticated"
#define GW_GROUP_AUTHENTICATED "system:authenticated"

/* ---- revoked.c ---- */

typedef struct gw_revoked gw_revoked;

/* Unix seconds; injectable for tests (NULL: the real clock). */
typedef int64_t (*gw_revoked_clock_fn)(void);

/* Start the set on bus: subscribe to GW_REVOKED_SUBJECT at once, and open
 * and watch the bucket GW_REVOKED_BUCKET from a background thread that
 * retries (250 ms doubling to 5 s) until the bucket exists: iam creates it,
 * with the TTL it alone knows, so the gateway never does. bus NULL makes a
 * set fed only by gw_revoked_apply (tests). *out is set only on success. */
ks_status gw_revoked_create(ks_bus *bus, gw_revoked_clock_fn clock, gw_revoked **out)
    __attribute__((warn_unused_result));

/* Stop the thread, the subscription and the watch, and free. NULL: no-op. */
void gw_revoked_destroy(gw_revoked *rv);

/* 1 when the set can be trusted alone: the bucket's initial values are
 * loaded and the set did not overflow GW_REVOKED_MAX_ENTRIES. While 0, the
 * gateway asks iam (ks.iam.authn with the token) instead. */
int gw_revoked_ready(gw_revoked *rv);

/* Add one revocation (a serialized kscore.v1.Revocation). KS_ERR_PROTOCOL
 * for bytes that are not one (logged; nothing changes). */
ks_status gw_revoked_apply(gw_revoked *rv, const void *data, size_t len);

/* Mark the initial values loaded (what the watch does; for tests). */
void gw_revoked_mark_loaded(gw_revoked *rv);

/* 1 if a token is revoked: its jti is in the set, or its user has a cutoff
 * and iat < cutoff (the cutoff is the first second NOT revoked, as
 * services/iam/revocation.c writes it). Entries past their expiry (plus the
 * JWT skew) count as absent. One read lock, two hash probes; never waits on
 * NATS. */
int gw_revoked_check(gw_revoked *rv, const char *jti, const char *username, int64_t iat);

/* Entries held (token ids + users). */
size_t gw_revoked_size(gw_revoked *rv);

/* ---- authz.c ---- */

/* 1 for a path anybody may use without authorization: /oauth/...,
 * /.well-known/..., /version, /healthz, /livez, /readyz. Exact segments: a
 * path with an empty, "." or ".." segment is never public. */
int gw_auth_path_is_public(const char *path);

#endif
