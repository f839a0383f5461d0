/* bus_replay.h: what reading a stream back needs beyond lib/bus.h: its state,
 * one stored message by sequence, the state of a durable consumer, a durable
 * push consumer created at a given sequence and bound by name, and an
 * ordered ephemeral consumer that replays a stream from a time or sequence.
 *
 * Like bus.h, this is the only other place that knows cnats (bus_replay.c,
 * through bus_private.h; bus.c is not touched). The audit service resumes
 * its durable where its store ends, reads gaps back and reports lag with
 * these; kscore-audit-tail uses the replay. docs/audit.md shows them at
 * work. */
#ifndef KS_BUS_REPLAY_H
#define KS_BUS_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "status.h"

typedef struct {
    uint64_t msgs;
    uint64_t bytes;
    uint64_t first_seq;        /* 0 when empty */
    uint64_t last_seq;         /* last sequence ever stored (also when purged) */
    int64_t created_unix_ns;   /* when the stream was created: tells a recreated stream */
} ks_bus_stream_state;

/* The state of stream `name`. KS_ERR_NOT_FOUND when it does not exist. */
ks_status ks_bus_stream_state_get(ks_bus *bus, const char *name, ks_bus_stream_state *out)
    __attribute__((warn_unused_result));

/* The message stored at seq in stream `name` (data, subject, headers), as a
 * ks_bus_msg the caller destroys. KS_ERR_NOT_FOUND when that sequence holds
 * no message (never stored, deleted, or aged out). */
ks_status ks_bus_stream_get(ks_bus *bus, const char *name, uint64_t seq, ks_bus_msg **out)
    __attribute__((warn_unused_result));

typedef struct {
    uint64_t ack_floor_stream_seq;  /* every message up to here is acknowledged */
    uint64_t delivered_stream_seq;  /* last stream sequence delivered */
    uint64_t num_pending;           /* messages not yet delivered */
    int64_t num_ack_pending;        /* delivered, not yet acknowledged */
    int64_t num_redelivered;
} ks_bus_consumer_state;

/* State of durable consumer `durable` of `stream`. KS_ERR_NOT_FOUND when the
 * consumer (or the stream) does not exist. */
ks_status ks_bus_consumer_state_get(ks_bus *bus, const char *stream, const char *durable,
                                    ks_bus_consumer_state *out)
    __attribute__((warn_unused_result));

/* Delete a consumer. KS_ERR_NOT_FOUND when it does not exist. */
ks_status ks_bus_consumer_delete(ks_bus *bus, const char *stream, const char *durable);

/* Create the durable push consumer cfg->durable of cfg->stream so that it
 * delivers from stream sequence start_seq on (0: from the first message),
 * with the settings ks_bus_js_subscribe gives a consumer it creates (explicit
 * acks, cfg's ack wait, max ack pending, max deliver and filter, a fresh
 * deliver subject): ks_bus_js_subscribe then binds to it. For a consumer
 * that must resume exactly where its owner's own records end. Fails (as
 * JetStream does) when a consumer of that name exists: delete it first. */
ks_status ks_bus_consumer_create_at(ks_bus *bus, const ks_bus_consumer_cfg *cfg, uint64_t start_seq)
    __attribute__((warn_unused_result));

/* A subscription to a stream: an ordered replay, or a push durable bound
 * by name. Stop with ks_bus_replay_stop. */
typedef struct ks_bus_replay ks_bus_replay;

typedef struct {
    const char *stream;          /* required */
    const char *filter_subject;  /* NULL = every subject of the stream */
    int64_t start_unix_ns;       /* > 0: from the first message stored at or after it */
    uint64_t start_seq;          /* > 0 (and no start time): from this sequence */
                                 /* neither: from the first message of the stream */
} ks_bus_replay_cfg;

/* Replay a stream through an ordered ephemeral consumer (no acks, in
 * stream order, gaps recovered by cnats; the server removes the consumer
 * when the subscription ends). handler receives each message (and owns it,
 * as with ks_bus_subscribe), on one delivery thread, and keeps receiving
 * new messages as they are stored. arg must stay valid until
 * ks_bus_replay_stop returns. */
ks_status ks_bus_replay_start(ks_bus *bus, const ks_bus_replay_cfg *cfg, ks_bus_handler handler,
                              void *arg, ks_bus_replay **out) __attribute__((warn_unused_result));

/* Receive the messages of the existing push durable consumer `durable` of
 * `stream` (created with ks_bus_consumer_create_at, whose filter must be
 * filter_subject): explicit acks, so handler (which owns each message, as
 * with ks_bus_subscribe) acks with ks_bus_msg_ack once it is safe, from any
 * thread, at the latest before ks_bus_replay_stop. Unlike
 * ks_bus_js_subscribe this binds whatever the consumer's deliver policy is
 * (cnats 3.4.1 refuses a bind whose options name another one). At most
 * max_pending messages wait in the client (0: 65536). */
ks_status ks_bus_durable_bind(ks_bus *bus, const char *stream, const char *durable,
                              const char *filter_subject, int max_pending,
                              ks_bus_handler handler, void *arg, ks_bus_replay **out)
    __attribute__((warn_unused_result));

/* Stop the subscription and wait (up to 5 s) until its last handler
 * returned; then free. A durable consumer stays on the server. Call before
 * ks_bus_destroy. NULL is a no-op. */
void ks_bus_replay_stop(ks_bus_replay *r);

#endif
