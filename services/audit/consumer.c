/* consumer.c: the durable consumer that fills the audit store (consumer.h). */
#include "consumer.h"

#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus_replay.h"
#include "event.h"
#include "log.h"
#include "metrics.h"

#define SETUP_BACKOFF_MIN_MS 250
#define SETUP_BACKOFF_MAX_MS 5000
#define FILL_MAX 2000               /* items read back from the stream per round */
#define COMMIT_BACKOFF_MAX_MS 2000

typedef struct {
    uint64_t seq;
    ks_bus_msg *msg;
    aud_row *row;       /* decoded by the delivery thread (NULL: it did not decode) */
} pending_msg;

static void row_free(aud_row *r)
{
    aud_row_clear(r);
    free(r);
}

struct aud_consumer {
    ks_bus *bus;
    aud_store *store;
    aud_consumer_cfg cfg;
    pthread_t thread;
    int thread_started;

    pthread_mutex_t mu;             /* guards queue, stop */
    pthread_cond_t cond;
    pending_msg *queue;             /* delivered, sequence read by the delivery thread */
    size_t nqueue, capqueue;

    /* acks go out on a thread of their own, off the writer's path */
    pthread_t ack_thread;
    int ack_started;
    pthread_mutex_t ack_mu;
    pthread_cond_t ack_cond;
    ks_bus_msg **acks;
    size_t nacks, capacks;
    int ack_stop;
    int64_t queue_since_ms;         /* arrival of the oldest queued message */
    int stop;

    ks_bus_replay *sub;             /* bound to the durable */
    atomic_int bound;
    atomic_int stopping;            /* cuts a read-back short */
    atomic_ullong position;
    char why[256];                  /* not ready: the reason (guarded by mu) */

    /* writer thread only */
    pending_msg *pending;
    size_t npending, cappending;
    int64_t next_lag_ms;
};

static ks_metric *m_stored, *m_dups, *m_redeliveries, *m_gaps, *m_undecodable, *m_errors;
static ks_metric *m_batch, *m_commit, *m_pos, *m_stream_last, *m_lag, *m_pending;

static void metrics_init(void)
{
    static const double batch_bounds[] = {1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000};
    static const double commit_bounds[] = {.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1};

    m_stored = ks_metrics_counter("ks_audit_events_stored_total", "audit events stored", NULL);
    m_dups = ks_metrics_counter("ks_audit_duplicates_total",
                                "stream messages whose audit ID was already stored", NULL);
    m_redeliveries = ks_metrics_counter(
        "ks_audit_redeliveries_total",
        "messages delivered again after they were stored (acked and dropped)", NULL);
    m_gaps = ks_metrics_counter("ks_audit_gap_sequences_total",
                                "stream sequences the stream no longer held when the store "
                                "needed them (recorded in aud_gaps)", NULL);
    m_undecodable = ks_metrics_counter("ks_audit_undecodable_total",
                                       "stream messages that are not AuditEvents (recorded in "
                                       "aud_gaps, acked)", NULL);
    m_errors = ks_metrics_counter("ks_audit_insert_errors_total",
                                  "failed store transactions (retried; nothing was acked)", NULL);
    m_batch = ks_metrics_histogram("ks_audit_batch_size", "stream sequences per transaction",
                                   NULL, batch_bounds, sizeof(batch_bounds) / sizeof(*batch_bounds));
    m_commit = ks_metrics_histogram("ks_audit_commit_seconds",
                                    "time of one store transaction, BEGIN to COMMIT", NULL,
                                    commit_bounds, sizeof(commit_bounds) / sizeof(*commit_bounds));
    m_pos = ks_metrics_gauge("ks_audit_stored_seq", "last stream sequence in the store", NULL);
    m_stream_last = ks_metrics_gauge("ks_audit_stream_last_seq",
                                     "last sequence of the stream KS_AUDIT", NULL);
    m_lag = ks_metrics_gauge("ks_audit_consumer_lag",
                             "stream last sequence minus the store's position", NULL);
    m_pending = ks_metrics_gauge("ks_audit_consumer_pending",
                                 "messages of this replica's durable consumer not yet delivered "
                                 "or not yet acknowledged", NULL);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_why(aud_consumer *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_why(aud_consumer *c, const char *fmt, ...)
{
    va_list ap;

    pthread_mutex_lock(&c->mu);
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof(c->why), fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&c->mu);
}

/* Sleep up to ms, waking early on stop. Returns 1 when stopping. */
static int nap(aud_consumer *c, int ms)
{
    struct timespec dl;
    int stop;

    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->mu);
    while (!c->stop && pthread_cond_timedwait(&c->cond, &c->mu, &dl) != ETIMEDOUT)
        ;
    stop = c->stop;
    pthread_mutex_unlock(&c->mu);
    return stop;
}

