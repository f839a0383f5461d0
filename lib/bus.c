/* bus.c: cnats behind ks_bus. See bus.h for the defects worked around here. */
#include "bus.h"
#include "bus_private.h"

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"

#define BUS_CLOSE_WAIT_MS 5000

struct ks_bus_sub {
    ks_bus *bus;
    natsSubscription *ns;
    ks_bus_handler handler;
    void *arg;
    int released;   /* the owner gave the handle back */
    int completed;  /* cnats delivered its last callback */
    struct ks_bus_sub *next;
};

struct ks_bus_kv {
    ks_bus *bus;
    kvStore *kv;
};

struct ks_bus_kv_watcher {
    ks_bus *bus;
    kvWatcher *w;
    pthread_t thread;
    ks_bus_kv_watch_fn fn;
    void *arg;
    atomic_int stop;
};

static atomic_llong slow_consumer_events;

static ks_status from_nats(natsStatus s, const char *what)
{
    switch (s) {
    case NATS_OK:
        return KS_OK;
    case NATS_TIMEOUT:
        return KS_FAIL(KS_ERR_TIMEOUT, "%s: timeout", what);
    case NATS_NO_RESPONDERS:
        return KS_FAIL(KS_ERR_NO_RESPONDERS, "%s: no responders", what);
    case NATS_NOT_FOUND:
        return KS_FAIL(KS_ERR_NOT_FOUND, "%s: not found", what);
    case NATS_NO_MEMORY:
        return KS_FAIL(KS_ERR_NOMEM, "%s", what);
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
        return KS_FAIL(KS_ERR_INVALID, "%s: %s", what, natsStatus_GetText(s));
    case NATS_CONNECTION_CLOSED:
        return KS_FAIL(KS_ERR_CLOSED, "%s: connection closed", what);
    case NATS_NO_SERVER:
    case NATS_NOT_YET_CONNECTED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_IO_ERROR:
        return KS_FAIL(KS_ERR_UNAVAILABLE, "%s: %s", what, natsStatus_GetText(s));
    case NATS_MAX_PAYLOAD:
        return KS_FAIL(KS_ERR_TOO_LARGE, "%s: payload over the server's limit", what);
    default:
        return KS_FAIL(KS_ERR_INTERNAL, "%s: %s", what, natsStatus_GetText(s));
    }
}

/* ---- connection callbacks ---- */

static void bus_set_state(ks_bus *bus, ks_bus_state st)
{
    if (bus->on_state)
        bus->on_state(bus->state_arg, st);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    ks_bus *bus = closure;
    atomic_store(&bus->connected, 0);
    ks_metric_set(ks_metrics_gauge("ks_bus_connected", "1 while connected to NATS", NULL), 0);
    if (!atomic_load(&bus->closing))
        ks_warn("nats: disconnected");
    bus_set_state(bus, KS_BUS_DISCONNECTED);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    ks_bus *bus = closure;
    atomic_store(&bus->connected, 1);
    ks_metric_set(ks_metrics_gauge("ks_bus_connected", "1 while connected to NATS", NULL), 1);
    ks_metric_inc(ks_metrics_counter("ks_bus_reconnects_total", "NATS reconnections", NULL));
    ks_info("nats: reconnected");
    bus_set_state(bus, KS_BUS_RECONNECTED);
}

static void on_connected(natsConnection *nc, void *closure)
{
    ks_bus *bus = closure;
    atomic_store(&bus->connected, 1);
    ks_metric_set(ks_metrics_gauge("ks_bus_connected", "1 while connected to NATS", NULL), 1);
    ks_info("nats: connected");
    bus_set_state(bus, KS_BUS_CONNECTED);
}

static void on_closed(natsConnection *nc, void *closure)
{
    ks_bus *bus = closure;
    atomic_store(&bus->connected, 0);
    bus_set_state(bus, KS_BUS_CLOSED);
    pthread_mutex_lock(&bus->mu);
    bus->closed = 1;
    pthread_cond_broadcast(&bus->cond);
    pthread_mutex_unlock(&bus->mu);
}

/* cnats 3.4.1 has no default error handler: without this, slow-consumer drops
 * are silent. */
static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    if (err == NATS_SLOW_CONSUMER) {
        atomic_fetch_add(&slow_consumer_events, 1);
        ks_metric_inc(ks_metrics_counter("ks_bus_slow_consumer_total",
                                         "slow-consumer events: a subscription hit its pending limit "
                                         "and began dropping messages", NULL));
        ks_warn("nats: slow consumer, messages dropped on subject %s",
                sub ? natsSubscription_GetSubject(sub) : "?");
        return;
    }
    ks_metric_inc(ks_metrics_counter("ks_bus_async_errors_total", "asynchronous NATS errors", NULL));
    ks_warn("nats: asynchronous error: %s", natsStatus_GetText(err));
}

