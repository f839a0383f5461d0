/* consumer.h: the stream KS_AUDIT -> the audit store (docs/audit.md).
 *
 * One thread owns the store's writer connection. It makes sure the stream
 * exists, binds this replica's own durable push consumer (explicit acks)
 * and then loops: take what the delivery thread queued (up to batch_max
 * messages, waiting at most batch_wait_ms after the first), put it in
 * stream order, append it in one transaction, and only after COMMIT ack
 * each message. Hence a crash before the commit loses nothing (the
 * messages are redelivered) and a redelivery after it stores nothing twice
 * (a sequence at or below the store's position is acked and dropped;
 * audit IDs are UNIQUE besides).
 *
 * The store takes sequences strictly in order, and the durable resumes
 * where the store ends: at start, unless the durable's record matches the
 * store exactly (acked up to the store's position, nothing delivered and
 * unacked), it is created again at the store's position. So messages that
 * a killed process received but never committed come at once (not after
 * their ack wait), and a store behind its durable (restored from a backup,
 * or a new file) is filled from the stream. A message that still arrives
 * beyond the next expected sequence makes the consumer read the missing
 * sequences back from the stream; a sequence the stream no longer holds is
 * recorded as a gap (aud_gaps, a metric and a log line). A stream that was
 * recreated under the store (its creation time or last sequence disagree
 * with the store) stops the consumer: /readyz says why, nothing is acked. */
#ifndef AUD_CONSUMER_H
#define AUD_CONSUMER_H

#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "status.h"
#include "store.h"

#include "audit_stream.h"

#define AUD_STREAM KS_AUDIT_STREAM
#define AUD_STREAM_SUBJECTS KS_AUDIT_STREAM_SUBJECTS

typedef struct {
    const char *durable;          /* this replica's durable consumer name */
    int64_t max_age_ms;           /* stream retention by age (0: unlimited) */
    int64_t max_bytes;            /* stream retention by size (0: unlimited) */
    int replicas;                 /* stream replicas */
    size_t batch_max;             /* events per transaction */
    int batch_wait_ms;            /* longest wait for a batch to fill */
    int64_t ack_wait_ms;          /* redelivery of an unacked message */
    int64_t max_ack_pending;      /* delivered but unacked messages, at most */
    int lag_interval_ms;          /* how often lag metrics are refreshed (0 = 2000) */
} aud_consumer_cfg;

typedef struct aud_consumer aud_consumer;

/* Start the consumer thread on bus, writing into store (a writer store the
 * consumer then owns until aud_consumer_stop). Returns at once: the stream
 * and the consumer are set up in the background, retried while NATS or
 * JetStream is away. cfg's strings must outlive the consumer. */
ks_status aud_consumer_start(ks_bus *bus, aud_store *store, const aud_consumer_cfg *cfg,
                             aud_consumer **out) __attribute__((warn_unused_result));

/* Commit and ack what was already received, stop the threads,
 * unsubscribe and free. The store is not closed. NULL is a no-op. */
void aud_consumer_stop(aud_consumer *c);

/* A ks_service_ready_fn: 1 once the consumer is bound; else 0 and why. */
int aud_consumer_ready(void *c, char *why, size_t whycap);

/* The store's position (last stored sequence) as the consumer knows it. */
uint64_t aud_consumer_position(aud_consumer *c);

#endif
