/* bus.h: the NATS message bus of libkscore (core NATS, JetStream, KV).
 *
 * Everything that touches cnats lives behind this interface, so a newer cnats
 * is a rebuild, not a rewrite. The workarounds for the defects of Debian 12's
 * cnats 3.4.1 are applied here, once, for every connection (docs/bus.md):
 *   - natsOptions_SetSendAsap(true): replies do not wait ~1 ms in the flusher;
 *   - an error handler that logs and counts slow-consumer drops
 *     (metric ks_bus_slow_consumer_total);
 *   - natsOptions_UseGlobalMessageDelivery(false), explicitly, so a callback
 *     that makes a request cannot deadlock the size-1 global pool (even when
 *     NATS_DEFAULT_TO_LIB_MSG_DELIVERY is set in the environment);
 *   - ks_bus_destroy() waits for the closed callback and for every
 *     subscription's completion before freeing anything the callbacks use
 *     (nats.c issue 735);
 *   - every asynchronous JetStream publish carries jsPubOptions.MaxWait, so a
 *     lost ack ends as a timeout instead of staying pending forever;
 *   - pull consumers fetch one message per call (nats.c issue 749: a batch
 *     above 1 overflows the heap in 3.4.1); the batch size is not exposed.
 *
 * Threads: each subscription gets its own delivery thread (cnats default), so
 * a handler may block or make requests. Handlers of one subscription run one
 * at a time, in order. */
#ifndef KS_BUS_H
#define KS_BUS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct ks_bus ks_bus;
typedef struct ks_bus_sub ks_bus_sub;
typedef struct ks_bus_msg ks_bus_msg;   /* a received message */
typedef struct ks_bus_kv ks_bus_kv;
typedef struct ks_bus_kv_watcher ks_bus_kv_watcher;

typedef enum {
    KS_BUS_CONNECTED = 0,
    KS_BUS_DISCONNECTED,
    KS_BUS_RECONNECTED,
    KS_BUS_CLOSED,
} ks_bus_state;

/* Called from a cnats thread on connection state changes. */
typedef void (*ks_bus_state_fn)(void *arg, ks_bus_state state);

/* Result of an asynchronous JetStream publish: st is KS_OK (seq set),
 * KS_ERR_TIMEOUT (no ack within MaxWait) or another failure. msg_id is the
 * Nats-Msg-Id given to ks_bus_js_publish_async ("" if none). Runs on a cnats
 * thread; must not block for long. */
typedef void (*ks_bus_ack_fn)(void *arg, const char *subject, const char *msg_id,
                              ks_status st, uint64_t seq);

typedef struct {
    const char *url;            /* comma-separated server URLs; required */
    const char *name;           /* connection name shown by the server */
    int connect_timeout_ms;     /* 0 = 2000 */
    int reconnect_wait_ms;      /* 0 = 250; reconnects are unlimited */
    int max_pending_msgs;       /* per subscription before slow consumer; 0 = 65536 */
    int js_max_wait_ms;         /* JetStream API and async-ack wait; 0 = 5000 */
    int wait_connected;         /* 1: fail if the first connect fails; 0: keep
                                   trying in the background and return at once */
    ks_bus_state_fn on_state;   /* optional */
    void *state_arg;
    ks_bus_ack_fn on_ack;       /* optional: results of ks_bus_js_publish_async */
    void *ack_arg;
} ks_bus_opts;

/* Connect. With wait_connected=0 a server that is down at start is not an
 * error: the connection comes up when the server does. */
ks_status ks_bus_connect(const ks_bus_opts *opts, ks_bus **out)
    __attribute__((warn_unused_result));

/* Close the connection, wait (up to 5 s) until cnats has delivered its last
 * callback, then free everything. Subscriptions still open are closed. NULL is
 * a no-op. Must not be called from a bus callback. */
void ks_bus_destroy(ks_bus *bus);

