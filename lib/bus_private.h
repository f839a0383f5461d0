/* bus_private.h: the inside of ks_bus, shared by the files of the bus
 * (bus.c, bus_async.c) and nothing else. */
#ifndef KS_BUS_PRIVATE_H
#define KS_BUS_PRIVATE_H

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "bus.h"

typedef struct bus_async bus_async;

struct ks_bus {
    natsConnection *nc;
    natsOptions *opts;
    jsCtx *js;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int closed;             /* the closed callback fired */
    int live_subs;          /* subscriptions whose completion is pending */
    ks_bus_sub *subs;
    ks_bus_state_fn on_state;
    void *state_arg;
    ks_bus_ack_fn on_ack;
    void *ack_arg;
    int64_t js_wait_ms;
    atomic_int connected;
    atomic_int closing;     /* ks_bus_destroy started: disconnects are expected */
    bus_async *async;       /* ks_bus_request_async state, created on first use */
    pthread_mutex_t async_mu;
};

/* Fail every pending async request with KS_ERR_CLOSED and free the state
 * (bus_async.c); called by ks_bus_destroy after the connection closed. */
void bus_async_destroy(ks_bus *bus);

#endif
