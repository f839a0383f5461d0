/* bus_replay.c: stream state, direct reads and ordered replays (bus_replay.h).
 * Kept apart from bus.c; it shares only the inside of ks_bus (bus_private.h). */
#include "bus_replay.h"
#include "bus_private.h"

#include <nats/nats.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

#define REPLAY_STOP_WAIT_MS 5000

struct ks_bus_replay {
    ks_bus *bus;
    natsSubscription *ns;
    ks_bus_handler handler;
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int completed;     /* cnats delivered its last callback */
};

static ks_status replay_error(natsStatus ns, jsErrCode code, const char *what)
{
    if (ns == NATS_OK)
        return KS_OK;
    if (ns == NATS_NOT_FOUND || code == JSStreamNotFoundErr || code == JSConsumerNotFoundErr ||
        code == JSNoMessageFoundErr)
        return KS_FAIL(KS_ERR_NOT_FOUND, "%s: not found", what);
    switch (ns) {
    case NATS_TIMEOUT:
        return KS_FAIL(KS_ERR_TIMEOUT, "%s: timeout", what);
    case NATS_NO_RESPONDERS:
        return KS_FAIL(KS_ERR_NO_RESPONDERS, "%s: no responders (JetStream not enabled?)", what);
    case NATS_NO_MEMORY:
        return KS_FAIL(KS_ERR_NOMEM, "%s", what);
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
        return KS_FAIL(KS_ERR_INVALID, "%s: %s", what, natsStatus_GetText(ns));
    case NATS_CONNECTION_CLOSED:
        return KS_FAIL(KS_ERR_CLOSED, "%s: connection closed", what);
    case NATS_NO_SERVER:
    case NATS_NOT_YET_CONNECTED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_IO_ERROR:
        return KS_FAIL(KS_ERR_UNAVAILABLE, "%s: %s", what, natsStatus_GetText(ns));
    default:
        return KS_FAIL(KS_ERR_INTERNAL, "%s: %s (jetstream error %d)", what,
                       natsStatus_GetText(ns), (int)code);
    }
}

ks_status ks_bus_stream_state_get(ks_bus *bus, const char *name, ks_bus_stream_state *out)
{
    jsStreamInfo *si = NULL;
    jsErrCode code = 0;
    natsStatus ns;
    ks_status st;

    if (bus == NULL || name == NULL || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "ks_bus_stream_state_get: NULL argument");
    ns = js_GetStreamInfo(&si, bus->js, name, NULL, &code);
    st = replay_error(ns, code, name);
    if (st == KS_OK) {
        out->msgs = si->State.Msgs;
        out->bytes = si->State.Bytes;
        out->first_seq = si->State.Msgs > 0 ? si->State.FirstSeq : 0;
        out->last_seq = si->State.LastSeq;
        out->created_unix_ns = si->Created;
    }
    jsStreamInfo_Destroy(si);
    return st;
}

ks_status ks_bus_stream_get(ks_bus *bus, const char *name, uint64_t seq, ks_bus_msg **out)
{
    natsMsg *m = NULL;
    jsErrCode code = 0;
    natsStatus ns;
    ks_status st;

    if (bus == NULL || name == NULL || out == NULL || seq == 0)
        return KS_FAIL(KS_ERR_INVALID, "ks_bus_stream_get: bad argument");
    ns = js_GetMsg(&m, bus->js, name, seq, NULL, &code);
    st = replay_error(ns, code, name);
    if (st == KS_OK)
        *out = (ks_bus_msg *)m;
    else
        natsMsg_Destroy(m);
    return st;
}

ks_status ks_bus_consumer_state_get(ks_bus *bus, const char *stream, const char *durable,
                                    ks_bus_consumer_state *out)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode code = 0;
    natsStatus ns;
    ks_status st;

    if (bus == NULL || stream == NULL || durable == NULL || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "ks_bus_consumer_state_get: NULL argument");
    ns = js_GetConsumerInfo(&ci, bus->js, stream, durable, NULL, &code);
    st = replay_error(ns, code, durable);
    if (st == KS_OK) {
        out->ack_floor_stream_seq = ci->AckFloor.Stream;
        out->delivered_stream_seq = ci->Delivered.Stream;
        out->num_pending = ci->NumPending;
        out->num_ack_pending = ci->NumAckPending;
        out->num_redelivered = ci->NumRedelivered;
    }
    jsConsumerInfo_Destroy(ci);
    return st;
}

ks_status ks_bus_consumer_delete(ks_bus *bus, const char *stream, const char *durable)
{
    jsErrCode code = 0;
    natsStatus ns;

    if (bus == NULL || stream == NULL || durable == NULL)
        return KS_FAIL(KS_ERR_INVALID, "ks_bus_consumer_delete: NULL argument");
    ns = js_DeleteConsumer(bus->js, stream, durable, NULL, &code);
    return replay_error(ns, code, durable);
}

