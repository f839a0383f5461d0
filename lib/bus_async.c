/* bus_async.c: many requests in flight on one reply subscription.
 *
 * Each request gets a token; its reply subject is <inbox>.<token>, and one
 * wildcard subscription <inbox>.* receives every answer. A timer thread
 * fails requests whose deadline passed. The callback of a request runs
 * exactly once: whoever removes the token from the pending map calls it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus_private.h"
#include "log.h"
#include "metrics.h"
#include "strmap.h"

#define ASYNC_TICK_MS 5

typedef struct {
    ks_bus_reply_fn cb;
    void *arg;
    int64_t deadline_ms;   /* CLOCK_MONOTONIC */
} pending_req;

struct bus_async {
    ks_bus *bus;
    char inbox[128];       /* "_INBOX.<nuid>" */
    ks_bus_sub *sub;
    pthread_mutex_t mu;    /* pending, next_token, stopping */
    pthread_cond_t cond;
    ks_strmap *pending;    /* token -> pending_req */
    uint64_t next_token;
    int stopping;
    pthread_t timer;
    ks_metric *m_timeouts;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_reply(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    bus_async *a = arg;
    const char *subject = ks_bus_msg_subject(msg);
    const char *token = strrchr(subject, '.');
    pending_req *p;

    pthread_mutex_lock(&a->mu);
    p = token ? ks_strmap_take(a->pending, token + 1) : NULL;
    pthread_mutex_unlock(&a->mu);
    if (p == NULL) { /* late: the request already timed out */
        ks_bus_msg_destroy(msg);
        return;
    }
    if (natsMsg_IsNoResponders((natsMsg *)msg)) {
        ks_bus_msg_destroy(msg);
        p->cb(KS_ERR_NO_RESPONDERS, NULL, p->arg);
    } else {
        p->cb(KS_OK, msg, p->arg);
    }
    free(p);
}

typedef struct {
    int64_t now;
    pending_req *expired[256];
    char keys[256][24];
    size_t n;
} expire_scan;

static int collect_expired(const char *key, void *value, void *arg)
{
    expire_scan *es = arg;
    pending_req *p = value;

    if (p->deadline_ms > es->now)
        return 0;
    snprintf(es->keys[es->n], sizeof(es->keys[0]), "%s", key);
    es->expired[es->n++] = p;
    return es->n == sizeof(es->expired) / sizeof(es->expired[0]);
}

static void *timer_main(void *arg)
{
    bus_async *a = arg;

    pthread_mutex_lock(&a->mu);
    while (!a->stopping) {
        struct timespec ts;
        expire_scan es;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += ASYNC_TICK_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&a->cond, &a->mu, &ts);
        if (a->stopping || ks_strmap_size(a->pending) == 0)
            continue;
        do {
            es.now = mono_ms();
            es.n = 0;
            ks_strmap_each(a->pending, collect_expired, &es);
            for (size_t i = 0; i < es.n; i++)
                ks_strmap_take(a->pending, es.keys[i]);
            pthread_mutex_unlock(&a->mu);
            for (size_t i = 0; i < es.n; i++) {
                ks_metric_inc(a->m_timeouts);
                es.expired[i]->cb(KS_ERR_TIMEOUT, NULL, es.expired[i]->arg);
                free(es.expired[i]);
            }
            pthread_mutex_lock(&a->mu);
        } while (es.n == sizeof(es.expired) / sizeof(es.expired[0]));
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* Create the shared state on first use; the caller holds bus->async_mu. */
static ks_status async_init(ks_bus *bus)
{
    bus_async *a;
    natsInbox *inbox = NULL;
    char subject[160];
    ks_status st;

    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "async requests");
    a->bus = bus;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cond, NULL);
    a->pending = ks_strmap_create(free);
    if (a->pending == NULL || natsInbox_Create(&inbox) != NATS_OK) {
        st = KS_FAIL(KS_ERR_NOMEM, "async requests");
        goto fail;
    }
    snprintf(a->inbox, sizeof(a->inbox), "%s", (const char *)inbox);
    natsInbox_Destroy(inbox);
    snprintf(subject, sizeof(subject), "%s.*", a->inbox);
    a->m_timeouts = ks_metrics_counter("ks_bus_request_timeouts_total",
                                       "asynchronous requests that got no answer in time", NULL);
    st = ks_bus_subscribe(bus, subject, NULL, on_reply, a, &a->sub);
    if (st)
        goto fail;
    if (pthread_create(&a->timer, NULL, timer_main, a) != 0) {
        ks_bus_unsubscribe(a->sub);
        st = KS_FAIL(KS_ERR_INTERNAL, "cannot start the request timer");
        goto fail;
    }
    bus->async = a;
    return KS_OK;
fail:
    ks_strmap_destroy(a->pending);
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->mu);
    free(a);
    return st;
}