/* The delivery thread's part: read the sequence, queue, wake the writer. */
static void on_msg(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    aud_consumer *c = arg;
    uint64_t seq = 0;
    aud_row *row;

    if (ks_bus_msg_js_meta(msg, &seq, NULL) != KS_OK || seq == 0) {
        ks_warn("audit: a message on %s without JetStream metadata, dropped",
                ks_bus_msg_subject(msg));
        ks_bus_msg_destroy(msg);
        return;
    }
    /* decoding here takes it off the writer's thread; a message that does
     * not decode is the store's to record */
    row = malloc(sizeof(*row));
    if (row != NULL && aud_row_decode(ks_bus_msg_data(msg), ks_bus_msg_len(msg), row) != KS_OK) {
        free(row);
        row = NULL;
    }
    pthread_mutex_lock(&c->mu);
    if (c->nqueue == c->capqueue) {
        size_t nc = c->capqueue ? 2 * c->capqueue : 1024;
        pending_msg *q = realloc(c->queue, nc * sizeof(*q));
        if (q == NULL) {
            pthread_mutex_unlock(&c->mu);
            /* not acked: redelivered after the ack wait */
            ks_error("audit consumer: out of memory, message left for redelivery");
            ks_bus_msg_destroy(msg);
            row_free(row);
            return;
        }
        c->queue = q;
        c->capqueue = nc;
    }
    if (c->nqueue == 0)
        c->queue_since_ms = mono_ms();
    c->queue[c->nqueue++] = (pending_msg){seq, msg, row};
    if (c->nqueue == 1 || c->nqueue >= c->cfg.batch_max)
        pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
}

/* ---- acks ---- */

/* Hand n messages over to the ack thread, which acks and destroys them. */
static void ack_later(aud_consumer *c, ks_bus_msg *const *msgs, size_t n, size_t stride)
{
    pthread_mutex_lock(&c->ack_mu);
    if (c->nacks + n > c->capacks) {
        size_t nc = c->capacks ? 2 * c->capacks : 4096;
        ks_bus_msg **a;
        while (nc < c->nacks + n)
            nc *= 2;
        a = realloc(c->acks, nc * sizeof(*a));
        if (a == NULL) {
            pthread_mutex_unlock(&c->ack_mu);
            /* ack here and now rather than not at all */
            for (size_t i = 0; i < n; i++) {
                ks_bus_msg *m = *(ks_bus_msg *const *)((const char *)msgs + i * stride);
                (void)ks_bus_msg_ack(m);
                ks_bus_msg_destroy(m);
            }
            return;
        }
        c->acks = a;
        c->capacks = nc;
    }
    for (size_t i = 0; i < n; i++)
        c->acks[c->nacks++] = *(ks_bus_msg *const *)((const char *)msgs + i * stride);
    pthread_cond_signal(&c->ack_cond);
    pthread_mutex_unlock(&c->ack_mu);
}

