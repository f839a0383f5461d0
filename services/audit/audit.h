/* audit.h: the parts of kscore-audit and what they share (DESIGN.md §7,
 * docs/audit.md).
 *
 *   consumer.c  stream KS_AUDIT -> store, acks after commit
 *   store.c     SQLite schema, batches, hash chain, verify, retention
 *   sweeper.c   the retention thread
 *   query.c     KubeSphere's query parameters -> SQL -> JSON
 *   scope.c     what the caller may see (ks.iam.authz, cached)
 *   api.c       the query API on NATS (ks.api.<group>.<version>[.auditing])
 *   event.c     AuditEvent -> columns and JSON
 *   main.c      settings, start and stop, `kscore-audit verify` */
#ifndef AUD_AUDIT_H
#define AUD_AUDIT_H

#include <stddef.h>

#include "consumer.h"
#include "scope.h"
#include "service.h"
#include "store.h"
#include "sweeper.h"

typedef struct {
    ks_service_common common;
    char *db_path;
    char *consumer;             /* durable name; NULL: derived (aud_default_durable) */
    long long batch_size;
    long long batch_wait_ms;
    long long max_age_ms;
    long long max_bytes;
    long long stream_replicas;
    long long ack_wait_ms;
    long long max_ack_pending;
    int sync_full;
    long long api_workers;
    long long query_timeout_ms;
    long long scope_cache_ttl_ms;
    long long sweep_interval_ms;
} aud_config;

typedef struct aud_api aud_api;

typedef struct {
    aud_config *cfg;
    ks_service *svc;
    ks_bus *bus;
    ks_mirror_cache *mirror;
    char durable[128];
    aud_store *writer;
    aud_consumer *consumer;
    aud_sweeper *sweeper;
    aud_scope *scope;
    aud_nats_decider decider;
    aud_api *api;
} aud_service;

/* The API subjects and their ks.api.groups announcement (docs/subjects.md:
 * a prefixed entry gets the prefix as extra subject tokens). */
#define AUD_ANNOUNCE "tenant.kubesphere.io/v1alpha2/auditing,auditing.kubesphere.io/v1alpha1"
#define AUD_SUBJECT_TENANT "ks.api.tenant_kubesphere_io.v1alpha2.auditing"
#define AUD_SUBJECT_AUDITING "ks.api.auditing_kubesphere_io.v1alpha1"
#define AUD_QUEUE "audit"

/* Serve the query API: per subject, cfg->api_workers endpoints in queue
 * group "audit", each with its own read connection to the store. */
ks_status aud_api_start(aud_service *a, aud_api **out) __attribute__((warn_unused_result));
void aud_api_stop(aud_api *api);   /* NULL is a no-op */

/* "audit-<host>-<8 hex of the store's absolute path>", characters outside
 * [A-Za-z0-9_-] as '-': distinct per replica (each has its own file), stable
 * across restarts. */
void aud_default_durable(const char *db_path, char *out, size_t cap);

#endif
