/* leader.h: leader election on a coordination.k8s.io/v1 Lease, with
 * client-go's leaderelection semantics (docs/leader-election.md).
 *
 * One elector = one thread that, until ks_leader_stop():
 *   - standing by: every retry period (plus up to 20% jitter) GETs the Lease
 *     (creating it when it is missing) and takes it over when it is free or
 *     expired, with a PUT carrying the observed resourceVersion;
 *   - leading: renews every retry period. When no renewal succeeds within the
 *     renew deadline, or a read shows that someone else holds the Lease, it
 *     stops leading (on_stopped_leading) and stands by again.
 *
 * Expiry is judged by local observation time, never by comparing the Lease's
 * renewTime with the local clock: the elector remembers, on the monotonic
 * clock, when it last saw the Lease record change (holderIdentity,
 * leaseDurationSeconds, acquireTime, renewTime, leaseTransitions or
 * resourceVersion), and a holder's claim is expired once
 * observed + leaseDurationSeconds < now. Clocks of different machines need not
 * agree, only run at about the same rate.
 *
 * Safety: renew_deadline < lease_duration. The leader measures its renew
 * deadline from the moment it *sent* its last successful renewal, and a
 * standby cannot see that renewal before it was sent, so on_stopped_leading
 * runs before any standby can consider the Lease expired (with
 * lease_duration - renew_deadline of margin for a request in flight and
 * clock-rate drift).
 *
 * Threads: the callbacks run on the elector's thread, one at a time, in the
 * order of events. on_started_leading must return promptly (start work on
 * other threads; renewals wait for it). None may call ks_leader_stop.
 *
 * Metrics (lib/metrics.h), label lease="<namespace>/<name>":
 *   ks_leader_is_leader            gauge: electors of this process that lead
 *                                  (0 or 1 in a service; tests may run several)
 *   ks_leader_transitions_total    counter, extra label to="leader"|"standby":
 *                                  this process's electors starting / stopping
 *                                  to lead
 *   ks_leader_errors_total         counter: failed Lease reads and writes
 *                                  (a lost race, 409, is not an error)
 *
 * The pure parts (record parsing, observation, the decision, the Lease JSON,
 * MicroTime) are exposed for unit tests and tools. */
#ifndef KS_LEADER_H
#define KS_LEADER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "kube.h"
#include "status.h"

#define KS_LEADER_DEFAULT_NAMESPACE "kubesphere-system"
#define KS_LEADER_DEFAULT_NAME "kscore-reconciler"
#define KS_LEADER_DEFAULT_LEASE_MS 15000
#define KS_LEADER_DEFAULT_RENEW_MS 10000
#define KS_LEADER_DEFAULT_RETRY_MS 2000
#define KS_LEADER_MAX_DURATION_MS (3600LL * 1000LL) /* any of the three timings */

#define KS_LEADER_IDENTITY_MAX 1024  /* bytes of a holder identity, NUL excluded */
#define KS_LEADER_TIME_MAX 64        /* bytes of a stored MicroTime, NUL included */
#define KS_LEADER_RV_MAX 256         /* bytes of a resourceVersion, NUL included */
#define KS_LEADER_MICROTIME_LEN 27   /* "2006-01-02T15:04:05.000000Z" */

typedef struct ks_leader ks_leader;

typedef struct ks_leader_config {
    const char *lease_namespace; /* NULL = "kubesphere-system"; a DNS-1123 label.
                                    Never created here: the control plane creates
                                    it. While it is missing the elector logs an
                                    error and retries. */
    const char *name;            /* NULL = "kscore-reconciler"; a DNS-1123 subdomain */
    const char *identity;        /* NULL = "<hostname>_<16 random hex digits>";
                                    1..KS_LEADER_IDENTITY_MAX bytes without control
                                    characters. Must be unique among candidates. */
    int64_t lease_duration_ms;   /* 0 = 15000. Written to the Lease rounded up to
                                    whole seconds (leaseDurationSeconds). */
    int64_t renew_deadline_ms;   /* 0 = 10000. Must be < lease_duration_ms. */
    int64_t retry_period_ms;     /* 0 = 2000. Must be < renew_deadline_ms. */
    int release_on_cancel;       /* 1: ks_leader_stop() releases the Lease (holder
                                    "", leaseDurationSeconds 1) so a standby takes
                                    over within about one retry period. 0 leaves
                                    it to expire, as a crash would.
                                    ks_leader_config_init sets 1. */
    void (*on_started_leading)(void *arg);
    void (*on_stopped_leading)(void *arg);
    /* The observed holder changed: identity is the new holder (this elector's
     * own identity when it acquired, "" when the Lease was released). Valid
     * during the call only. */
    void (*on_new_leader)(const char *identity, void *arg);
    void *arg;                   /* passed to every callback */
} ks_leader_config;

