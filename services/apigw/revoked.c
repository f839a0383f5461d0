/* revoked.c: the gateway's revocation set (auth.h; docs/gateway-auth.md).
 *
 * iam (services/iam/revocation.c) writes every revocation as a protobuf
 * Revocation both into the KV bucket KS_REVOKED (keys "jti.<jti>" and
 * "user.<escaped user>", TTL the longest token lifetime) and onto the
 * subject ks.iam.revoked. The gateway listens to both: the subject brings a
 * logout to every replica within milliseconds, the bucket's watch brings
 * every revocation made before this process started (and again, harmlessly,
 * the ones the subject already brought). Only the values are read; the keys
 * are iam's business.
 *
 * Memory is bounded: entries are dropped once nothing they refuse can still
 * be valid (the token's exp, or the user cutoff plus the longest lifetime,
 * plus the JWT skew), and at most GW_REVOKED_MAX_ENTRIES are kept. Past that
 * the set would have to forget a revocation, so instead it declares itself
 * not ready (gw_revoked_ready) until the dropped entry would have expired,
 * and authn.c asks iam about every token meanwhile. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "codec.h"
#include "jwt.h"
#include "kscore/v1/iam.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "strmap.h"

#define REV_JTI_MAX 64
#define REV_USER_MAX 255
#define REV_MAX_MESSAGE 4096            /* a Revocation is ~100 bytes */
#define REV_SKEW_S KS_JWT_DEFAULT_SKEW_S
#define REV_DEFAULT_KEEP_S (90LL * 86400) /* no expiry given: iam's longest refresh TTL */
#define REV_PRUNE_EVERY_S 30
#define REV_BACKOFF_MIN_MS 250
#define REV_BACKOFF_MAX_MS 5000

typedef struct {
    int64_t cutoff;      /* tokens with iat < cutoff are revoked */
    int64_t keep_until;  /* unix s; absent after this */
} rev_user;

struct gw_revoked {
    ks_bus *bus;
    gw_revoked_clock_fn clock;

    pthread_rwlock_t lock;       /* the maps and the fields below it */
    ks_strmap *jtis;             /* jti -> int64_t keep_until */
    ks_strmap *users;            /* username -> rev_user */
    int64_t last_prune;
    int64_t overflow_until;      /* not ready before this (an entry was dropped) */

    _Atomic int loaded;          /* the bucket's initial values are in */

    pthread_mutex_t mu;          /* stop, the thread's wait */
    pthread_cond_t cv;
    int stop;
    pthread_t thread;
    int thread_started;
    ks_bus_kv *kv;               /* owned by the thread until destroy */
    ks_bus_kv_watcher *watch;
    ks_bus_sub *sub;

    ks_metric *m_entries, *m_applied, *m_bad, *m_dropped;
};

static int64_t real_clock(void)
{
    return (int64_t)time(NULL);
}

/* ---- the set ---- */

static int prune_jti(const char *key, void *value, void *arg)
{
    void **a = arg;
    if (*(int64_t *)value < *(int64_t *)a[1])
        ks_strmap_remove(a[0], key);
    return 0;
}

static int prune_user(const char *key, void *value, void *arg)
{
    void **a = arg;
    if (((rev_user *)value)->keep_until < *(int64_t *)a[1])
        ks_strmap_remove(a[0], key);
    return 0;
}

/* Caller holds the write lock. */
static void prune_locked(gw_revoked *rv, int64_t now)
{
    void *a[2] = {rv->jtis, &now};

    ks_strmap_each(rv->jtis, prune_jti, a);
    a[0] = rv->users;
    ks_strmap_each(rv->users, prune_user, a);
    rv->last_prune = now;
    ks_metric_set(rv->m_entries,
                  (double)(ks_strmap_size(rv->jtis) + ks_strmap_size(rv->users)));
}

static int full_locked(gw_revoked *rv, int64_t now)
{
    if (ks_strmap_size(rv->jtis) + ks_strmap_size(rv->users) < GW_REVOKED_MAX_ENTRIES)
        return 0;
    prune_locked(rv, now);
    return ks_strmap_size(rv->jtis) + ks_strmap_size(rv->users) >= GW_REVOKED_MAX_ENTRIES;
}

/* An entry that could not be kept: refuse to vouch for any token until it
 * would have expired. */
static void overflow_locked(gw_revoked *rv, int64_t keep_until)
{
    if (keep_until > rv->overflow_until)
        rv->overflow_until = keep_until;
    ks_metric_inc(rv->m_dropped);
    ks_error("revocations: %d entries held, one more cannot be kept: every bearer token is "
             "checked by iam until it would have expired",
             GW_REVOKED_MAX_ENTRIES);
}

static int jti_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= REV_JTI_MAX;
}