ks_status ks_bus_consumer_create_at(ks_bus *bus, const ks_bus_consumer_cfg *cfg, uint64_t start_seq)
{
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    natsInbox *inbox = NULL;
    jsErrCode code = 0;
    natsStatus ns;

    if (bus == NULL || cfg == NULL || cfg->stream == NULL || cfg->durable == NULL)
        return KS_FAIL(KS_ERR_INVALID, "a consumer needs a stream and a durable name");
    /* the same values as bus.c's consumer_options, so that cnats's bind
     * check finds nothing to object to */
    jsConsumerConfig_Init(&cc);
    cc.Durable = cfg->durable;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = (cfg->ack_wait_ms > 0 ? cfg->ack_wait_ms : 30000) * 1000000LL;
    cc.MaxAckPending = cfg->max_ack_pending > 0 ? cfg->max_ack_pending : 1000;
    cc.MaxDeliver = cfg->max_deliver > 0 ? cfg->max_deliver : -1;
    cc.FilterSubject = cfg->filter_subject;
    if (start_seq > 0) {
        cc.DeliverPolicy = js_DeliverByStartSequence;
        cc.OptStartSeq = start_seq;
    } else {
        cc.DeliverPolicy = js_DeliverAll;
    }
    ns = natsInbox_Create(&inbox);
    if (ns != NATS_OK)
        return replay_error(ns, 0, "deliver inbox");
    cc.DeliverSubject = inbox;
    ns = js_AddConsumer(&ci, bus->js, cfg->stream, &cc, NULL, &code);
    jsConsumerInfo_Destroy(ci);
    natsInbox_Destroy(inbox);
    return replay_error(ns, code, cfg->durable);
}

/* ---- ordered replay ---- */

static void replay_on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    ks_bus_replay *r = closure;
    r->handler(r->bus, (ks_bus_msg *)msg, r->arg);
}

static void replay_on_complete(void *closure)
{
    ks_bus_replay *r = closure;

    pthread_mutex_lock(&r->mu);
    r->completed = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
}

static ks_bus_replay *replay_new(ks_bus *bus, ks_bus_handler handler, void *arg)
{
    ks_bus_replay *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    r->bus = bus;
    r->handler = handler;
    r->arg = arg;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cond, NULL);
    return r;
}

static void replay_free(ks_bus_replay *r)
{
    if (r == NULL)
        return;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cond);
    free(r);
}

/* js_Subscribe with so, then the completion callback; frees r on failure. */
static ks_status replay_subscribe(ks_bus_replay *r, const char *subject, jsSubOptions *so,
                                  int max_pending, const char *what, ks_bus_replay **out)
{
    jsErrCode code = 0;
    natsStatus ns;
    ks_status st;

    ns = js_Subscribe(&r->ns, r->bus->js, subject, replay_on_msg, r, NULL, so, &code);
    st = replay_error(ns, code, what);
    if (st)
        goto out;
    ns = natsSubscription_SetOnCompleteCB(r->ns, replay_on_complete, r);
    if (ns == NATS_OK && max_pending > 0)
        ns = natsSubscription_SetPendingLimits(r->ns, max_pending, -1);
    st = replay_error(ns, 0, what);
    if (st) {
        natsSubscription_Unsubscribe(r->ns);
        natsSubscription_Destroy(r->ns);
        r->ns = NULL;
        goto out;
    }
    *out = r;
    r = NULL;
out:
    replay_free(r);
    return st;
}

ks_status ks_bus_replay_start(ks_bus *bus, const ks_bus_replay_cfg *cfg, ks_bus_handler handler,
                              void *arg, ks_bus_replay **out)
{
    ks_bus_replay *r;
    jsSubOptions so;

    if (bus == NULL || cfg == NULL || cfg->stream == NULL || handler == NULL || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "a replay needs a bus, a stream and a handler");
    r = replay_new(bus, handler, arg);
    if (r == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "replay");
    jsSubOptions_Init(&so);
    so.Stream = cfg->stream;
    so.Ordered = true;
    if (cfg->start_unix_ns > 0) {
        so.Config.DeliverPolicy = js_DeliverByStartTime;
        so.Config.OptStartTime = cfg->start_unix_ns;
    } else if (cfg->start_seq > 0) {
        so.Config.DeliverPolicy = js_DeliverByStartSequence;
        so.Config.OptStartSeq = cfg->start_seq;
    } else {
        so.Config.DeliverPolicy = js_DeliverAll;
    }
    return replay_subscribe(r, cfg->filter_subject ? cfg->filter_subject : ">", &so, 0,
                            cfg->stream, out);
}

ks_status ks_bus_durable_bind(ks_bus *bus, const char *stream, const char *durable,
                              const char *filter_subject, int max_pending,
                              ks_bus_handler handler, void *arg, ks_bus_replay **out)
{
    ks_bus_replay *r;
    jsSubOptions so;

    if (bus == NULL || stream == NULL || durable == NULL || filter_subject == NULL ||
        handler == NULL || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "a bind needs a stream, a durable, a filter and a handler");
    r = replay_new(bus, handler, arg);
    if (r == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "durable subscription");
    /* bind by name; the consumer's configuration is the server's, cnats
     * compares only what is set here */
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Consumer = durable;
    so.ManualAck = true;
    return replay_subscribe(r, filter_subject, &so, max_pending > 0 ? max_pending : 65536, durable,
                            out);
}

void ks_bus_replay_stop(ks_bus_replay *r)
{
    struct timespec deadline;
    int done;

    if (r == NULL)
        return;
    /* Unsubscribe fails on a closed connection; cnats then has already
     * delivered its last callback or will not deliver any more. */
    if (natsSubscription_Unsubscribe(r->ns) != NATS_OK)
        replay_on_complete(r);
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += REPLAY_STOP_WAIT_MS / 1000;
    pthread_mutex_lock(&r->mu);
    while (!r->completed)
        if (pthread_cond_timedwait(&r->cond, &r->mu, &deadline) != 0)
            break;
    done = r->completed;
    pthread_mutex_unlock(&r->mu);
    natsSubscription_Destroy(r->ns);
    if (!done) {
        /* cnats may still call us: leak r rather than free what it uses */
        ks_warn("nats: stream subscription still delivering %d ms after stop",
                REPLAY_STOP_WAIT_MS);
        return;
    }
    replay_free(r);
}
