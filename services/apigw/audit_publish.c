/* audit_publish.c: queue, publisher thread, spool mode (audit_publish.h). */
#include "audit_publish.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "audit_spool.h"
#include "audit_stream.h"
#include "bus.h"
#include "bus_replay.h"
#include "log.h"
#include "metrics.h"

#define SPOOL_BATCH 1000              /* queued events appended per fdatasync */
#define DRAIN_BACKOFF_MIN_MS 250
#define DRAIN_BACKOFF_MAX_MS 5000
#define RETRY_PAUSE_MS 100             /* between publishes of a failed round */

/* One event: "subject\0msg_id\0" then the packed AuditEvent, the same bytes
 * the spool keeps as a record. */
typedef struct item {
    struct item *next;
    gw_audit_done_fn done;
    void *arg;
    size_t len;          /* of rec */
    size_t data_off;     /* where the packed event starts in rec */
    char rec[];
} item;

/* A publish round: its events, and what became of each. */
typedef struct {
    const char *msg_id;
    int state;           /* 0 waiting, 1 acked, 2 failed */
} slot;

struct gw_audit_pub {
    gw_audit_pub_cfg cfg;
    ks_bus *bus;
    gw_spool *spool;
    pthread_t thread;
    int started;

    pthread_mutex_t mu;          /* queue, round slots, flags */
    pthread_cond_t cond;         /* wakes the publisher */
    pthread_cond_t space;        /* wakes submitters waiting for room */
    item *head, *tail;
    size_t nqueue;
    int stop;
    int64_t stop_deadline_ms;
    int connected_changed;

    slot *slots;                 /* the round in flight (publisher + ack thread) */
    size_t nslots, unresolved, next_hint;

    atomic_int direct;           /* what gw_audit_pub_direct reports */
    int spooling;                /* publisher thread only */
    int stream_checked;
};

static ks_metric *m_published, *m_spooled, *m_drained, *m_failures, *m_queue, *m_spool_pending;
static ks_metric *m_lost_queue, *m_lost_spool, *m_lost_encode, *m_torn;