/* Close the connection now and wait (up to 5 s) for cnats's last callback,
 * but free nothing: later calls fail at once with KS_ERR_CLOSED instead of
 * waiting for a server that is away. For shutdown, before destroying the
 * things that use the bus. Idempotent. */
void ks_bus_close(ks_bus *bus);

/* 1 while connected to a server. */
int ks_bus_is_connected(ks_bus *bus);

/* Flush pending writes to the server and wait for its PONG. */
ks_status ks_bus_flush(ks_bus *bus, int timeout_ms);

/* ---- core NATS ---- */

ks_status ks_bus_publish(ks_bus *bus, const char *subject, const void *data, size_t len);

/* Publish with a reply subject: a request whose answers the caller gathers
 * itself on a subscription of its own (several may answer, as on $SRV.INFO;
 * the gateway's discovery scan does this). */
ks_status ks_bus_publish_reply(ks_bus *bus, const char *subject, const char *reply,
                               const void *data, size_t len);

/* Request/reply with a deadline. On success *reply is the answer (caller
 * destroys it). KS_ERR_NO_RESPONDERS when nobody listens, KS_ERR_TIMEOUT when
 * nobody answered in time. */
ks_status ks_bus_request(ks_bus *bus, const char *subject, const void *data, size_t len,
                         int timeout_ms, ks_bus_msg **reply) __attribute__((warn_unused_result));

/* Result of an asynchronous request: st is KS_OK (reply set; the callback
 * owns it and must ks_bus_msg_destroy it), KS_ERR_NO_RESPONDERS,
 * KS_ERR_TIMEOUT or KS_ERR_CLOSED (reply NULL). Runs on the bus's reply or
 * timer thread: keep it short, never block. */
typedef void (*ks_bus_reply_fn)(ks_status st, ks_bus_msg *reply, void *arg);

/* Send a request without waiting: cb is called exactly once, with the
 * reply, or at the deadline (timeout_ms), or with KS_ERR_CLOSED when the bus
 * is destroyed first. All requests of a bus share one reply subscription
 * (_INBOX.<id>.*), so thousands may be in flight. On a non-OK return cb is
 * never called: KS_ERR_TOO_LARGE above the server's max_payload,
 * KS_ERR_CLOSED or KS_ERR_UNAVAILABLE when it cannot be sent. */
ks_status ks_bus_request_async(ks_bus *bus, const char *subject, const void *data, size_t len,
                               int timeout_ms, ks_bus_reply_fn cb, void *arg)
    __attribute__((warn_unused_result));

/* Requests sent with ks_bus_request_async still waiting for an answer. */
size_t ks_bus_requests_in_flight(ks_bus *bus);

/* Handler of a subscription. It owns msg and must ks_bus_msg_destroy() it
 * (possibly later, from another thread, e.g. after a batch commit). */
typedef void (*ks_bus_handler)(ks_bus *bus, ks_bus_msg *msg, void *arg);

/* Subscribe to subject (wildcards allowed), in queue group `queue` when not
 * NULL. arg must stay valid until ks_bus_unsubscribe or ks_bus_destroy
 * returns. */
ks_status ks_bus_subscribe(ks_bus *bus, const char *subject, const char *queue,
                           ks_bus_handler handler, void *arg, ks_bus_sub **out)
    __attribute__((warn_unused_result));

/* Stop a subscription and wait (up to 5 s) until its last handler has
 * returned, so arg may be freed afterwards; called from the subscription's own
 * handler it does not wait. The handle is invalid afterwards. NULL is a no-op. */
void ks_bus_unsubscribe(ks_bus_sub *sub);

/* Set the pending limit of one subscription (messages); beyond it messages
 * are dropped and counted as slow-consumer drops. */
ks_status ks_bus_sub_set_pending_limit(ks_bus_sub *sub, int msgs);

/* Messages this subscription dropped because its handler was too slow. */
int64_t ks_bus_sub_dropped(ks_bus_sub *sub);