static void *ack_run(void *arg)
{
    aud_consumer *c = arg;
    ks_bus_msg **mine = NULL;
    size_t capmine = 0;

    for (;;) {
        size_t n;
        int stop;

        pthread_mutex_lock(&c->ack_mu);
        while (c->nacks == 0 && !c->ack_stop)
            pthread_cond_wait(&c->ack_cond, &c->ack_mu);
        /* swap buffers: the writer never waits for the acks to be sent */
        n = c->nacks;
        if (n > 0) {
            ks_bus_msg **t = c->acks;
            size_t tc = c->capacks;
            c->acks = mine;
            c->capacks = capmine;
            mine = t;
            capmine = tc;
            c->nacks = 0;
        }
        stop = c->ack_stop;
        pthread_mutex_unlock(&c->ack_mu);
        for (size_t i = 0; i < n; i++) {
            (void)ks_bus_msg_ack(mine[i]);
            ks_bus_msg_destroy(mine[i]);
        }
        if (stop && n == 0)
            break;
    }
    free(mine);
    return NULL;
}

/* ---- setup ---- */

/* Ensure the stream, check it is the one the store was filled from, make
 * the durable consumer match the store, subscribe. */
static ks_status setup(aud_consumer *c)
{
    const char *subjects[] = {AUD_STREAM_SUBJECTS};
    ks_bus_stream_cfg sc = {
        .name = AUD_STREAM,
        .subjects = subjects,
        .nsubjects = 1,
        .max_age_ms = c->cfg.max_age_ms,
        .max_bytes = c->cfg.max_bytes,
        .duplicate_window_ms = KS_AUDIT_DUPLICATE_WINDOW_MS,
        .replicas = c->cfg.replicas,
    };
    ks_bus_consumer_cfg cc = {
        .stream = AUD_STREAM,
        .durable = c->cfg.durable,
        /* no filter: the stream holds only ks.audit.>, and nats-server
         * 2.9 reads a wildcard-filtered consumer's backlog from disk at a
         * few hundred messages a second */
        .filter_subject = NULL,
        .ack_wait_ms = c->cfg.ack_wait_ms,
        .max_ack_pending = c->cfg.max_ack_pending,
    };
    ks_bus_stream_state ss;
    ks_bus_consumer_state cs;
    uint64_t pos = atomic_load(&c->position);
    int64_t created = 0;
    ks_status st;

    if (!ks_bus_is_connected(c->bus)) {
        set_why(c, "waiting for NATS");
        return KS_FAIL(KS_ERR_UNAVAILABLE, "not connected to NATS");
    }
    st = ks_bus_stream_ensure(c->bus, &sc);
    if (st != KS_OK) {
        /* another writer (a gateway with other settings) may own its
         * configuration: consume the stream as it is */
        char first[256];
        snprintf(first, sizeof(first), "%s", ks_status_last());
        if (ks_bus_stream_state_get(c->bus, AUD_STREAM, &ss) != KS_OK) {
            set_why(c, "cannot create the stream %s: %s", AUD_STREAM, first);
            return st;
        }
        ks_warn("audit: stream %s exists but could not be updated to this replica's settings: %s",
                AUD_STREAM, first);
    }
    if ((st = ks_bus_stream_state_get(c->bus, AUD_STREAM, &ss))) {
        set_why(c, "cannot read the stream %s: %s", AUD_STREAM, ks_status_last());
        return st;
    }
    if ((st = aud_store_stream_created(c->store, &created)))
        return st;
    if ((created != 0 && created != ss.created_unix_ns && pos > 0) || pos > ss.last_seq) {
        set_why(c,
                "the stream %s is not the one this store was filled from (store at sequence %llu,"
                " stream at %llu): move the store file aside to rebuild it from the stream",
                AUD_STREAM, (unsigned long long)pos, (unsigned long long)ss.last_seq);
        return KS_FAIL(KS_ERR_CONFLICT, "%s", c->why);
    }
    if (created != ss.created_unix_ns &&
        (st = aud_store_set_stream_created(c->store, ss.created_unix_ns)))
        return st;
    /* The durable resumes where the store ends. When its own record says
     * otherwise (messages delivered to a process that died before its
     * commit, which JetStream would hand out again only after the ack wait
     * and which hold its ack floor back meanwhile; or a store behind it,
     * restored from a backup or new), it is created again at the store's
     * position. */
    st = ks_bus_consumer_state_get(c->bus, AUD_STREAM, c->cfg.durable, &cs);
    if (st == KS_OK && (cs.ack_floor_stream_seq != pos || cs.num_ack_pending != 0)) {
        if (cs.ack_floor_stream_seq > pos)
            ks_warn("audit: the store (at sequence %llu) is behind its durable consumer %s (acked "
                    "up to %llu): resuming the consumer at the store's position",
                    (unsigned long long)pos, c->cfg.durable,
                    (unsigned long long)cs.ack_floor_stream_seq);
        else
            ks_info("audit: durable consumer %s acked up to %llu with %lld unacked deliveries; "
                    "resuming it at the store's position %llu",
                    c->cfg.durable, (unsigned long long)cs.ack_floor_stream_seq,
                    (long long)cs.num_ack_pending, (unsigned long long)pos);
        if ((st = ks_bus_consumer_delete(c->bus, AUD_STREAM, c->cfg.durable)) &&
            st != KS_ERR_NOT_FOUND) {
            set_why(c, "cannot reset the consumer %s: %s", c->cfg.durable, ks_status_last());
            return st;
        }
        st = KS_ERR_NOT_FOUND;
    } else if (st != KS_OK && st != KS_ERR_NOT_FOUND) {
        set_why(c, "cannot read the consumer %s: %s", c->cfg.durable, ks_status_last());
        return st;
    }
    if (st == KS_ERR_NOT_FOUND && (st = ks_bus_consumer_create_at(c->bus, &cc, pos + 1))) {
        set_why(c, "cannot create the consumer %s: %s", c->cfg.durable, ks_status_last());
        return st;
    }
    if ((st = ks_bus_durable_bind(c->bus, AUD_STREAM, c->cfg.durable, AUD_STREAM_SUBJECTS,
                                  (int)(c->cfg.max_ack_pending + 1024), on_msg, c, &c->sub))) {
        set_why(c, "cannot subscribe as %s: %s", c->cfg.durable, ks_status_last());
        return st;
    }
    atomic_store(&c->bound, 1);
    ks_info("audit: consuming %s as durable %s from sequence %llu (stream holds %llu..%llu)",
            AUD_STREAM, c->cfg.durable, (unsigned long long)pos + 1,
            (unsigned long long)ss.first_seq, (unsigned long long)ss.last_seq);
    return KS_OK;
}