static void metrics_init(void)
{
    m_published = ks_metrics_counter("ks_gateway_audit_events_published_total",
                                     "audit events acknowledged by JetStream on first publish",
                                     NULL);
    m_spooled = ks_metrics_counter("ks_gateway_audit_events_spooled_total",
                                   "audit events written to the on-disk spool", NULL);
    m_drained = ks_metrics_counter("ks_gateway_audit_events_drained_total",
                                   "spooled audit events later acknowledged by JetStream", NULL);
    m_failures = ks_metrics_counter("ks_gateway_audit_publish_failures_total",
                                    "audit publishes that got no ack (then spooled)", NULL);
    m_queue = ks_metrics_gauge("ks_gateway_audit_queue_depth",
                               "audit events waiting for the publisher", NULL);
    m_spool_pending = ks_metrics_gauge("ks_gateway_audit_spool_pending",
                                       "audit events in the spool, not yet in JetStream", NULL);
    m_lost_queue = ks_metrics_counter("ks_gateway_audit_events_lost_total",
                                      "audit events lost, by cause", "reason=\"queue_full\"");
    m_lost_spool = ks_metrics_counter("ks_gateway_audit_events_lost_total",
                                      "audit events lost, by cause", "reason=\"spool\"");
    m_lost_encode = ks_metrics_counter("ks_gateway_audit_events_lost_total",
                                       "audit events lost, by cause", "reason=\"encode\"");
    m_torn = ks_metrics_counter("ks_gateway_audit_spool_torn_bytes_total",
                                "bytes of a torn spool tail cut at start (a crash mid-append)",
                                NULL);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_in(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

/* ---- framing ---- */

static item *item_new(const char *subject, const char *msg_id, const void *data, size_t len)
{
    size_t sl = strlen(subject), il = strlen(msg_id);
    item *it = malloc(sizeof(*it) + sl + il + 2 + len);

    if (it == NULL)
        return NULL;
    it->next = NULL;
    it->done = NULL;
    it->arg = NULL;
    memcpy(it->rec, subject, sl + 1);
    memcpy(it->rec + sl + 1, msg_id, il + 1);
    memcpy(it->rec + sl + il + 2, data, len);
    it->data_off = sl + il + 2;
    it->len = it->data_off + len;
    return it;
}

/* Split a record read back from the spool. 0 when it is not one of ours. */
static int record_split(const char *rec, size_t len, const char **subject, const char **msg_id,
                        size_t *data_off)
{
    const char *z1 = memchr(rec, '\0', len), *z2;

    if (z1 == NULL || z1 == rec)
        return 0;
    z2 = memchr(z1 + 1, '\0', len - (size_t)(z1 + 1 - rec));
    if (z2 == NULL || z2 == z1 + 1)
        return 0;
    *subject = rec;
    *msg_id = z1 + 1;
    *data_off = (size_t)(z2 + 1 - rec);
    return 1;
}

static void item_finish(item *it, int acked)
{
    if (it->done)
        it->done(it->arg, acked);
    free(it);
}

/* ---- acks (cnats thread) ---- */

static void on_ack(void *arg, const char *subject, const char *msg_id, ks_status st, uint64_t seq)
{
    gw_audit_pub *p = arg;

    (void)subject;
    (void)seq;
    pthread_mutex_lock(&p->mu);
    /* acks come in publish order, so start where the last one matched */
    for (size_t k = 0; k < p->nslots; k++) {
        size_t i = (p->next_hint + k) % p->nslots;
        slot *s = &p->slots[i];
        if (s->state == 0 && strcmp(s->msg_id, msg_id) == 0) {
            s->state = st == KS_OK ? 1 : 2;
            p->unresolved--;
            p->next_hint = i + 1;
            if (p->unresolved == 0)
                pthread_cond_broadcast(&p->cond);
            break;
        }
    }
    /* an ack of an earlier round (after its timeout) matches nothing: that
     * event was spooled, and its second publish is a duplicate */
    pthread_mutex_unlock(&p->mu);
}

static void on_state(void *arg, ks_bus_state state)
{
    gw_audit_pub *p = arg;

    pthread_mutex_lock(&p->mu);
    p->connected_changed = 1;
    if (state != KS_BUS_CONNECTED && state != KS_BUS_RECONNECTED)
        p->stream_checked = 0;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
}

/* ---- the stream ---- */

/* Create KS_AUDIT when it is missing; an existing one is left as its owner
 * (the audit service, or an operator) configured it. */
static ks_status stream_check(gw_audit_pub *p)
{
    const char *subjects[] = {KS_AUDIT_STREAM_SUBJECTS};
    ks_bus_stream_cfg sc = {
        .name = KS_AUDIT_STREAM,
        .subjects = subjects,
        .nsubjects = 1,
        .max_age_ms = p->cfg.stream_max_age_ms,
        .max_bytes = p->cfg.stream_max_bytes,
        .duplicate_window_ms = KS_AUDIT_DUPLICATE_WINDOW_MS,
        .replicas = p->cfg.stream_replicas,
    };
    ks_bus_stream_state ss;
    ks_status st;

    if (p->stream_checked)
        return KS_OK;
    st = ks_bus_stream_state_get(p->bus, KS_AUDIT_STREAM, &ss);
    if (st == KS_ERR_NOT_FOUND) {
        st = ks_bus_stream_ensure(p->bus, &sc);
        if (st == KS_OK)
            ks_info("audit: created the stream %s", KS_AUDIT_STREAM);
    }
    if (st == KS_OK)
        p->stream_checked = 1;
    return st;
}

/* ---- a round ---- */

/* Publish recs[0..n) and wait until each is acked or failed (or the stop
 * deadline passes). ok[i] says which were acked; returns how many were. */
static size_t publish_round(gw_audit_pub *p, char *const *recs, const size_t *lens, size_t n,
                            int *ok)
{
    size_t acked = 0;
    struct timespec until;

    pthread_mutex_lock(&p->mu);
    p->nslots = n;
    p->unresolved = n;
    p->next_hint = 0;
    for (size_t i = 0; i < n; i++) {
        const char *subject, *msg_id;
        size_t off;
        if (!record_split(recs[i], lens[i], &subject, &msg_id, &off)) {
            p->slots[i].msg_id = "";
            p->slots[i].state = 2;
            p->unresolved--;
            continue;
        }
        p->slots[i].msg_id = msg_id;
        p->slots[i].state = 0;
    }
    pthread_mutex_unlock(&p->mu);

    for (size_t i = 0; i < n; i++) {
        const char *subject, *msg_id;
        size_t off;
        if (p->slots[i].state != 0 || !record_split(recs[i], lens[i], &subject, &msg_id, &off))
            continue;
        if (ks_bus_js_publish_async(p->bus, subject, recs[i] + off, lens[i] - off, msg_id) !=
            KS_OK) {
            pthread_mutex_lock(&p->mu);
            if (p->slots[i].state == 0) {
                p->slots[i].state = 2;
                p->unresolved--;
            }
            pthread_mutex_unlock(&p->mu);
        }
    }

    /* cnats ends every publish with an ack or a timeout at ack_timeout_ms;
     * the extra second only guards against a callback that never comes */
    deadline_in(&until, p->cfg.ack_timeout_ms + 1000);
    pthread_mutex_lock(&p->mu);
    if (p->stop) {
        /* shutting down: wait no longer than the grace period (what is not
         * acked by then is spooled, and deduplicated if it was stored) */
        int64_t left = p->stop_deadline_ms - mono_ms();
        deadline_in(&until, left > 0 ? left : 0);
    }
    while (p->unresolved > 0) {
        if (pthread_cond_timedwait(&p->cond, &p->mu, &until) == ETIMEDOUT)
            break;
    }
    for (size_t i = 0; i < n; i++) {
        ok[i] = p->slots[i].state == 1;
        acked += (size_t)ok[i];
    }
    p->nslots = p->unresolved = 0;
    pthread_mutex_unlock(&p->mu);
    if (acked < n)
        ks_metric_add(m_failures, (double)(n - acked));
    return acked;
}

/* ---- the spool side ---- */

/* Append items to the spool, in order, in batches of one fdatasync each.
 * Each item's done(0) runs; an item the spool refuses is lost (counted). */
static void spool_items(gw_audit_pub *p, item **its, size_t n)
{
    const void *data[SPOOL_BATCH];
    size_t lens[SPOOL_BATCH];

    for (size_t at = 0; at < n;) {
        size_t k = n - at < SPOOL_BATCH ? n - at : SPOOL_BATCH;
        ks_status st;
        for (size_t i = 0; i < k; i++) {
            data[i] = its[at + i]->rec;
            lens[i] = its[at + i]->len;
        }
        st = gw_spool_append(p->spool, data, lens, k);
        if (st != KS_OK) {
            ks_metric_add(m_lost_spool, (double)k);
            ks_error("audit: %zu events LOST: the spool refused them: %s", k, ks_status_last());
        } else {
            ks_metric_add(m_spooled, (double)k);
        }
        for (size_t i = 0; i < k; i++)
            item_finish(its[at + i], 0);
        at += k;
    }
    ks_metric_set(m_spool_pending, (double)gw_spool_pending(p->spool));
}

static void enter_spool_mode(gw_audit_pub *p, const char *why)
{
    if (!p->spooling)
        ks_warn("audit: JetStream does not take events (%s): spooling them to disk", why);
    p->spooling = 1;
    atomic_store(&p->direct, 0);
}

/* One drain round: publish the oldest spooled records; release them when all
 * were acked. Returns 1 when the spool is empty afterwards. */
static int drain_round(gw_audit_pub *p, int *failed)
{
    void *recs[SPOOL_BATCH];
    size_t lens[SPOOL_BATCH], n = 0, acked;
    int ok[SPOOL_BATCH];
    size_t max = p->cfg.window < SPOOL_BATCH ? p->cfg.window : SPOOL_BATCH;

    *failed = 0;
    if (gw_spool_pending(p->spool) == 0)
        return 1;
    if (gw_spool_read(p->spool, max, recs, lens, &n) != KS_OK) {
        ks_error("audit: cannot read the spool back: %s", ks_status_last());
        gw_spool_rewind(p->spool);
        *failed = 1;
        return 0;
    }
    acked = publish_round(p, (char *const *)recs, lens, n, ok);
    for (size_t i = 0; i < n; i++)
        free(recs[i]);
    if (acked < n) {
        gw_spool_rewind(p->spool);
        *failed = 1;
        return 0;
    }
    if (gw_spool_release(p->spool, n) != KS_OK) {
        /* they are in JetStream; the next drain sends them again (dropped
         * as duplicates) */
        ks_error("audit: cannot record the spool position: %s", ks_status_last());
        gw_spool_rewind(p->spool);
        *failed = 1;
        return 0;
    }
    ks_metric_add(m_drained, (double)n);
    ks_metric_set(m_spool_pending, (double)gw_spool_pending(p->spool));
    return gw_spool_pending(p->spool) == 0;
}

/* ---- the thread ---- */

/* Take up to max items off the queue. Caller holds mu. */
static size_t take(gw_audit_pub *p, item **out, size_t max)
{
    size_t n = 0;

    while (n < max && p->head != NULL) {
        item *it = p->head;
        p->head = it->next;
        if (p->head == NULL)
            p->tail = NULL;
        out[n++] = it;
        p->nqueue--;
    }
    if (n > 0) {
        ks_metric_set(m_queue, (double)p->nqueue);
        pthread_cond_broadcast(&p->space);
    }
    return n;
}

/* 1 once stop() was called and its grace period is over. */
static int stopping(gw_audit_pub *p)
{
    int late;

    pthread_mutex_lock(&p->mu);
    late = p->stop && mono_ms() >= p->stop_deadline_ms;
    pthread_mutex_unlock(&p->mu);
    return late;
}

static void direct_round(gw_audit_pub *p, item **its, size_t n)
{
    char *recs[SPOOL_BATCH];
    size_t lens[SPOOL_BATCH], nfail = 0;
    int ok[SPOOL_BATCH];

    for (size_t i = 0; i < n; i++) {
        recs[i] = its[i]->rec;
        lens[i] = its[i]->len;
    }
    int64_t give_up = mono_ms() + p->cfg.retry_ms;

    publish_round(p, recs, lens, n, ok);
    for (;;) {
        /* acked ones are done; the failed ones keep their order */
        nfail = 0;
        for (size_t i = 0; i < n; i++) {
            if (ok[i]) {
                ks_metric_inc(m_published);
                item_finish(its[i], 1);
            } else {
                its[nfail] = its[i];
                recs[nfail] = recs[i];
                lens[nfail] = lens[i];
                nfail++;
            }
        }
        n = nfail;
        /* A stream leader that went away (a NATS node lost) is replaced
         * within seconds: publish the same events again (same Nats-Msg-Id)
         * for up to retry_ms before spooling them. Nothing newer goes out
         * meanwhile, so the order holds. */
        if (n == 0 || mono_ms() >= give_up || !ks_bus_is_connected(p->bus) || stopping(p))
            break;
        {
            struct timespec pause = {0, RETRY_PAUSE_MS * 1000000L};
            nanosleep(&pause, NULL);
        }
        p->stream_checked = 0;
        if (stream_check(p) != KS_OK)
            continue;
        publish_round(p, recs, lens, n, ok);
    }
    if (nfail > 0) {
        p->stream_checked = 0;
        enter_spool_mode(p, "publishes got no ack");
        spool_items(p, its, nfail);
    }
}

static void *publisher_main(void *arg)
{
    gw_audit_pub *p = arg;
    item *its[SPOOL_BATCH];
    int64_t backoff = DRAIN_BACKOFF_MIN_MS, next_drain = 0;

    for (;;) {
        size_t n;
        int stop, spooling = p->spooling;
        int want_drain = spooling && mono_ms() >= next_drain && ks_bus_is_connected(p->bus);

        pthread_mutex_lock(&p->mu);
        while (p->head == NULL && !p->stop && !want_drain) {
            struct timespec until;
            if (!spooling) {
                pthread_cond_wait(&p->cond, &p->mu);
            } else {
                int64_t wait = next_drain - mono_ms();
                deadline_in(&until, wait > 0 ? wait : 50);
                pthread_cond_timedwait(&p->cond, &p->mu, &until);
            }
            if (p->connected_changed) {
                p->connected_changed = 0;
                next_drain = 0;
            }
            want_drain = spooling && mono_ms() >= next_drain && ks_bus_is_connected(p->bus);
        }
        stop = p->stop;
        n = take(p, its, spooling ? SPOOL_BATCH : p->cfg.window);
        pthread_mutex_unlock(&p->mu);

        if (stop && n == 0 && (!spooling || !want_drain || mono_ms() >= p->stop_deadline_ms))
            break;
        if (!spooling && n > 0) {
            if (!ks_bus_is_connected(p->bus)) {
                enter_spool_mode(p, "not connected to NATS");
                spool_items(p, its, n);
            } else if (stream_check(p) != KS_OK) {
                enter_spool_mode(p, ks_status_last());
                spool_items(p, its, n);
            } else if (stop && mono_ms() >= p->stop_deadline_ms) {
                enter_spool_mode(p, "shutting down");
                spool_items(p, its, n);
            } else {
                direct_round(p, its, n);
            }
            continue;
        }
        if (spooling) {
            int failed = 0;
            if (n > 0)
                spool_items(p, its, n);
            if (!want_drain || (stop && mono_ms() >= p->stop_deadline_ms))
                continue;
            if (stream_check(p) != KS_OK) {
                failed = 1;
            } else if (drain_round(p, &failed)) {
                /* nothing spooled is left: what is queued now came after it */
                p->spooling = 0;
                atomic_store(&p->direct, 1);
                backoff = DRAIN_BACKOFF_MIN_MS;
                ks_info("audit: spool drained, publishing directly again");
                continue;
            }
            if (failed) {
                p->stream_checked = 0;
                next_drain = mono_ms() + backoff;
                backoff = backoff * 2 > DRAIN_BACKOFF_MAX_MS ? DRAIN_BACKOFF_MAX_MS : backoff * 2;
            } else {
                backoff = DRAIN_BACKOFF_MIN_MS;
                next_drain = 0;
            }
        }
    }
    return NULL;
}

/* ---- API ---- */

ks_status gw_audit_pub_start(const gw_audit_pub_cfg *cfg, gw_audit_pub **out)
{
    gw_audit_pub *p;
    uint64_t torn = 0;
    ks_status st;
    ks_bus_opts bo = {0};

    if (cfg == NULL || cfg->nats_url == NULL || cfg->spool_dir == NULL || cfg->queue_max == 0 ||
        cfg->window == 0 || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "gw_audit_pub_start: bad argument");
    metrics_init();
    if ((p = calloc(1, sizeof(*p))) == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "audit publisher");
    p->cfg = *cfg;
    if (p->cfg.window > SPOOL_BATCH)
        p->cfg.window = SPOOL_BATCH;
    pthread_mutex_init(&p->mu, NULL);
    {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&p->cond, &ca);
        pthread_cond_init(&p->space, &ca);
        pthread_condattr_destroy(&ca);
    }
    if ((p->slots = calloc(p->cfg.window, sizeof(*p->slots))) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "audit publisher");
        goto fail;
    }
    /* the spool is locked: a second gateway on the same directory stops here */
    if ((st = gw_spool_open(cfg->spool_dir, cfg->spool_max_bytes, &torn, &p->spool))) {
        if (st == KS_ERR_CONFLICT)
            st = KS_FAIL(KS_ERR_IO,
                         "audit spool %s is in use by another gateway process: give each gateway "
                         "its own KS_AUDIT_SPOOL_DIR or listen address",
                         cfg->spool_dir);
        goto fail;
    }
    if (torn > 0) {
        ks_metric_add(m_torn, (double)torn);
        ks_warn("audit: cut %llu bytes of a torn record at the end of the spool in %s (a crash "
                "in the middle of an append: that event was never acknowledged to anyone)",
                (unsigned long long)torn, cfg->spool_dir);
    }
    p->spooling = gw_spool_pending(p->spool) > 0;
    if (p->spooling)
        ks_info("audit: %llu spooled events from an earlier run will be published first",
                (unsigned long long)gw_spool_pending(p->spool));
    ks_metric_set(m_spool_pending, (double)gw_spool_pending(p->spool));
    atomic_store(&p->direct, !p->spooling);
    bo.url = cfg->nats_url;
    bo.name = "apigw-audit";
    bo.js_max_wait_ms = cfg->ack_timeout_ms;
    bo.wait_connected = 0;
    bo.on_ack = on_ack;
    bo.ack_arg = p;
    bo.on_state = on_state;
    bo.state_arg = p;
    if ((st = ks_bus_connect(&bo, &p->bus)))
        goto fail;
    if (pthread_create(&p->thread, NULL, publisher_main, p) != 0) {
        st = KS_FAIL(KS_ERR_INTERNAL, "audit publisher thread");
        goto fail;
    }
    p->started = 1;
    *out = p;
    return KS_OK;
fail:
    gw_audit_pub_stop(p, 0);
    return st;
}