/* Answer a request message. KS_ERR_INVALID if msg has no reply subject. */
ks_status ks_bus_respond(ks_bus *bus, ks_bus_msg *msg, const void *data, size_t len);

const char *ks_bus_msg_subject(const ks_bus_msg *msg);
const char *ks_bus_msg_reply(const ks_bus_msg *msg);   /* NULL if none */
const void *ks_bus_msg_data(const ks_bus_msg *msg);
size_t ks_bus_msg_len(const ks_bus_msg *msg);
/* Value of a header, or NULL. Valid while msg lives. */
const char *ks_bus_msg_header(ks_bus_msg *msg, const char *name);
void ks_bus_msg_destroy(ks_bus_msg *msg);             /* NULL is a no-op */

/* Slow-consumer events counted by this process's error handler. cnats reports
 * one when a subscription starts dropping, not one per message (a flood of 189
 * drops is one event); ks_bus_sub_dropped counts the messages. */
int64_t ks_bus_slow_consumer_events(void);

/* ---- JetStream ---- */

typedef struct {
    const char *name;
    const char *const *subjects;
    size_t nsubjects;
    int64_t max_age_ms;          /* 0 = unlimited */
    int64_t max_bytes;           /* 0 = unlimited */
    int64_t duplicate_window_ms; /* 0 = server default (2 min) */
    int replicas;                /* 0 = 1 */
    int memory_storage;          /* 0 = file storage */
} ks_bus_stream_cfg;

/* Create the stream, or update it to cfg when it exists. */
ks_status ks_bus_stream_ensure(ks_bus *bus, const ks_bus_stream_cfg *cfg)
    __attribute__((warn_unused_result));
ks_status ks_bus_stream_delete(ks_bus *bus, const char *name);

/* Publish and wait for the stream's ack. msg_id (may be NULL) becomes
 * Nats-Msg-Id. *seq (may be NULL) receives the stream sequence, *duplicate
 * (may be NULL) whether the server dropped it as a duplicate. */
ks_status ks_bus_js_publish(ks_bus *bus, const char *subject, const void *data, size_t len,
                            const char *msg_id, uint64_t *seq, int *duplicate)
    __attribute__((warn_unused_result));

/* Publish without waiting; the result reaches opts.on_ack. MaxWait is always
 * set (js_max_wait_ms), so every publish ends in an ack or a timeout. */
ks_status ks_bus_js_publish_async(ks_bus *bus, const char *subject, const void *data,
                                  size_t len, const char *msg_id)
    __attribute__((warn_unused_result));

/* Wait until every async publish has ended (acked or failed), at most
 * timeout_ms. KS_ERR_TIMEOUT if some are still pending. */
ks_status ks_bus_js_publish_async_complete(ks_bus *bus, int timeout_ms);

typedef struct {
    const char *stream;
    const char *durable;         /* required: the consumer survives restarts */
    const char *filter_subject;  /* NULL = all of the stream */
    int64_t ack_wait_ms;         /* 0 = 30 s */
    int64_t max_ack_pending;     /* 0 = 1000 */
    int max_deliver;             /* 0 = unlimited */
} ks_bus_consumer_cfg;

/* Push consumer with explicit acks: handler receives every message and must
 * ack (ks_bus_msg_ack) once it is safe. Redelivered after ack_wait if not. */
ks_status ks_bus_js_subscribe(ks_bus *bus, const ks_bus_consumer_cfg *cfg,
                              ks_bus_handler handler, void *arg, ks_bus_sub **out)
    __attribute__((warn_unused_result));

/* Pull consumer; messages come from ks_bus_js_fetch_one. */
ks_status ks_bus_js_pull_subscribe(ks_bus *bus, const ks_bus_consumer_cfg *cfg,
                                   ks_bus_sub **out) __attribute__((warn_unused_result));

/* Fetch exactly one message (the only safe batch size on cnats 3.4.1).
 * KS_ERR_TIMEOUT when none arrived in time. */