ks_status gw_revoked_apply(gw_revoked *rv, const void *data, size_t len)
{
    Kscore__V1__Revocation *rev = NULL;
    int64_t now = rv->clock(), keep;
    ks_status st;

    st = ks_codec_unpack(&kscore__v1__revocation__descriptor, data, len, REV_MAX_MESSAGE,
                         (ProtobufCMessage **)&rev);
    if (st) {
        ks_metric_inc(rv->m_bad);
        ks_warn("revocations: skipped a value that is not a Revocation (%zu bytes)", len);
        return KS_FAIL(KS_ERR_PROTOCOL, "not a Revocation");
    }
    keep = rev->expires_unix > 0 ? rev->expires_unix + REV_SKEW_S + 1 : now + REV_DEFAULT_KEEP_S;
    if (keep < now)
        goto out; /* nothing it refuses is still valid */
    pthread_rwlock_wrlock(&rv->lock);
    if (now - rv->last_prune >= REV_PRUNE_EVERY_S)
        prune_locked(rv, now);
    if (rev->jti != NULL && rev->jti[0] != '\0') {
        int64_t *old = ks_strmap_get(rv->jtis, rev->jti), *v;
        if (!jti_ok(rev->jti)) {
            ks_metric_inc(rv->m_bad);
        } else if (old != NULL) {
            if (keep > *old)
                *old = keep;
        } else if (full_locked(rv, now)) {
            overflow_locked(rv, keep);
        } else if ((v = malloc(sizeof(*v))) == NULL ||
                   (*v = keep, ks_strmap_put(rv->jtis, rev->jti, v)) != KS_OK) {
            free(v);
            overflow_locked(rv, keep);
        }
    }
    if (rev->username != NULL && rev->username[0] != '\0' && rev->issued_before_unix > 0) {
        rev_user *old = ks_strmap_get(rv->users, rev->username), *v;
        if (strlen(rev->username) > REV_USER_MAX) {
            ks_metric_inc(rv->m_bad);
        } else if (old != NULL) {
            if (rev->issued_before_unix > old->cutoff)
                old->cutoff = rev->issued_before_unix;
            if (keep > old->keep_until)
                old->keep_until = keep;
        } else if (full_locked(rv, now)) {
            overflow_locked(rv, keep);
        } else if ((v = malloc(sizeof(*v))) == NULL ||
                   (v->cutoff = rev->issued_before_unix, v->keep_until = keep,
                    ks_strmap_put(rv->users, rev->username, v)) != KS_OK) {
            free(v);
            overflow_locked(rv, keep);
        }
    }
    ks_metric_set(rv->m_entries,
                  (double)(ks_strmap_size(rv->jtis) + ks_strmap_size(rv->users)));
    pthread_rwlock_unlock(&rv->lock);
    ks_metric_inc(rv->m_applied);
out:
    ks_codec_free(&rev->base);
    return KS_OK;
}

int gw_revoked_check(gw_revoked *rv, const char *jti, const char *username, int64_t iat)
{
    int64_t now = rv->clock();
    int revoked = 0;

    pthread_rwlock_rdlock(&rv->lock);
    if (jti != NULL && jti[0] != '\0') {
        const int64_t *keep = ks_strmap_get(rv->jtis, jti);
        revoked = keep != NULL && *keep >= now;
    }
    if (!revoked && username != NULL && username[0] != '\0') {
        const rev_user *u = ks_strmap_get(rv->users, username);
        revoked = u != NULL && u->keep_until >= now && iat < u->cutoff;
    }
    pthread_rwlock_unlock(&rv->lock);
    return revoked;
}

int gw_revoked_ready(gw_revoked *rv)
{
    int ok;

    if (!atomic_load(&rv->loaded))
        return 0;
    pthread_rwlock_rdlock(&rv->lock);
    ok = rv->overflow_until < rv->clock();
    pthread_rwlock_unlock(&rv->lock);
    return ok;
}

void gw_revoked_mark_loaded(gw_revoked *rv)
{
    atomic_store(&rv->loaded, 1);
}

size_t gw_revoked_size(gw_revoked *rv)
{
    size_t n;

    pthread_rwlock_rdlock(&rv->lock);
    n = ks_strmap_size(rv->jtis) + ks_strmap_size(rv->users);
    pthread_rwlock_unlock(&rv->lock);
    return n;
}

/* ---- feeds ---- */

static void on_published(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    (void)gw_revoked_apply(arg, ks_bus_msg_data(msg), ks_bus_msg_len(msg));
    ks_bus_msg_destroy(msg);
}

static void on_watch(const ks_bus_kv_entry *entry, void *arg)
{
    gw_revoked *rv = arg;

    if (entry == NULL) {
        if (!atomic_exchange(&rv->loaded, 1))
            ks_info("revocations: %zu entries loaded from %s", gw_revoked_size(rv),
                    GW_REVOKED_BUCKET);
        return;
    }
    /* A revocation ends by age, never by a delete: ignore deletes and
     * purges (the bucket's TTL makes them, after the token expired). */
    if (entry->op == KS_BUS_KV_PUT)
        (void)gw_revoked_apply(rv, entry->value, entry->len);
}