static void on_js_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    ks_bus *bus = closure;
    const char *msg_id = NULL;
    ks_status st = KS_OK;
    uint64_t seq = 0;

    if (msg != NULL && natsMsgHeader_Get(msg, "Nats-Msg-Id", &msg_id) != NATS_OK)
        msg_id = NULL;
    if (pa != NULL) {
        seq = pa->Sequence;
    } else if (pae != NULL) {
        st = pae->Err == NATS_TIMEOUT ? KS_ERR_TIMEOUT
             : pae->Err == NATS_NO_RESPONDERS ? KS_ERR_NO_RESPONDERS : KS_ERR_UNAVAILABLE;
        ks_metric_inc(ks_metrics_counter("ks_bus_js_publish_failures_total",
                                         "asynchronous JetStream publishes without an ack", NULL));
    }
    if (bus->on_ack)
        bus->on_ack(bus->ack_arg, msg ? natsMsg_GetSubject(msg) : "", msg_id ? msg_id : "", st, seq);
    natsMsg_Destroy(msg);
}

/* ---- connection ---- */

#define BUS_MAX_SERVERS 32

/* The server list of a comma-separated URL list ("nats://a:4222,nats://b:4222",
 * spaces around commas allowed). natsOptions_SetURL takes one URL only: with a
 * list, cnats (3.4.1 and 3.10.1 alike) tries the whole text as one address
 * and never connects. */
static natsStatus set_servers(natsOptions *opts, const char *urls)
{
    const char *list[BUS_MAX_SERVERS];
    char *copy, *tok, *next, *end;
    int n = 0;
    natsStatus ns = NATS_OK;

    if (strchr(urls, ',') == NULL)
        return natsOptions_SetURL(opts, urls);
    copy = strdup(urls);
    if (copy == NULL)
        return NATS_NO_MEMORY;
    for (tok = copy; tok != NULL; tok = next) {
        next = strchr(tok, ',');
        if (next != NULL)
            *next++ = '\0';
        while (*tok == ' ' || *tok == '\t')
            tok++;
        end = tok + strlen(tok);
        while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        if (*tok == '\0')
            continue;
        if (n == BUS_MAX_SERVERS) {
            ns = NATS_INVALID_ARG;
            break;
        }
        list[n++] = tok;
    }
    if (ns == NATS_OK)
        ns = n > 0 ? natsOptions_SetServers(opts, list, n) : NATS_INVALID_ARG;
    free(copy); /* natsOptions_SetServers keeps copies */
    return ns;
}

ks_status ks_bus_connect(const ks_bus_opts *o, ks_bus **out)
{
    ks_status st = KS_ERR_INVALID;
    ks_bus *bus = NULL;
    natsStatus ns;
    jsOptions jo;

    if (o == NULL || o->url == NULL || o->url[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "a NATS URL is required");
    bus = calloc(1, sizeof(*bus));
    if (bus == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "bus");
    pthread_mutex_init(&bus->mu, NULL);
    pthread_mutex_init(&bus->async_mu, NULL);
    pthread_cond_init(&bus->cond, NULL);
    bus->on_state = o->on_state;
    bus->state_arg = o->state_arg;
    bus->on_ack = o->on_ack;
    bus->ack_arg = o->ack_arg;
    bus->js_wait_ms = o->js_max_wait_ms > 0 ? o->js_max_wait_ms : 5000;

    ns = natsOptions_Create(&bus->opts);
    if (ns == NATS_OK) ns = set_servers(bus->opts, o->url);
    if (ns == NATS_OK && o->name) ns = natsOptions_SetName(bus->opts, o->name);
    if (ns == NATS_OK) ns = natsOptions_SetTimeout(bus->opts, o->connect_timeout_ms > 0 ? o->connect_timeout_ms : 2000);
    if (ns == NATS_OK) ns = natsOptions_SetMaxReconnect(bus->opts, -1);
    if (ns == NATS_OK) ns = natsOptions_SetReconnectWait(bus->opts, o->reconnect_wait_ms > 0 ? o->reconnect_wait_ms : 250);
    if (ns == NATS_OK) ns = natsOptions_SetReconnectJitter(bus->opts, 100, 1000);
    if (ns == NATS_OK) ns = natsOptions_SetMaxPendingMsgs(bus->opts, o->max_pending_msgs > 0 ? o->max_pending_msgs : 65536);
    if (ns == NATS_OK) ns = natsOptions_SetReconnectBufSize(bus->opts, 64 * 1024 * 1024);
    /* cnats 3.4.1 workarounds, see bus.h */
    if (ns == NATS_OK) ns = natsOptions_SetSendAsap(bus->opts, true);
    if (ns == NATS_OK) ns = natsOptions_UseGlobalMessageDelivery(bus->opts, false);
    if (ns == NATS_OK) ns = natsOptions_SetErrorHandler(bus->opts, on_async_error, bus);
    if (ns == NATS_OK) ns = natsOptions_SetClosedCB(bus->opts, on_closed, bus);
    if (ns == NATS_OK) ns = natsOptions_SetDisconnectedCB(bus->opts, on_disconnected, bus);
    if (ns == NATS_OK) ns = natsOptions_SetReconnectedCB(bus->opts, on_reconnected, bus);
    if (ns == NATS_OK && !o->wait_connected)
        ns = natsOptions_SetRetryOnFailedConnect(bus->opts, true, on_connected, bus);
    if (ns != NATS_OK) {
        st = from_nats(ns, "nats options");
        goto out;
    }

    ns = natsConnection_Connect(&bus->nc, bus->opts);
    if (ns == NATS_OK) {
        atomic_store(&bus->connected, 1);
        ks_metric_set(ks_metrics_gauge("ks_bus_connected", "1 while connected to NATS", NULL), 1);
    } else if (ns == NATS_NOT_YET_CONNECTED) {
        ks_warn("nats: %s not reachable yet, connecting in the background", o->url);
    } else {
        st = from_nats(ns, "nats connect");
        goto out;
    }

    jsOptions_Init(&jo);
    jo.Wait = bus->js_wait_ms;
    jo.PublishAsync.AckHandler = on_js_ack;
    jo.PublishAsync.AckHandlerClosure = bus;
    jo.PublishAsync.MaxPending = 65536;
    ns = natsConnection_JetStream(&bus->js, bus->nc, &jo);
    if (ns != NATS_OK) {
        st = from_nats(ns, "jetstream context");
        goto out;
    }
    *out = bus;
    bus = NULL;
    st = KS_OK;
out:
    ks_bus_destroy(bus);
    return st;
}

static int wait_until(ks_bus *bus, int (*done)(ks_bus *), int timeout_ms)
{
    struct timespec deadline;
    int ok;

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&bus->mu);
    while (!done(bus)) {
        if (pthread_cond_timedwait(&bus->cond, &bus->mu, &deadline) != 0)
            break;
    }
    ok = done(bus);
    pthread_mutex_unlock(&bus->mu);
    return ok;
}