ks_status ks_bus_js_fetch_one(ks_bus_sub *sub, int timeout_ms, ks_bus_msg **out)
    __attribute__((warn_unused_result));

ks_status ks_bus_msg_ack(ks_bus_msg *msg);        /* fire and forget */
ks_status ks_bus_msg_ack_sync(ks_bus_msg *msg);   /* wait for the server */
ks_status ks_bus_msg_nak(ks_bus_msg *msg, int64_t delay_ms);
ks_status ks_bus_msg_term(ks_bus_msg *msg);
/* Stream sequence and delivery count of a JetStream message. */
ks_status ks_bus_msg_js_meta(ks_bus_msg *msg, uint64_t *stream_seq, uint64_t *delivered);

/* ---- KV ---- */

typedef struct {
    const char *bucket;
    int history;                /* 0 = 1 */
    int replicas;               /* 0 = 1 */
    int64_t max_bytes;          /* 0 = unlimited */
    int64_t ttl_ms;             /* 0 = none */
    int memory_storage;
} ks_bus_kv_cfg;

/* Open a bucket, creating it with cfg when create != 0 and it is missing. */
ks_status ks_bus_kv_open(ks_bus *bus, const ks_bus_kv_cfg *cfg, int create, ks_bus_kv **out)
    __attribute__((warn_unused_result));
void ks_bus_kv_close(ks_bus_kv *kv);               /* NULL is a no-op */

ks_status ks_bus_kv_put(ks_bus_kv *kv, const char *key, const void *data, size_t len,
                        uint64_t *revision);
/* Put only if the key's last revision is `last` (0: only if absent).
 * KS_ERR_CONFLICT otherwise. */
ks_status ks_bus_kv_update(ks_bus_kv *kv, const char *key, const void *data, size_t len,
                           uint64_t last, uint64_t *revision);
ks_status ks_bus_kv_delete(ks_bus_kv *kv, const char *key);

typedef enum { KS_BUS_KV_PUT = 0, KS_BUS_KV_DELETE, KS_BUS_KV_PURGE } ks_bus_kv_op;

typedef struct {
    const char *key;
    const void *value;
    size_t len;
    uint64_t revision;
    int64_t created_unix_ns;
    ks_bus_kv_op op;
} ks_bus_kv_entry;

/* Get a key's latest value into a malloc'd copy (*value, caller frees).
 * KS_ERR_NOT_FOUND when absent or deleted. */
ks_status ks_bus_kv_get(ks_bus_kv *kv, const char *key, void **value, size_t *len,
                        uint64_t *revision) __attribute__((warn_unused_result));

/* The bucket's last revision (its stream's last sequence; 0 when empty):
 * every change up to it is in the bucket. One JetStream API round trip,
 * waiting at most timeout_ms (0: js_max_wait_ms); a stream whose leader is
 * being elected (a NATS node lost) answers KS_ERR_TIMEOUT meanwhile. */
ks_status ks_bus_kv_last_revision(ks_bus_kv *kv, int timeout_ms, uint64_t *revision)
    __attribute__((warn_unused_result));

/* Called for each entry of a watch, on the watch's own thread. entry == NULL
 * marks the end of the initial values (sent once, also for an empty bucket). */
typedef void (*ks_bus_kv_watch_fn)(const ks_bus_kv_entry *entry, void *arg);

/* Watch keys (NATS wildcards; ">" for all): first the current value of every
 * key, then NULL, then every change. */
ks_status ks_bus_kv_watch(ks_bus_kv *kv, const char *keys, ks_bus_kv_watch_fn fn, void *arg,
                          ks_bus_kv_watcher **out) __attribute__((warn_unused_result));
/* Stop a watch and join its thread; fn is not called after this returns.
 * Takes up to 100 ms (the thread's poll interval). NULL is a no-op. */
void ks_bus_kv_watch_stop(ks_bus_kv_watcher *w);

#endif