/* ---- the pending set, ordered by sequence ---- */

static int pending_add(aud_consumer *c, const pending_msg *m)
{
    uint64_t seq = m->seq;
    size_t lo = 0, hi = c->npending;

    if (c->npending > 0 && c->pending[c->npending - 1].seq < seq) {
        lo = c->npending;
    } else {
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (c->pending[mid].seq < seq)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < c->npending && c->pending[lo].seq == seq) {
            /* a redelivery of a message still pending: keep the newest
             * delivery, whose ack covers the sequence */
            ks_bus_msg_destroy(c->pending[lo].msg);
            row_free(c->pending[lo].row);
            c->pending[lo] = *m;
            return 0;
        }
    }
    if (c->npending == c->cappending) {
        size_t nc = c->cappending ? 2 * c->cappending : 1024;
        pending_msg *p = realloc(c->pending, nc * sizeof(*p));
        if (p == NULL)
            return -1;
        c->pending = p;
        c->cappending = nc;
    }
    memmove(&c->pending[lo + 1], &c->pending[lo], (c->npending - lo) * sizeof(*c->pending));
    c->pending[lo] = *m;
    c->npending++;
    return 0;
}

/* Sort the received messages into pending; ack and drop what is stored. */
static void take(aud_consumer *c, pending_msg *msgs, size_t n)
{
    uint64_t pos = atomic_load(&c->position);

    for (size_t i = 0; i < n; i++) {
        if (msgs[i].seq <= pos) {
            row_free(msgs[i].row);
            ack_later(c, &msgs[i].msg, 1, sizeof(pending_msg));
            ks_metric_inc(m_redeliveries);
            continue;
        }
        if (pending_add(c, &msgs[i]) != 0) {
            ks_error("audit consumer: out of memory, sequence %llu left for redelivery",
                     (unsigned long long)msgs[i].seq);
            ks_bus_msg_destroy(msgs[i].msg);
            row_free(msgs[i].row);
        }
    }
}

