/* scope.h: which audit events a caller may see (docs/audit.md, "Scoping").
 *
 * KubeSphere's rule (pkg/models/tenant Auditing): a caller sees the events
 * of each namespace and each workspace in which they may `list events`,
 * from the creation of that namespace or workspace on, and the events that
 * have neither a namespace nor a workspace only when they may list events
 * at cluster scope. kscore simplifies the last part: a caller who may list
 * events at cluster scope (a platform admin) sees every event, so that
 * question is asked first and usually settles it.
 *
 * Each question ("may U list events in namespace N?") goes to a decider (in
 * the service: an AuthzRequest to ks.iam.authz, all of one query's
 * questions in flight at once) and its answer is cached per (user, groups,
 * scope, name) for the shorter of the decider's TTL and the configured
 * one. */
#ifndef AUD_SCOPE_H
#define AUD_SCOPE_H

#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "kscore/v1/common.pb-c.h"
#include "query.h"
#include "status.h"

#define AUD_SCOPE_CACHE_MAX 65536      /* cached decisions; beyond, the cache starts over */

typedef enum { AUD_AUTHZ_CLUSTER = 0, AUD_AUTHZ_WORKSPACE, AUD_AUTHZ_NAMESPACE } aud_authz_scope;

typedef struct {
    aud_authz_scope scope;
    const char *name;          /* workspace or namespace; NULL at cluster scope */
} aud_authz_ask;

/* Decide n questions for user: allowed[i] 1 or 0, ttl_ms[i] how long the
 * answer may be cached (0: the configured TTL). Returns KS_OK only when
 * every question got an answer; KS_ERR_UNAVAILABLE, KS_ERR_TIMEOUT, ...
 * otherwise. */
typedef ks_status (*aud_decide_fn)(void *arg, const Kscore__V1__UserInfo *user,
                                   const aud_authz_ask *asks, size_t n, int *allowed,
                                   int64_t *ttl_ms);

typedef struct aud_scope aud_scope;

/* A scope resolver over decider fn (arg passed through), caching answers
 * for at most ttl_ms (0: no caching). */
ks_status aud_scope_create(aud_decide_fn fn, void *arg, int64_t ttl_ms, aud_scope **out)
    __attribute__((warn_unused_result));
void aud_scope_destroy(aud_scope *sc);   /* NULL is a no-op */

/* The decider that asks iam: AuthzRequest {user, RequestInfo{list events at
 * that scope}} on ks.iam.authz, at most timeout_ms each; arg is a
 * aud_nats_decider. */
typedef struct {
    ks_bus *bus;
    int timeout_ms;
} aud_nats_decider;
ks_status aud_decide_nats(void *arg, const Kscore__V1__UserInfo *user, const aud_authz_ask *asks,
                          size_t n, int *allowed, int64_t *ttl_ms);

/* What user may see for query q, given the namespaces and workspaces that
 * exist (name and creation time, e.g. from the mirror). Candidates are
 * narrowed by q's namespace and workspace filters and searches before any
 * question is asked. On success *out is filled; its arrays are owned by it
 * (aud_visibility_free) and its names point into the candidates, which must
 * outlive it. Errors of the decider (the caller answers 503 or 504). */
ks_status aud_scope_resolve(aud_scope *sc, const Kscore__V1__UserInfo *user, const aud_query *q,
                            const aud_scope_entry *namespaces, size_t nns,
                            const aud_scope_entry *workspaces, size_t nws, aud_visibility *out)
    __attribute__((warn_unused_result));

void aud_visibility_free(aud_visibility *v);

/* Decisions served from the cache / asked of the decider, since start. */
uint64_t aud_scope_cache_hits(aud_scope *sc);
uint64_t aud_scope_asked(aud_scope *sc);

#endif