void gw_audit_pub_lost(gw_audit_pub *p, const char *msg_id, gw_audit_done_fn done, void *arg)
{
    (void)p;
    ks_metric_inc(m_lost_encode);
    ks_error("audit: event %s LOST: out of memory building it", msg_id);
    if (done)
        done(arg, 0);
}

ks_status gw_audit_pub_submit(gw_audit_pub *p, const char *subject, const char *msg_id,
                              const void *data, size_t len, gw_audit_done_fn done, void *arg)
{
    item *it = item_new(subject, msg_id, data, len);
    struct timespec until;

    if (it == NULL) {
        gw_audit_pub_lost(p, msg_id, done, arg);
        return KS_FAIL(KS_ERR_NOMEM, "audit event");
    }
    it->done = done;
    it->arg = arg;
    deadline_in(&until, p->cfg.queue_wait_ms);
    pthread_mutex_lock(&p->mu);
    while (p->nqueue >= p->cfg.queue_max) {
        if (pthread_cond_timedwait(&p->space, &p->mu, &until) == ETIMEDOUT)
            break;
    }
    if (p->nqueue >= p->cfg.queue_max) {
        pthread_mutex_unlock(&p->mu);
        ks_metric_inc(m_lost_queue);
        ks_error("audit: event %s LOST: the queue stayed full (%zu events) for %lld ms", msg_id,
                 p->cfg.queue_max, (long long)p->cfg.queue_wait_ms);
        item_finish(it, 0);
        return KS_FAIL(KS_ERR_UNAVAILABLE, "audit queue full");
    }
    if (p->tail)
        p->tail->next = it;
    else
        p->head = it;
    p->tail = it;
    p->nqueue++;
    ks_metric_set(m_queue, (double)p->nqueue);
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
    return KS_OK;
}

int gw_audit_pub_direct(gw_audit_pub *p)
{
    return p != NULL && atomic_load(&p->direct) && ks_bus_is_connected(p->bus);
}

void gw_audit_pub_stop(gw_audit_pub *p, int grace_ms)
{
    item *its[SPOOL_BATCH];
    size_t n;

    if (p == NULL)
        return;
    if (p->started) {
        pthread_mutex_lock(&p->mu);
        p->stop = 1;
        p->stop_deadline_ms = mono_ms() + grace_ms;
        pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
    }
    /* anything submitted after the thread ended goes to the spool */
    for (;;) {
        pthread_mutex_lock(&p->mu);
        n = p->spool != NULL ? take(p, its, SPOOL_BATCH) : 0;
        pthread_mutex_unlock(&p->mu);
        if (n == 0)
            break;
        spool_items(p, its, n);
    }
    if (p->spool != NULL && gw_spool_pending(p->spool) > 0)
        ks_info("audit: %llu events stay in the spool for the next start",
                (unsigned long long)gw_spool_pending(p->spool));
    ks_bus_destroy(p->bus);
    gw_spool_close(p->spool);
    free(p->slots);
    pthread_cond_destroy(&p->cond);
    pthread_cond_destroy(&p->space);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