/* Fill cfg with the defaults: zeroes, then release_on_cancel = 1. */
void ks_leader_config_init(ks_leader_config *cfg);

/* Validate cfg, copy it (strings included), and start the elector's thread on
 * kube, which must outlive the elector (ks_leader_stop first, then
 * ks_kube_client_destroy). Returns KS_OK; KS_ERR_INVALID for a bad namespace,
 * name, identity or timings (lease > renew deadline > retry period > 0, each at
 * most KS_LEADER_MAX_DURATION_MS); KS_ERR_NOMEM; KS_ERR_INTERNAL when the
 * thread cannot start. *out is set only on success. */
ks_status ks_leader_start(ks_kube_client *kube, const ks_leader_config *cfg, ks_leader **out)
    __attribute__((warn_unused_result));

/* 1 while this elector leads: set before on_started_leading is called, cleared
 * before on_stopped_leading is called. Lock-free; any thread. */
int ks_leader_is_leader(const ks_leader *l);

/* Copy the holder identity last observed in the Lease into buf. Returns KS_OK;
 * KS_ERR_NOT_FOUND when no Lease was read yet or it has no holder (released);
 * KS_ERR_TOO_LARGE when cap is too small; KS_ERR_INVALID for NULL arguments.
 * buf is written only on KS_OK. Any thread. */
ks_status ks_leader_current(ks_leader *l, char *buf, size_t cap)
    __attribute__((warn_unused_result));

/* This elector's identity (owned by it, valid until ks_leader_stop). */
const char *ks_leader_identity(const ks_leader *l);

/* Stop the elector and free it. Wakes its thread at once (a request in flight
 * is waited for: at most the renew deadline). If it leads: clears the leader
 * flag, calls on_stopped_leading, then, with release_on_cancel, releases the
 * Lease (a PUT with the last written resourceVersion; a 409 means someone took
 * it already and is fine). Joins the thread. NULL is a no-op. Not from a
 * callback. */
void ks_leader_stop(ks_leader *l);

/* ---- the pure parts ---------------------------------------------------- */

/* The leader election record as stored in a Lease's spec, plus the object's
 * resourceVersion. Times are kept as the strings the server returned: they
 * are compared for change, never parsed. */
typedef struct ks_leader_record {
    char holder[KS_LEADER_IDENTITY_MAX + 1]; /* "" = nobody */
    int32_t lease_duration_s;                /* absent = 0 */
    char acquire_time[KS_LEADER_TIME_MAX];   /* "" when absent */
    char renew_time[KS_LEADER_TIME_MAX];
    int32_t transitions;                     /* leaseTransitions; absent = 0 */
    char resource_version[KS_LEADER_RV_MAX]; /* "" for an object not yet created */
} ks_leader_record;

/* What the elector knows of the Lease: its last record and the local
 * monotonic time (ms) at which that record was first seen. */
typedef struct ks_leader_observation {
    ks_leader_record rec;
    int64_t observed_ms;
    int have;                 /* 0 until the first observation */
} ks_leader_observation;

typedef enum {
    KS_LEADER_WAIT = 0,  /* someone else holds an unexpired claim */
    KS_LEADER_ACQUIRE,   /* free (no holder), expired, or no Lease: take it */
    KS_LEADER_RENEW      /* we hold it: renew */
} ks_leader_action;