/* ---- one transaction ---- */

typedef struct {
    aud_item *items;
    ks_bus_msg **fetched;     /* read from the stream: destroyed, never acked */
    char (*reasons)[128];
    size_t nitems, nfetched;
} work;

/* Messages of a replay, handed from its delivery thread. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    ks_bus_msg **msgs;
    size_t head, n, cap;
} fill_queue;

static void on_fill(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    fill_queue *q = arg;

    pthread_mutex_lock(&q->mu);
    if (q->head + q->n < q->cap) {
        q->msgs[q->head + q->n++] = msg;
        msg = NULL;
        pthread_cond_broadcast(&q->cond);
    }
    pthread_mutex_unlock(&q->mu);
    ks_bus_msg_destroy(msg);    /* beyond what this round takes */
}

/* The next replayed message, waiting up to ms; NULL when none came. */
static ks_bus_msg *fill_next(fill_queue *q, int ms)
{
    struct timespec dl;
    ks_bus_msg *m = NULL;

    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&q->mu);
    while (q->n == 0 && pthread_cond_timedwait(&q->cond, &q->mu, &dl) != ETIMEDOUT)
        ;
    if (q->n > 0) {
        m = q->msgs[q->head++];
        q->n--;
    }
    pthread_mutex_unlock(&q->mu);
    return m;
}

static void add_gap(work *w, uint64_t first, uint64_t last)
{
    size_t k = w->nitems++;

    snprintf(w->reasons[k], sizeof(w->reasons[0]), "not in the stream any more");
    w->items[k] = (aud_item){.seq = first, .gap_last = last, .gap_reason = w->reasons[k]};
    ks_warn("audit: sequences %llu..%llu are not in the stream any more (aged out or deleted): "
            "recorded as a gap",
            (unsigned long long)first, (unsigned long long)last);
}

/* Items for the sequences next..until (between the position and the first
 * pending message): read back from the stream by an ordered replay from
 * next, which delivers every message still stored in order, so a jump in
 * its sequences is a gap. At most FILL_MAX items per round; fewer when the
 * stream cannot be read (the next round tries again). */
static void fill_gap(aud_consumer *c, uint64_t next, uint64_t until, work *w)
{
    ks_bus_replay_cfg rc = {.stream = AUD_STREAM, .filter_subject = AUD_STREAM_SUBJECTS,
                            .start_seq = next};
    fill_queue q = {.cap = FILL_MAX + 1};
    ks_bus_replay *rep = NULL;
    uint64_t expected = next;
    size_t fetched_before = w->nfetched;
    ks_bus_msg *m;

    q.msgs = calloc(q.cap, sizeof(*q.msgs));
    if (q.msgs == NULL)
        return;
    pthread_mutex_init(&q.mu, NULL);
    pthread_cond_init(&q.cond, NULL);
    if (ks_bus_replay_start(c->bus, &rc, on_fill, &q, &rep) != KS_OK) {
        ks_warn("audit: cannot read sequences %llu..%llu back from the stream: %s",
                (unsigned long long)next, (unsigned long long)until, ks_status_last());
        goto out;
    }
    /* two items per message at most (a gap before it, itself) */
    while (expected <= until && w->nitems + 2 <= FILL_MAX) {
        int waited = 0;
        while ((m = fill_next(&q, 100)) == NULL && (waited += 100) < 5000 &&
               !atomic_load(&c->stopping))
            ;
        if (m == NULL)
            break;
        uint64_t seq = 0;
        if (ks_bus_msg_js_meta(m, &seq, NULL) != KS_OK || seq < expected) {
            ks_bus_msg_destroy(m);
            continue;
        }
        if (seq > expected) {
            add_gap(w, expected, seq - 1 < until ? seq - 1 : until);
            expected = seq;
        }
        if (seq > until) {
            ks_bus_msg_destroy(m);
            break;
        }
        w->fetched[w->nfetched++] = m;
        w->items[w->nitems] = (aud_item){.seq = seq, .blob = ks_bus_msg_data(m),
                                         .len = ks_bus_msg_len(m)};
        w->nitems++;
        expected = seq + 1;
    }
    if (expected == next)
        ks_warn("audit: no message came back from the stream for sequences %llu..%llu",
                (unsigned long long)next, (unsigned long long)until);
    else if (w->nfetched > fetched_before)
        ks_info("audit: read %zu message(s) of sequences %llu..%llu back from the stream",
                w->nfetched - fetched_before, (unsigned long long)next,
                (unsigned long long)expected - 1);
out:
    ks_bus_replay_stop(rep);
    for (size_t i = 0; i < q.n; i++)
        ks_bus_msg_destroy(q.msgs[q.head + i]);
    free(q.msgs);
    pthread_mutex_destroy(&q.mu);
    pthread_cond_destroy(&q.cond);
}