ks_status ks_bus_request_async(ks_bus *bus, const char *subject, const void *data, size_t len,
                               int timeout_ms, ks_bus_reply_fn cb, void *arg)
{
    char token[24], reply[160];
    pending_req *p;
    bus_async *a;
    natsStatus ns;
    ks_status st;

    if (len > INT32_MAX)
        return KS_FAIL(KS_ERR_TOO_LARGE, "request of %zu bytes", len);
    if (atomic_load(&bus->closing))
        return KS_FAIL(KS_ERR_CLOSED, "the bus is closing");
    pthread_mutex_lock(&bus->async_mu);
    st = bus->async ? KS_OK : async_init(bus);
    a = bus->async;
    pthread_mutex_unlock(&bus->async_mu);
    if (st)
        return st;
    p = malloc(sizeof(*p));
    if (p == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "request");
    p->cb = cb;
    p->arg = arg;
    p->deadline_ms = mono_ms() + timeout_ms;
    pthread_mutex_lock(&a->mu);
    snprintf(token, sizeof(token), "%llx", (unsigned long long)++a->next_token);
    st = ks_strmap_put(a->pending, token, p);
    pthread_mutex_unlock(&a->mu);
    if (st) {
        free(p);
        return st;
    }
    snprintf(reply, sizeof(reply), "%s.%s", a->inbox, token);
    ns = natsConnection_PublishRequest(bus->nc, subject, reply, data, (int)len);
    if (ns != NATS_OK) {
        /* Not sent: take it back unless an answer raced in (impossible
         * without a publish, but the timer may have fired). */
        pthread_mutex_lock(&a->mu);
        p = ks_strmap_take(a->pending, token);
        pthread_mutex_unlock(&a->mu);
        if (p == NULL)
            return KS_OK; /* the timer already called back */
        free(p);
        if (ns == NATS_MAX_PAYLOAD)
            return KS_FAIL(KS_ERR_TOO_LARGE, "%s: payload over the server's limit", subject);
        return KS_FAIL(ns == NATS_CONNECTION_CLOSED ? KS_ERR_CLOSED : KS_ERR_UNAVAILABLE,
                       "%s: %s", subject, natsStatus_GetText(ns));
    }
    return KS_OK;
}

size_t ks_bus_requests_in_flight(ks_bus *bus)
{
    bus_async *a;
    size_t n = 0;

    pthread_mutex_lock(&bus->async_mu);
    a = bus->async;
    pthread_mutex_unlock(&bus->async_mu);
    if (a != NULL) {
        pthread_mutex_lock(&a->mu);
        n = ks_strmap_size(a->pending);
        pthread_mutex_unlock(&a->mu);
    }
    return n;
}

static int fail_closed(const char *key, void *value, void *arg)
{
    pending_req *p = value;
    p->cb(KS_ERR_CLOSED, NULL, p->arg);
    return 0;
}

void bus_async_destroy(ks_bus *bus)
{
    bus_async *a = bus->async;

    if (a == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    a->stopping = 1;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->timer, NULL);
    /* The reply subscription has completed (the connection is closed), so
     * nothing else touches pending now. */
    ks_strmap_each(a->pending, fail_closed, NULL);
    ks_strmap_destroy(a->pending);
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->mu);
    free(a);
    bus->async = NULL;
}