/* Format unix_us (microseconds since the epoch, UTC) as a metav1.MicroTime,
 * Go layout "2006-01-02T15:04:05.000000Z07:00" in UTC:
 * "2024-05-06T07:08:09.012345Z". Returns KS_OK; KS_ERR_INVALID outside years
 * 0000..9999; KS_ERR_TOO_LARGE when cap < KS_LEADER_MICROTIME_LEN + 1. out is
 * written only on KS_OK. */
ks_status ks_leader_microtime(int64_t unix_us, char *out, size_t cap);

/* Read the record of a Lease object (as kube-apiserver returns it). Absent
 * spec fields read as ""/0; negative numbers as 0. Returns KS_OK;
 * KS_ERR_PROTOCOL when lease is not an object, a field has the wrong JSON
 * type or a number is out of int32 range; KS_ERR_TOO_LARGE when a string
 * exceeds its cap. *out is written only on KS_OK. */
ks_status ks_leader_record_from_lease(const json_t *lease, ks_leader_record *out)
    __attribute__((warn_unused_result));

/* 1 when every field of a and b is equal. */
int ks_leader_record_equal(const ks_leader_record *a, const ks_leader_record *b);

/* Note that rec was read at now_ms. If it differs from the observed record
 * (or nothing was observed), it replaces it and observed_ms = now_ms: returns
 * 1. If it is the same, only the timestamp stays as it was: returns 0. */
int ks_leader_observe(ks_leader_observation *o, const ks_leader_record *rec, int64_t now_ms);

/* 1 when the observed claim has expired at now_ms:
 * observed_ms + lease_duration_s * 1000 < now_ms. A record with duration 0
 * expires as soon as time moves. Nothing observed counts as expired. */
int ks_leader_expired(const ks_leader_observation *o, int64_t now_ms);

/* The decision, like client-go's tryAcquireOrRenew: nothing observed (no
 * Lease) -> ACQUIRE; holder == self -> RENEW; holder "" or expired at now_ms
 * -> ACQUIRE; else WAIT. */
ks_leader_action ks_leader_decide(const ks_leader_observation *o, const char *self,
                                  int64_t now_ms);

/* The record to write for action (ACQUIRE or RENEW) at wall time now_us:
 * holder self, leaseDurationSeconds lease_s, renewTime now. ACQUIRE sets
 * acquireTime now and leaseTransitions = observed + 1 (0 when nothing was
 * observed, i.e. the Lease is created); RENEW keeps both (acquireTime now if
 * the observed one is empty). resource_version is the observed one (the
 * precondition of the update). Returns KS_OK; KS_ERR_INVALID for WAIT, a bad
 * self or lease_s < 1, or a time ks_leader_microtime refuses. *out is written
 * only on KS_OK. */
ks_status ks_leader_next_record(const ks_leader_observation *o, ks_leader_action action,
                                const char *self, int32_t lease_s, int64_t now_us,
                                ks_leader_record *out) __attribute__((warn_unused_result));

/* The record client-go writes on release: holder "", leaseDurationSeconds 1,
 * acquireTime = renewTime = now, leaseTransitions and resourceVersion of
 * last (the record this elector wrote last). Returns KS_OK or KS_ERR_INVALID
 * (bad time); *out is written only on KS_OK. */
ks_status ks_leader_release_record(const ks_leader_record *last, int64_t now_us,
                                   ks_leader_record *out) __attribute__((warn_unused_result));

/* Build the Lease object to write. base NULL: a new Lease
 * {apiVersion, kind, metadata{name, namespace}, spec} for a POST. base given
 * (the Lease last read or written): a deep copy keeping its metadata (labels,
 * annotations, ...) and other spec fields, with metadata.resourceVersion =
 * rec->resource_version (removed when empty) and the five record fields of
 * spec replaced (acquireTime and renewTime dropped when empty). Returns KS_OK;
 * KS_ERR_INVALID for NULL arguments or a base that is not an object;
 * KS_ERR_NOMEM. *out (a new reference) is set only on KS_OK. */
ks_status ks_leader_lease_json(const json_t *base, const char *lease_namespace, const char *name,
                               const ks_leader_record *rec, json_t **out)
    __attribute__((warn_unused_result));

/* "acquire", "renew", "wait". */
const char *ks_leader_action_name(ks_leader_action a);

#endif