static int bus_quiet(ks_bus *bus)
{
    return bus->closed && bus->live_subs == 0;
}

void ks_bus_destroy(ks_bus *bus)
{
    ks_bus_sub *s, *next;

    if (bus == NULL)
        return;
    ks_bus_close(bus);
    bus_async_destroy(bus);
    for (s = bus->subs; s != NULL; s = next) {
        next = s->next;
        natsSubscription_Destroy(s->ns);
        free(s);
    }
    jsCtx_Destroy(bus->js);
    natsConnection_Destroy(bus->nc);
    natsOptions_Destroy(bus->opts);
    pthread_cond_destroy(&bus->cond);
    pthread_mutex_destroy(&bus->mu);
    pthread_mutex_destroy(&bus->async_mu);
    free(bus);
}

void ks_bus_close(ks_bus *bus)
{
    if (bus == NULL || atomic_exchange(&bus->closing, 1))
        return;
    if (bus->nc != NULL) {
        natsConnection_Close(bus->nc);
        /* nats.c issue 735: callbacks may still run after Close returns; keep
         * everything they touch alive until the closed callback has fired and
         * every subscription has delivered its last message. */
        if (!wait_until(bus, bus_quiet, BUS_CLOSE_WAIT_MS))
            ks_warn("nats: callbacks still running %d ms after close", BUS_CLOSE_WAIT_MS);
    }
}

int ks_bus_is_connected(ks_bus *bus)
{
    return atomic_load(&bus->connected);
}

ks_status ks_bus_flush(ks_bus *bus, int timeout_ms)
{
    return from_nats(natsConnection_FlushTimeout(bus->nc, timeout_ms), "flush");
}

/* ---- core NATS ---- */

ks_status ks_bus_publish(ks_bus *bus, const char *subject, const void *data, size_t len)
{
    if (len > INT32_MAX)
        return KS_FAIL(KS_ERR_TOO_LARGE, "publish of %zu bytes", len);
    return from_nats(natsConnection_Publish(bus->nc, subject, data, (int)len), subject);
}

ks_status ks_bus_publish_reply(ks_bus *bus, const char *subject, const char *reply,
                               const void *data, size_t len)
{
    if (len > INT32_MAX)
        return KS_FAIL(KS_ERR_TOO_LARGE, "publish of %zu bytes", len);
    return from_nats(natsConnection_PublishRequest(bus->nc, subject, reply, data, (int)len),
                     subject);
}

ks_status ks_bus_request(ks_bus *bus, const char *subject, const void *data, size_t len,
                         int timeout_ms, ks_bus_msg **reply)
{
    natsMsg *m = NULL;
    natsStatus ns;

    if (len > INT32_MAX)
        return KS_FAIL(KS_ERR_TOO_LARGE, "request of %zu bytes", len);
    ns = natsConnection_Request(&m, bus->nc, subject, data, (int)len, timeout_ms);
    if (ns != NATS_OK)
        return from_nats(ns, subject);
    if (natsMsg_IsNoResponders(m)) {
        natsMsg_Destroy(m);
        return KS_FAIL(KS_ERR_NO_RESPONDERS, "%s: no responders", subject);
    }
    *reply = (ks_bus_msg *)m;
    return KS_OK;
}

/* The subscription whose handler runs on this thread, so that a handler that
 * unsubscribes itself does not wait for its own completion. */
static _Thread_local ks_bus_sub *current_sub;

static void sub_on_msg(natsConnection *nc, natsSubscription *ns, natsMsg *msg, void *closure)
{
    ks_bus_sub *s = closure;
    current_sub = s;
    s->handler(s->bus, (ks_bus_msg *)msg, s->arg);
    current_sub = NULL;
}