/* Store what can be stored in order; 1 when something was committed or
 * nothing was to do, 0 after a failure (retry later). */
static int commit_round(aud_consumer *c)
{
    uint64_t pos = atomic_load(&c->position), next = pos + 1;
    size_t cap = c->cfg.batch_max + FILL_MAX, run = 0;
    work w = {0};
    aud_append_result res;
    ks_status st;
    int ok = 0;

    if (c->npending == 0)
        return 1;
    w.items = calloc(cap, sizeof(*w.items));
    w.fetched = calloc(FILL_MAX, sizeof(*w.fetched));
    w.reasons = calloc(FILL_MAX, sizeof(*w.reasons));
    if (w.items == NULL || w.fetched == NULL || w.reasons == NULL)
        goto out;
    if (c->pending[0].seq > next)
        fill_gap(c, next, c->pending[0].seq - 1, &w);
    if (w.nitems > 0) {
        const aud_item *l = &w.items[w.nitems - 1];
        next = (l->blob ? l->seq : l->gap_last) + 1;
    }
    while (run < c->npending && run < c->cfg.batch_max && c->pending[run].seq == next) {
        w.items[w.nitems] = (aud_item){.seq = next, .blob = ks_bus_msg_data(c->pending[run].msg),
                                       .len = ks_bus_msg_len(c->pending[run].msg),
                                       .row = c->pending[run].row};
        w.nitems++;
        run++;
        next++;
    }
    if (w.nitems == 0) {
        ok = 0;    /* the gap could not be read: try again shortly */
        goto out;
    }
    {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        st = aud_store_append(c->store, w.items, w.nitems, &res);
        clock_gettime(CLOCK_MONOTONIC, &b);
        ks_metric_observe(m_commit, (double)(b.tv_sec - a.tv_sec) +
                                        (double)(b.tv_nsec - a.tv_nsec) / 1e9);
    }
    if (st) {
        ks_metric_inc(m_errors);
        ks_error("audit: storing sequences %llu..%llu failed (nothing acked, will retry): %s",
                 (unsigned long long)w.items[0].seq, (unsigned long long)next - 1,
                 ks_status_last());
        goto out;
    }
    atomic_store(&c->position, res.last_seq);
    /* committed: now, and only now, the acks */
    for (size_t i = 0; i < run; i++)
        row_free(c->pending[i].row);
    ack_later(c, &c->pending[0].msg, run, sizeof(pending_msg));
    memmove(c->pending, c->pending + run, (c->npending - run) * sizeof(*c->pending));
    c->npending -= run;
    ks_metric_add(m_stored, (double)res.stored);
    ks_metric_add(m_dups, (double)res.duplicates);
    ks_metric_add(m_gaps, (double)res.gap_seqs);
    ks_metric_add(m_undecodable, (double)res.undecodable);
    ks_metric_observe(m_batch, (double)w.nitems);
    ks_metric_set(m_pos, (double)res.last_seq);
    if (res.undecodable > 0)
        ks_error("audit: %zu message(s) in sequences %llu..%llu are not AuditEvents: recorded in "
                 "aud_gaps",
                 res.undecodable, (unsigned long long)w.items[0].seq,
                 (unsigned long long)res.last_seq);
    if (res.duplicates > 0)
        ks_info("audit: %zu message(s) in sequences %llu..%llu repeat a stored audit ID",
                res.duplicates, (unsigned long long)w.items[0].seq,
                (unsigned long long)res.last_seq);
    ok = 1;
out:
    for (size_t i = 0; i < w.nfetched; i++)
        ks_bus_msg_destroy(w.fetched[i]);
    free(w.items);
    free(w.fetched);
    free(w.reasons);
    return ok;
}