/* Open the bucket (never create it) and watch it. Runs on the thread. */
static ks_status open_bucket(gw_revoked *rv)
{
    ks_bus_kv_cfg cfg = {.bucket = GW_REVOKED_BUCKET};
    ks_bus_kv *kv = NULL;
    ks_bus_kv_watcher *w = NULL;
    ks_status st;

    if (!ks_bus_is_connected(rv->bus))
        return KS_FAIL(KS_ERR_UNAVAILABLE, "NATS is not connected");
    st = ks_bus_kv_open(rv->bus, &cfg, 0, &kv);
    if (st)
        return st;
    st = ks_bus_kv_watch(kv, ">", on_watch, rv, &w);
    if (st) {
        ks_bus_kv_close(kv);
        return st;
    }
    pthread_mutex_lock(&rv->mu);
    rv->kv = kv;
    rv->watch = w;
    pthread_mutex_unlock(&rv->mu);
    ks_info("revocations: watching the bucket %s", GW_REVOKED_BUCKET);
    return KS_OK;
}

static void *rev_thread(void *arg)
{
    gw_revoked *rv = arg;
    int64_t backoff = REV_BACKOFF_MIN_MS;
    int warned = 0, open = 0;

    pthread_mutex_lock(&rv->mu);
    while (!rv->stop) {
        int64_t wait_ms = REV_PRUNE_EVERY_S * 1000LL;
        struct timespec until;

        pthread_mutex_unlock(&rv->mu);
        if (!open) {
            if (open_bucket(rv) == KS_OK) {
                open = 1;
            } else {
                if (!warned)
                    ks_warn("revocations: cannot watch %s yet (retrying; bearer tokens are "
                            "checked by iam meanwhile): %s",
                            GW_REVOKED_BUCKET, ks_status_last());
                warned = 1;
                wait_ms = backoff;
                backoff = backoff * 2 > REV_BACKOFF_MAX_MS ? REV_BACKOFF_MAX_MS : backoff * 2;
            }
        } else {
            int64_t now = rv->clock();
            pthread_rwlock_wrlock(&rv->lock);
            if (now - rv->last_prune >= REV_PRUNE_EVERY_S)
                prune_locked(rv, now);
            pthread_rwlock_unlock(&rv->lock);
        }
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += wait_ms / 1000;
        until.tv_nsec += (wait_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&rv->mu);
        if (!rv->stop)
            pthread_cond_timedwait(&rv->cv, &rv->mu, &until);
    }
    pthread_mutex_unlock(&rv->mu);
    return NULL;
}

/* ---- life cycle ---- */

ks_status gw_revoked_create(ks_bus *bus, gw_revoked_clock_fn clock, gw_revoked **out)
{
    gw_revoked *rv = calloc(1, sizeof(*rv));
    pthread_condattr_t ca;
    ks_status st = KS_OK;

    if (rv == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "revocations");
    rv->bus = bus;
    rv->clock = clock ? clock : real_clock;
    pthread_rwlock_init(&rv->lock, NULL);
    pthread_mutex_init(&rv->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&rv->cv, &ca);
    pthread_condattr_destroy(&ca);
    rv->last_prune = rv->clock();
    rv->m_entries = ks_metrics_gauge("ks_gateway_revocations",
                                     "revoked token ids and user cutoffs held", NULL);
    rv->m_applied = ks_metrics_counter("ks_gateway_revocations_applied_total",
                                       "revocations received (subject and bucket)", NULL);
    rv->m_bad = ks_metrics_counter("ks_gateway_revocations_invalid_total",
                                   "revocation values skipped as unreadable", NULL);
    rv->m_dropped = ks_metrics_counter(
        "ks_gateway_revocations_overflow_total",
        "revocations beyond the cap (the set then defers to iam until they expire)", NULL);
    rv->jtis = ks_strmap_create(free);
    rv->users = ks_strmap_create(free);
    if (rv->jtis == NULL || rv->users == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "revocations");
        goto out;
    }
    if (bus != NULL) {
        /* Subscribe first: a revocation published while the bucket loads is
         * not missed (the watch would bring it too, but later). */
        st = ks_bus_subscribe(bus, GW_REVOKED_SUBJECT, NULL, on_published, rv, &rv->sub);
        if (st)
            goto out;
        if (pthread_create(&rv->thread, NULL, rev_thread, rv) != 0) {
            st = KS_FAIL(KS_ERR_INTERNAL, "cannot start the revocations thread");
            goto out;
        }
        rv->thread_started = 1;
    }
    *out = rv;
out:
    if (st)
        gw_revoked_destroy(rv);
    return st;
}

void gw_revoked_destroy(gw_revoked *rv)
{
    if (rv == NULL)
        return;
    if (rv->thread_started) {
        pthread_mutex_lock(&rv->mu);
        rv->stop = 1;
        pthread_cond_broadcast(&rv->cv);
        pthread_mutex_unlock(&rv->mu);
        pthread_join(rv->thread, NULL);
    }
    ks_bus_unsubscribe(rv->sub);
    ks_bus_kv_watch_stop(rv->watch);
    ks_bus_kv_close(rv->kv);
    ks_strmap_destroy(rv->jtis);
    ks_strmap_destroy(rv->users);
    pthread_cond_destroy(&rv->cv);
    pthread_mutex_destroy(&rv->mu);
    pthread_rwlock_destroy(&rv->lock);
    free(rv);
}