static void sub_unlink_free(ks_bus_sub *s)
{
    ks_bus_sub **pp;

    for (pp = &s->bus->subs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    free(s);
}

static void sub_on_complete(void *closure)
{
    ks_bus_sub *s = closure;
    ks_bus *bus = s->bus;

    pthread_mutex_lock(&bus->mu);
    s->completed = 1;
    bus->live_subs--;
    if (s->released)
        sub_unlink_free(s);
    pthread_cond_broadcast(&bus->cond);
    pthread_mutex_unlock(&bus->mu);
}

static ks_bus_sub *sub_new(ks_bus *bus, ks_bus_handler handler, void *arg)
{
    ks_bus_sub *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->bus = bus;
    s->handler = handler;
    s->arg = arg;
    return s;
}

/* Register a freshly created cnats subscription; on failure frees s. */
static ks_status sub_register(ks_bus_sub *s, int with_handler)
{
    ks_bus *bus = s->bus;

    pthread_mutex_lock(&bus->mu);
    s->next = bus->subs;
    bus->subs = s;
    if (with_handler)
        bus->live_subs++;
    else
        s->completed = 1;
    pthread_mutex_unlock(&bus->mu);
    if (with_handler) {
        natsStatus ns = natsSubscription_SetOnCompleteCB(s->ns, sub_on_complete, s);
        if (ns != NATS_OK) {
            ks_status st = from_nats(ns, "subscription completion callback");
            natsSubscription_Unsubscribe(s->ns);
            pthread_mutex_lock(&bus->mu);
            bus->live_subs--;
            s->completed = 1;
            pthread_mutex_unlock(&bus->mu);
            ks_bus_unsubscribe(s);
            return st;
        }
    }
    return KS_OK;
}

ks_status ks_bus_subscribe(ks_bus *bus, const char *subject, const char *queue,
                           ks_bus_handler handler, void *arg, ks_bus_sub **out)
{
    ks_bus_sub *s;
    natsStatus ns;
    ks_status st;

    if (handler == NULL)
        return KS_FAIL(KS_ERR_INVALID, "subscribe without a handler");
    s = sub_new(bus, handler, arg);
    if (s == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "subscription");
    if (queue != NULL)
        ns = natsConnection_QueueSubscribe(&s->ns, bus->nc, subject, queue, sub_on_msg, s);
    else
        ns = natsConnection_Subscribe(&s->ns, bus->nc, subject, sub_on_msg, s);
    if (ns != NATS_OK) {
        free(s);
        return from_nats(ns, subject);
    }
    st = sub_register(s, 1);
    if (st == KS_OK)
        *out = s;
    return st;
}

static int sub_done(ks_bus_sub *s)
{
    return s->completed;
}

void ks_bus_unsubscribe(ks_bus_sub *s)
{
    ks_bus *bus;
    struct timespec deadline;

    if (s == NULL)
        return;
    bus = s->bus;
    natsSubscription_Unsubscribe(s->ns);
    natsSubscription_Destroy(s->ns);
    s->ns = NULL; /* if the wait below times out, ks_bus_destroy must not release it again */
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += BUS_CLOSE_WAIT_MS / 1000;
    pthread_mutex_lock(&bus->mu);
    /* Wait for the last handler, so the caller may free arg on return;
     * except from inside this subscription's own handler. */
    while (current_sub != s && !sub_done(s)) {
        if (pthread_cond_timedwait(&bus->cond, &bus->mu, &deadline) != 0) {
            ks_warn("nats: subscription still delivering %d ms after unsubscribe",
                    BUS_CLOSE_WAIT_MS);
            break;
        }
    }
    s->released = 1;
    if (s->completed)
        sub_unlink_free(s);
    pthread_mutex_unlock(&bus->mu);
}

ks_status ks_bus_sub_set_pending_limit(ks_bus_sub *sub, int msgs)
{
    return from_nats(natsSubscription_SetPendingLimits(sub->ns, msgs, -1), "pending limits");
}

int64_t ks_bus_sub_dropped(ks_bus_sub *sub)
{
    int64_t n = 0;
    if (natsSubscription_GetDropped(sub->ns, &n) != NATS_OK)
        return -1;
    return n;
}

ks_status ks_bus_respond(ks_bus *bus, ks_bus_msg *msg, const void *data, size_t len)
{
    const char *reply = natsMsg_GetReply((natsMsg *)msg);

    if (reply == NULL || reply[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "message on %s has no reply subject",
                       natsMsg_GetSubject((natsMsg *)msg));
    return ks_bus_publish(bus, reply, data, len);
}

const char *ks_bus_msg_subject(const ks_bus_msg *msg)
{
    return natsMsg_GetSubject((const natsMsg *)msg);
}

const char *ks_bus_msg_reply(const ks_bus_msg *msg)
{
    const char *r = natsMsg_GetReply((const natsMsg *)msg);
    return (r && r[0]) ? r : NULL;
}

const void *ks_bus_msg_data(const ks_bus_msg *msg)
{
    return natsMsg_GetData((const natsMsg *)msg);
}

size_t ks_bus_msg_len(const ks_bus_msg *msg)
{
    int n = natsMsg_GetDataLength((const natsMsg *)msg);
    return n > 0 ? (size_t)n : 0;
}

const char *ks_bus_msg_header(ks_bus_msg *msg, const char *name)
{
    const char *v = NULL;
    if (natsMsgHeader_Get((natsMsg *)msg, name, &v) != NATS_OK)
        return NULL;
    return v;
}

void ks_bus_msg_destroy(ks_bus_msg *msg)
{
    natsMsg_Destroy((natsMsg *)msg);
}

int64_t ks_bus_slow_consumer_events(void)
{
    return atomic_load(&slow_consumer_events);
}

/* ---- JetStream ---- */

static ks_status js_error(natsStatus ns, jsErrCode code, const char *what)
{
    if (ns == NATS_NOT_FOUND || code == JSStreamNotFoundErr || code == JSConsumerNotFoundErr)
        return KS_FAIL(KS_ERR_NOT_FOUND, "%s: not found", what);
    if (ns == NATS_OK)
        return KS_OK;
    /* cnats reports no responders with code JSNotEnabledErr; say what it is,
     * as the async ack path and ks_bus_request do */
    if (ns == NATS_NO_RESPONDERS)
        return from_nats(ns, what);
    if (code != 0)
        return KS_FAIL(ns == NATS_TIMEOUT ? KS_ERR_TIMEOUT : KS_ERR_UNAVAILABLE,
                       "%s: %s (jetstream error %d)", what, natsStatus_GetText(ns), (int)code);
    return from_nats(ns, what);
}

ks_status ks_bus_stream_ensure(ks_bus *bus, const ks_bus_stream_cfg *cfg)
{
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    jsErrCode code = 0;
    natsStatus ns;

    jsStreamConfig_Init(&sc);
    sc.Name = cfg->name;
    sc.Subjects = (const char **)cfg->subjects;
    sc.SubjectsLen = (int)cfg->nsubjects;
    sc.MaxAge = cfg->max_age_ms * 1000000LL;
    sc.MaxBytes = cfg->max_bytes > 0 ? cfg->max_bytes : -1;
    if (cfg->duplicate_window_ms > 0)
        sc.Duplicates = cfg->duplicate_window_ms * 1000000LL;
    sc.Replicas = cfg->replicas > 0 ? cfg->replicas : 1;
    sc.Storage = cfg->memory_storage ? js_MemoryStorage : js_FileStorage;

    ns = js_GetStreamInfo(&si, bus->js, cfg->name, NULL, &code);
    if (ns == NATS_OK) {
        jsStreamInfo_Destroy(si);
        si = NULL;
        ns = js_UpdateStream(&si, bus->js, &sc, NULL, &code);
    } else if (ns == NATS_NOT_FOUND || code == JSStreamNotFoundErr) {
        code = 0;
        ns = js_AddStream(&si, bus->js, &sc, NULL, &code);
    }
    jsStreamInfo_Destroy(si);
    return js_error(ns, code, cfg->name);
}

ks_status ks_bus_stream_delete(ks_bus *bus, const char *name)
{
    jsErrCode code = 0;
    natsStatus ns = js_DeleteStream(bus->js, name, NULL, &code);
    return js_error(ns, code, name);
}

ks_status ks_bus_js_publish(ks_bus *bus, const char *subject, const void *data, size_t len,
                            const char *msg_id, uint64_t *seq, int *duplicate)
{
    jsPubOptions po;
    jsPubAck *pa = NULL;
    jsErrCode code = 0;
    natsStatus ns;

    if (len > INT32_MAX)
        return KS_FAIL(KS_ERR_TOO_LARGE, "publish of %zu bytes", len);
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = bus->js_wait_ms;
    ns = js_Publish(&pa, bus->js, subject, data, (int)len, &po, &code);
    if (ns != NATS_OK)
        return js_error(ns, code, subject);
    if (seq)
        *seq = pa->Sequence;
    if (duplicate)
        *duplicate = pa->Duplicate;
    jsPubAck_Destroy(pa);
    return KS_OK;
}

ks_status ks_bus_js_publish_async(ks_bus *bus, const char *subject, const void *data,
                                  size_t len, const char *msg_id)
{
    jsPubOptions po;

    if (len > INT32_MAX)
        return KS_FAIL(KS_ERR_TOO_LARGE, "publish of %zu bytes", len);
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    /* Without MaxWait a publish whose ack is lost stays pending forever. */
    po.MaxWait = bus->js_wait_ms;
    return from_nats(js_PublishAsync(bus->js, subject, data, (int)len, &po), subject);
}

ks_status ks_bus_js_publish_async_complete(ks_bus *bus, int timeout_ms)
{
    jsPubOptions po;

    jsPubOptions_Init(&po);
    po.MaxWait = timeout_ms;
    return from_nats(js_PublishAsyncComplete(bus->js, &po), "publish async complete");
}

static void consumer_options(const ks_bus_consumer_cfg *cfg, jsSubOptions *so)
{
    jsSubOptions_Init(so);
    so->Stream = cfg->stream;
    so->Consumer = NULL;
    so->ManualAck = true;
    so->Config.Durable = cfg->durable;
    so->Config.AckPolicy = js_AckExplicit;
    so->Config.DeliverPolicy = js_DeliverAll;
    so->Config.AckWait = (cfg->ack_wait_ms > 0 ? cfg->ack_wait_ms : 30000) * 1000000LL;
    so->Config.MaxAckPending = cfg->max_ack_pending > 0 ? cfg->max_ack_pending : 1000;
    so->Config.MaxDeliver = cfg->max_deliver > 0 ? cfg->max_deliver : -1;
}

/* cnats 3.4.1 deletes a consumer that its own js_Subscribe/js_PullSubscribe
 * created as soon as that subscription is unsubscribed or drained, durable or
 * not (jsi->dc). Create the durable here first, so that cnats only attaches to
 * it and ks_bus_unsubscribe leaves it on the server. */
static ks_status consumer_ensure(ks_bus *bus, const ks_bus_consumer_cfg *cfg,
                                 const jsSubOptions *so, int push)
{
    jsConsumerInfo *ci = NULL;
    jsConsumerConfig cc = so->Config;
    natsInbox *inbox = NULL;
    jsErrCode code = 0;
    natsStatus ns;

    ns = js_GetConsumerInfo(&ci, bus->js, cfg->stream, cfg->durable, NULL, &code);
    jsConsumerInfo_Destroy(ci);
    ci = NULL;
    if (ns == NATS_OK)
        return KS_OK;
    if (ns != NATS_NOT_FOUND && code != JSConsumerNotFoundErr)
        return js_error(ns, code, cfg->durable);
    cc.FilterSubject = cfg->filter_subject;
    if (push) {
        ns = natsInbox_Create(&inbox);
        if (ns != NATS_OK)
            return from_nats(ns, "deliver inbox");
        cc.DeliverSubject = inbox;
    }
    code = 0;
    ns = js_AddConsumer(&ci, bus->js, cfg->stream, &cc, NULL, &code);
    jsConsumerInfo_Destroy(ci);
    ci = NULL;
    natsInbox_Destroy(inbox);
    if (ns != NATS_OK) { /* another replica may have created it first */
        code = 0;
        ns = js_GetConsumerInfo(&ci, bus->js, cfg->stream, cfg->durable, NULL, &code);
        jsConsumerInfo_Destroy(ci);
    }
    return js_error(ns, code, cfg->durable);
}

ks_status ks_bus_js_subscribe(ks_bus *bus, const ks_bus_consumer_cfg *cfg,
                              ks_bus_handler handler, void *arg, ks_bus_sub **out)
{
    jsSubOptions so;
    jsErrCode code = 0;
    ks_bus_sub *s;
    natsStatus ns;
    ks_status st;

    if (cfg->stream == NULL || cfg->durable == NULL || handler == NULL)
        return KS_FAIL(KS_ERR_INVALID, "a consumer needs a stream, a durable name and a handler");
    s = sub_new(bus, handler, arg);
    if (s == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "subscription");
    consumer_options(cfg, &so);
    st = consumer_ensure(bus, cfg, &so, 1);
    if (st != KS_OK) {
        free(s);
        return st;
    }
    ns = js_Subscribe(&s->ns, bus->js, cfg->filter_subject, sub_on_msg, s, NULL, &so, &code);
    if (ns != NATS_OK) {
        free(s);
        return js_error(ns, code, cfg->durable);
    }
    st = sub_register(s, 1);
    if (st == KS_OK)
        *out = s;
    return st;
}

ks_status ks_bus_js_pull_subscribe(ks_bus *bus, const ks_bus_consumer_cfg *cfg, ks_bus_sub **out)
{
    jsSubOptions so;
    jsErrCode code = 0;
    ks_bus_sub *s;
    natsStatus ns;
    ks_status st;

    if (cfg->stream == NULL || cfg->durable == NULL)
        return KS_FAIL(KS_ERR_INVALID, "a consumer needs a stream and a durable name");
    s = sub_new(bus, NULL, NULL);
    if (s == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "subscription");
    consumer_options(cfg, &so);
    st = consumer_ensure(bus, cfg, &so, 0);
    if (st != KS_OK) {
        free(s);
        return st;
    }
    ns = js_PullSubscribe(&s->ns, bus->js, cfg->filter_subject, cfg->durable, NULL, &so, &code);
    if (ns != NATS_OK) {
        free(s);
        return js_error(ns, code, cfg->durable);
    }
    st = sub_register(s, 0);
    if (st == KS_OK)
        *out = s;
    return st;
}

ks_status ks_bus_js_fetch_one(ks_bus_sub *sub, int timeout_ms, ks_bus_msg **out)
{
    natsMsgList list = {0};
    jsErrCode code = 0;
    natsStatus ns;
    ks_status st;

    /* nats.c issue 749: a batch above 1 overflows the heap in 3.4.1. */
    ns = natsSubscription_Fetch(&list, sub->ns, 1, timeout_ms, &code);
    if (ns != NATS_OK) {
        st = js_error(ns, code, "fetch");
        goto out;
    }
    if (list.Count < 1 || list.Msgs[0] == NULL) {
        st = KS_FAIL(KS_ERR_TIMEOUT, "fetch returned no message");
        goto out;
    }
    *out = (ks_bus_msg *)list.Msgs[0];
    list.Msgs[0] = NULL;
    st = KS_OK;
out:
    natsMsgList_Destroy(&list);
    return st;
}

ks_status ks_bus_msg_ack(ks_bus_msg *msg)
{
    return from_nats(natsMsg_Ack((natsMsg *)msg, NULL), "ack");
}

ks_status ks_bus_msg_ack_sync(ks_bus_msg *msg)
{
    jsErrCode code = 0;
    natsStatus ns = natsMsg_AckSync((natsMsg *)msg, NULL, &code);
    return js_error(ns, code, "ack");
}

ks_status ks_bus_msg_nak(ks_bus_msg *msg, int64_t delay_ms)
{
    if (delay_ms > 0)
        return from_nats(natsMsg_NakWithDelay((natsMsg *)msg, delay_ms, NULL), "nak");
    return from_nats(natsMsg_Nak((natsMsg *)msg, NULL), "nak");
}

ks_status ks_bus_msg_term(ks_bus_msg *msg)
{
    return from_nats(natsMsg_Term((natsMsg *)msg, NULL), "term");
}

ks_status ks_bus_msg_js_meta(ks_bus_msg *msg, uint64_t *stream_seq, uint64_t *delivered)
{
    jsMsgMetaData *meta = NULL;
    natsStatus ns = natsMsg_GetMetaData(&meta, (natsMsg *)msg);

    if (ns != NATS_OK)
        return from_nats(ns, "message metadata");
    if (stream_seq)
        *stream_seq = meta->Sequence.Stream;
    if (delivered)
        *delivered = meta->NumDelivered;
    jsMsgMetaData_Destroy(meta);
    return KS_OK;
}

/* ---- KV ---- */

ks_status ks_bus_kv_open(ks_bus *bus, const ks_bus_kv_cfg *cfg, int create, ks_bus_kv **out)
{
    ks_bus_kv *kv;
    natsStatus ns;

    kv = calloc(1, sizeof(*kv));
    if (kv == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "kv");
    kv->bus = bus;
    ns = js_KeyValue(&kv->kv, bus->js, cfg->bucket);
    if (ns == NATS_NOT_FOUND && create) {
        kvConfig kc;
        kvConfig_Init(&kc);
        kc.Bucket = cfg->bucket;
        kc.History = cfg->history > 0 ? cfg->history : 1;
        kc.Replicas = cfg->replicas > 0 ? cfg->replicas : 1;
        kc.MaxBytes = cfg->max_bytes > 0 ? cfg->max_bytes : -1;
        /* cnats copies TTL into the stream's MaxAge unconverted: nanoseconds
         * (milliseconds here made every bucket with a TTL fail to create,
         * its max age being below the 2 min duplicate window). */
        kc.TTL = cfg->ttl_ms * 1000000LL;
        kc.StorageType = cfg->memory_storage ? js_MemoryStorage : js_FileStorage;
        ns = js_CreateKeyValue(&kv->kv, bus->js, &kc);
        if (ns != NATS_OK) /* another replica may have created it first */
            ns = js_KeyValue(&kv->kv, bus->js, cfg->bucket);
    }
    if (ns != NATS_OK) {
        free(kv);
        return from_nats(ns, cfg->bucket);
    }
    *out = kv;
    return KS_OK;
}

void ks_bus_kv_close(ks_bus_kv *kv)
{
    if (kv == NULL)
        return;
    kvStore_Destroy(kv->kv);
    free(kv);
}

ks_status ks_bus_kv_put(ks_bus_kv *kv, const char *key, const void *data, size_t len,
                        uint64_t *revision)
{
    uint64_t rev = 0;
    natsStatus ns;

    if (len > INT32_MAX)
        return KS_FAIL(KS_ERR_TOO_LARGE, "kv value of %zu bytes", len);
    ns = kvStore_Put(&rev, kv->kv, key, data, (int)len);
    if (ns != NATS_OK)
        return from_nats(ns, key);
    if (revision)
        *revision = rev;
    return KS_OK;
}

ks_status ks_bus_kv_update(ks_bus_kv *kv, const char *key, const void *data, size_t len,
                           uint64_t last, uint64_t *revision)
{
    uint64_t rev = 0;
    natsStatus ns;

    if (len > INT32_MAX)
        return KS_FAIL(KS_ERR_TOO_LARGE, "kv value of %zu bytes", len);
    if (last == 0)
        ns = kvStore_Create(&rev, kv->kv, key, data, (int)len);
    else
        ns = kvStore_Update(&rev, kv->kv, key, data, (int)len, last);
    if (ns == NATS_ERR) /* wrong last sequence, or the key exists */
        return KS_FAIL(KS_ERR_CONFLICT, "%s: revision changed", key);
    if (ns != NATS_OK)
        return from_nats(ns, key);
    if (revision)
        *revision = rev;
    return KS_OK;
}

ks_status ks_bus_kv_delete(ks_bus_kv *kv, const char *key)
{
    return from_nats(kvStore_Delete(kv->kv, key), key);
}

ks_status ks_bus_kv_get(ks_bus_kv *kv, const char *key, void **value, size_t *len,
                        uint64_t *revision)
{
    kvEntry *e = NULL;
    natsStatus ns;
    ks_status st;
    void *copy;
    int n;

    ns = kvStore_Get(&e, kv->kv, key);
    if (ns == NATS_NOT_FOUND) {
        st = KS_FAIL(KS_ERR_NOT_FOUND, "%s", key);
        goto out;
    }
    if (ns != NATS_OK) {
        st = from_nats(ns, key);
        goto out;
    }
    n = kvEntry_ValueLen(e);
    copy = malloc(n > 0 ? (size_t)n : 1);
    if (copy == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kv value");
        goto out;
    }
    if (n > 0)
        memcpy(copy, kvEntry_Value(e), (size_t)n);
    *value = copy;
    *len = n > 0 ? (size_t)n : 0;
    if (revision)
        *revision = kvEntry_Revision(e);
    st = KS_OK;
out:
    kvEntry_Destroy(e);
    return st;
}

ks_status ks_bus_kv_last_revision(ks_bus_kv *kv, int timeout_ms, uint64_t *revision)
{
    char stream[300];
    jsStreamInfo *si = NULL;
    jsErrCode code = 0;
    jsOptions jo;
    natsStatus ns;

    snprintf(stream, sizeof(stream), "KV_%s", kvStore_Bucket(kv->kv));
    jsOptions_Init(&jo);
    jo.Wait = timeout_ms > 0 ? timeout_ms : kv->bus->js_wait_ms;
    ns = js_GetStreamInfo(&si, kv->bus->js, stream, &jo, &code);
    if (ns != NATS_OK)
        return js_error(ns, code, stream);
    *revision = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    return KS_OK;
}

static void *kv_watch_thread(void *arg)
{
    ks_bus_kv_watcher *w = arg;
    int initial_done = 0;

    while (!atomic_load(&w->stop)) {
        kvEntry *e = NULL;
        natsStatus ns = kvWatcher_Next(&e, w->w, 100);

        if (ns == NATS_TIMEOUT)
            continue;
        if (ns != NATS_OK) {
            /* The connection closed under the watch: say so, a reader that
             * stops following the bucket must not be silent. */
            if (!atomic_load(&w->stop) && !atomic_load(&w->bus->closing)) {
                ks_metric_inc(ks_metrics_counter("ks_bus_kv_watch_ended_total",
                                                 "KV watches that ended on an error", NULL));
                ks_error("nats: kv watch ended: %s", natsStatus_GetText(ns));
            }
            break;
        }
        if (e == NULL) {
            initial_done = 1;
            w->fn(NULL, w->arg);
            continue;
        }
        /* cnats also replays the delete and purge markers of keys that are
         * gone; they are not current values (bus.h), so skip them until the
         * initial values are done. */
        if (!initial_done && kvEntry_Operation(e) != kvOp_Put) {
            kvEntry_Destroy(e);
            continue;
        }
        {
            ks_bus_kv_entry entry;
            kvOperation op = kvEntry_Operation(e);
            int n = kvEntry_ValueLen(e);

            entry.key = kvEntry_Key(e);
            entry.value = kvEntry_Value(e);
            entry.len = n > 0 ? (size_t)n : 0;
            entry.revision = kvEntry_Revision(e);
            entry.created_unix_ns = kvEntry_Created(e);
            entry.op = op == kvOp_Delete ? KS_BUS_KV_DELETE
                       : op == kvOp_Purge ? KS_BUS_KV_PURGE : KS_BUS_KV_PUT;
            w->fn(&entry, w->arg);
        }
        kvEntry_Destroy(e);
    }
    return NULL;
}

ks_status ks_bus_kv_watch(ks_bus_kv *kv, const char *keys, ks_bus_kv_watch_fn fn, void *arg,
                          ks_bus_kv_watcher **out)
{
    ks_bus_kv_watcher *w;
    natsStatus ns;

    w = calloc(1, sizeof(*w));
    if (w == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "kv watch");
    w->bus = kv->bus;
    w->fn = fn;
    w->arg = arg;
    ns = kvStore_Watch(&w->w, kv->kv, keys, NULL);
    if (ns != NATS_OK) {
        free(w);
        return from_nats(ns, keys);
    }
    if (pthread_create(&w->thread, NULL, kv_watch_thread, w) != 0) {
        kvWatcher_Destroy(w->w);
        free(w);
        return KS_FAIL(KS_ERR_INTERNAL, "cannot start the kv watch thread");
    }
    *out = w;
    return KS_OK;
}

void ks_bus_kv_watch_stop(ks_bus_kv_watcher *w)
{
    if (w == NULL)
        return;
    /* Never kvWatcher_Stop while the thread is inside kvWatcher_Next: cnats
     * 3.4.1 then leaks the message Next had just received. The thread sees
     * the flag within its 100 ms poll; Destroy stops the watcher after. */
    atomic_store(&w->stop, 1);
    pthread_join(w->thread, NULL);
    kvWatcher_Destroy(w->w);
    free(w);
}