static void refresh_lag(aud_consumer *c)
{
    ks_bus_stream_state ss;
    ks_bus_consumer_state cs;
    uint64_t pos = atomic_load(&c->position);

    if (ks_bus_stream_state_get(c->bus, AUD_STREAM, &ss) == KS_OK) {
        ks_metric_set(m_stream_last, (double)ss.last_seq);
        ks_metric_set(m_lag, ss.last_seq > pos ? (double)(ss.last_seq - pos) : 0);
    }
    if (ks_bus_consumer_state_get(c->bus, AUD_STREAM, c->cfg.durable, &cs) == KS_OK)
        ks_metric_set(m_pending, (double)cs.num_pending + (double)cs.num_ack_pending);
}

static void *run(void *arg)
{
    aud_consumer *c = arg;
    int backoff = SETUP_BACKOFF_MIN_MS, commit_backoff = 0;
    pending_msg *batch = NULL;
    size_t capbatch = 0;

    while (setup(c) != KS_OK) {
        ks_debug("audit: consumer setup: %s", ks_status_last());
        if (nap(c, backoff))
            goto out;
        backoff = backoff * 2 > SETUP_BACKOFF_MAX_MS ? SETUP_BACKOFF_MAX_MS : backoff * 2;
    }
    set_why(c, "%s", "");
    for (;;) {
        size_t n = 0;
        int stopping;

        pthread_mutex_lock(&c->mu);
        /* wait for the first message, then for the batch to fill or its
         * time to pass; when stopping, take what is left */
        while (!c->stop && c->nqueue == 0 && commit_backoff == 0 && c->npending == 0) {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_sec += 1;
            pthread_cond_timedwait(&c->cond, &c->mu, &dl);
            if (mono_ms() >= c->next_lag_ms)
                break;
        }
        while (!c->stop && c->nqueue > 0 && c->nqueue < c->cfg.batch_max &&
               mono_ms() < c->queue_since_ms + c->cfg.batch_wait_ms) {
            struct timespec dl;
            int64_t left = c->queue_since_ms + c->cfg.batch_wait_ms - mono_ms();
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_nsec += (long)(left > 0 ? left : 0) * 1000000L;
            while (dl.tv_nsec >= 1000000000L) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&c->cond, &c->mu, &dl);
        }
        n = c->nqueue;
        if (n > capbatch) {
            pending_msg *nb = realloc(batch, n * sizeof(*nb));
            if (nb == NULL)
                n = capbatch;
            else {
                batch = nb;
                capbatch = n;
            }
        }
        if (n > 0) { /* batch is still NULL before the first message */
            memcpy(batch, c->queue, n * sizeof(*batch));
            memmove(c->queue, c->queue + n, (c->nqueue - n) * sizeof(*c->queue));
        }
        c->nqueue -= n;
        if (c->nqueue > 0)
            c->queue_since_ms = mono_ms();
        stopping = c->stop;
        pthread_mutex_unlock(&c->mu);

        take(c, batch, n);
        if (commit_backoff > 0 && !stopping && nap(c, commit_backoff))
            stopping = 1;
        /* everything that is contiguous now, batch_max at a time */
        while (c->npending > 0) {
            uint64_t before = atomic_load(&c->position);
            if (!commit_round(c)) {
                commit_backoff = commit_backoff == 0 ? 100 : commit_backoff * 2;
                if (commit_backoff > COMMIT_BACKOFF_MAX_MS)
                    commit_backoff = COMMIT_BACKOFF_MAX_MS;
                break;
            }
            commit_backoff = 0;
            if (atomic_load(&c->position) == before)
                break;
            /* go on while progress is made: contiguous batches, or the rest
             * of a gap (read back FILL_MAX sequences per round) */
        }
        if (mono_ms() >= c->next_lag_ms) {
            refresh_lag(c);
            c->next_lag_ms = mono_ms() + (c->cfg.lag_interval_ms > 0 ? c->cfg.lag_interval_ms : 2000);
        }
        if (stopping)
            break;
    }
