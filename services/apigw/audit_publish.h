/* audit_publish.h: the gateway's audit events -> JetStream, losing none.
 *
 * Request threads hand packed AuditEvents to gw_audit_pub_submit, which
 * queues them (bounded) and returns. One publisher thread, with a NATS
 * connection of its own, works in rounds:
 *   direct mode    take up to `window` queued events, publish each
 *                  asynchronously with Nats-Msg-Id = its auditID, wait until
 *                  every one is acknowledged or has failed. The failed ones
 *                  are published again (same Nats-Msg-Id) while connected,
 *                  for up to retry_ms (a stream leader lost with its NATS
 *                  node is replaced within seconds); what still fails (no
 *                  connection, no ack, the stream refusing) goes to the
 *                  spool, in order, and the publisher switches to spool mode.
 *   spool mode     every queued event is appended to the spool on disk
 *                  (audit_spool.h; one fdatasync per batch), and while NATS is
 *                  connected the spool is drained oldest first in rounds of
 *                  `window`, released only once acknowledged. When it is
 *                  empty, direct mode resumes. Events therefore reach the
 *                  stream in the order they were submitted, except within a
 *                  round that failed part-way.
 * A republished event carries the same auditID, so JetStream's duplicate
 * window, and after it the audit store's unique auditID, keep it single.
 *
 * Loss paths, each counted in ks_gateway_audit_events_lost_total{reason} and
 * logged: the queue stayed full for queue_wait_ms (reason "queue_full"), the
 * spool refused an append (disk error or its size cap: "spool"), and an
 * event that could not be framed ("encode"). Nothing else drops an event.
 *
 * With a `done` callback (strict mode), submit reports whether the event
 * was acknowledged by JetStream: done(arg, 1) after the ack, done(arg, 0)
 * when it went to the spool instead or was lost. It runs on the publisher
 * thread and must not block. */
#ifndef GW_AUDIT_PUBLISH_H
#define GW_AUDIT_PUBLISH_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct gw_audit_pub gw_audit_pub;

typedef struct {
    const char *nats_url;
    const char *spool_dir;         /* locked: one gateway process per directory */
    uint64_t spool_max_bytes;      /* 0 = no cap */
    size_t queue_max;              /* events waiting for the publisher */
    int64_t queue_wait_ms;         /* a full queue blocks submit this long, then the event is lost */
    size_t window;                 /* events per publish round */
    int ack_timeout_ms;            /* JetStream ack wait */
    int64_t retry_ms;              /* a failed round is published again this long, then spooled */
    /* the stream, when the gateway has to create it */
    int64_t stream_max_age_ms;
    int64_t stream_max_bytes;
    int stream_replicas;
} gw_audit_pub_cfg;

typedef void (*gw_audit_done_fn)(void *arg, int acked);

/* Open the spool (recovering a torn tail), connect (in the background: a
 * NATS server that is down is not an error), start the thread. An existing
 * spool is drained first. KS_ERR_IO naming the directory when the spool
 * cannot be opened or is locked by another process. */
ks_status gw_audit_pub_start(const gw_audit_pub_cfg *cfg, gw_audit_pub **out)
    __attribute__((warn_unused_result));

/* Queue one event. subject, msg_id and data are copied. Never fails
 * silently: KS_OK (queued), or an error after counting and logging the
 * loss; done, when given, is called exactly once either way. */
ks_status gw_audit_pub_submit(gw_audit_pub *p, const char *subject, const char *msg_id,
                              const void *data, size_t len, gw_audit_done_fn done, void *arg);

/* An event that could not be built (out of memory): count and log the
 * loss (reason "encode"); done, when given, gets 0. */
void gw_audit_pub_lost(gw_audit_pub *p, const char *msg_id, gw_audit_done_fn done, void *arg);

/* 1 when events go straight to JetStream (connected, spool empty). */
int gw_audit_pub_direct(gw_audit_pub *p);

/* Stop: publish what is queued within grace_ms, spool the rest, close the
 * connection and the spool. NULL is a no-op. */
void gw_audit_pub_stop(gw_audit_pub *p, int grace_ms);

#endif