out:
    free(batch);
    return NULL;
}

ks_status aud_consumer_start(ks_bus *bus, aud_store *store, const aud_consumer_cfg *cfg,
                             aud_consumer **out)
{
    aud_consumer *c;
    uint8_t head[AUD_CHAIN_LEN];
    uint64_t pos = 0;
    ks_status st;

    if (bus == NULL || store == NULL || cfg == NULL || cfg->durable == NULL || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "aud_consumer_start: NULL argument");
    if ((st = aud_store_position(store, &pos, head)))
        return st;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "consumer");
    metrics_init();
    c->bus = bus;
    c->store = store;
    c->cfg = *cfg;
    if (c->cfg.batch_max == 0)
        c->cfg.batch_max = 1000;
    if (c->cfg.batch_wait_ms <= 0)
        c->cfg.batch_wait_ms = 20;
    atomic_store(&c->position, pos);
    ks_metric_set(m_pos, (double)pos);
    snprintf(c->why, sizeof(c->why), "starting");
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cond, NULL);
    pthread_mutex_init(&c->ack_mu, NULL);
    pthread_cond_init(&c->ack_cond, NULL);
    if (pthread_create(&c->ack_thread, NULL, ack_run, c) != 0) {
        aud_consumer_stop(c);
        return KS_FAIL(KS_ERR_INTERNAL, "cannot start the ack thread");
    }
    c->ack_started = 1;
    if (pthread_create(&c->thread, NULL, run, c) != 0) {
        aud_consumer_stop(c);
        return KS_FAIL(KS_ERR_INTERNAL, "cannot start the consumer thread");
    }
    c->thread_started = 1;
    *out = c;
    return KS_OK;
}

void aud_consumer_stop(aud_consumer *c)
{
    if (c == NULL)
        return;
    /* The writer commits what it holds and hands the acks over; the ack
     * thread sends them; only then does the subscription go, because an
     * ack needs its message's subscription (cnats 3.4.1 reads msg->sub).
     * Messages delivered meanwhile stay unacked and come again. */
    atomic_store(&c->stopping, 1);
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
    if (c->thread_started)
        pthread_join(c->thread, NULL);
    pthread_mutex_lock(&c->ack_mu);
    c->ack_stop = 1;
    pthread_cond_signal(&c->ack_cond);
    pthread_mutex_unlock(&c->ack_mu);
    if (c->ack_started)
        pthread_join(c->ack_thread, NULL);
    if (atomic_load(&c->bound))
        ks_bus_replay_stop(c->sub);
    /* whatever is left was not stored: not acked, so it is redelivered */
    for (size_t i = 0; i < c->npending; i++) {
        ks_bus_msg_destroy(c->pending[i].msg);
        row_free(c->pending[i].row);
    }
    for (size_t i = 0; i < c->nqueue; i++) {
        ks_bus_msg_destroy(c->queue[i].msg);
        row_free(c->queue[i].row);
    }
    free(c->pending);
    free(c->queue);
    free(c->acks);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->ack_mu);
    pthread_cond_destroy(&c->ack_cond);
    free(c);
}

int aud_consumer_ready(void *arg, char *why, size_t whycap)
{
    aud_consumer *c = arg;

    if (c == NULL) {
        snprintf(why, whycap, "audit consumer not started");
        return 0;
    }
    if (atomic_load(&c->bound))
        return 1;
    pthread_mutex_lock(&c->mu);
    snprintf(why, whycap, "audit consumer: %s", c->why);
    pthread_mutex_unlock(&c->mu);
    return 0;
}

uint64_t aud_consumer_position(aud_consumer *c)
{
    return atomic_load(&c->position);
}
