/* revocation.c: revoked tokens (iam.h; docs/iam.md "Revocation").
 *
 * Every revocation is a protobuf Revocation, kept three ways:
 *   - in the KV bucket KS_REVOKED under "jti.<jti>" (one token) or
 *     "user.<escaped username>" (every token of the user issued before a
 *     cutoff); the bucket's TTL is the longest token lifetime, so an entry
 *     lives as long as any token it can refuse;
 *   - published on ks.iam.revoked, for the gateways and as a second path to
 *     the other iam replicas;
 *   - in this process's memory (two string maps), fed by a watch of the
 *     bucket (initial values, then changes) and by the subject, so a
 *     revocation is honoured by every replica within milliseconds and after
 *     a restart.
 * A put that fails (NATS or JetStream away) stays in a queue that a
 * background thread retries until it lands: nothing is dropped silently. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "iam.h"
#include "kscore/v1/iam.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "strmap.h"
#include "subject.h"

#define REV_BUCKET "KS_REVOKED"
#define REV_SUBJECT "ks.iam.revoked"
#define REV_JTI_MAX 64
#define REV_KEY_MAX (8 + KS_SUBJECT_ESCAPED_MAX(256))
#define REV_MAX_PENDING 100000
#define REV_PRUNE_MS 30000
#define REV_SKEW_S KS_JWT_DEFAULT_SKEW_S

typedef struct rev_pending {
    char key[REV_KEY_MAX];
    uint8_t *buf;
    size_t len;
    struct rev_pending *next;
} rev_pending;

typedef struct {
    int64_t cutoff;  /* tokens with iat < cutoff are revoked */
    int64_t expires; /* forget after this */
} rev_user;

struct iam_revocations {
    iam *s;
    pthread_mutex_t mu;      /* the maps, the queue, stop */
    pthread_cond_t cv;
    ks_strmap *jtis;         /* jti -> int64_t *exp */
    ks_strmap *users;        /* username -> rev_user */
    rev_pending *head, *tail;
    size_t npending;
    int stop;
    pthread_t thread;
    int thread_started;
    ks_bus_kv *_Atomic kv;   /* set once by the thread, closed at stop */
    ks_bus_kv_watcher *watch;
    atomic_int loaded;       /* the watch delivered the initial values */
    _Atomic uint64_t seen;   /* highest revision the watch delivered */
    uint64_t stuck_at;       /* the bucket's revision when the watch looked stuck */
    ks_bus_sub *sub;
    int64_t ttl_ms;
};

static ks_metric *m_revoked(const char *kind)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "kind=\"%s\"", kind);
    return ks_metrics_counter("ks_iam_revocations_total", "token revocations made by this replica",
                              labels);
}

static ks_metric *m_pending(void)
{
    return ks_metrics_gauge("ks_iam_revocations_pending",
                            "revocations not yet stored in KS_REVOKED (retried)", NULL);
}

static int jti_valid(const char *jti)
{
    size_t n = jti ? strlen(jti) : 0;

    if (n == 0 || n > REV_JTI_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = jti[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

/* ---- the in-memory set ---- */

/* Apply one revocation to the maps; the caller holds mu. */
static void apply_locked(struct iam_revocations *r, const char *jti, const char *username,
                         int64_t issued_before, int64_t expires)
{
    int64_t now = iam_now_unix();

    if (expires != 0 && expires + REV_SKEW_S < now)
        return; /* nothing it could refuse is still valid */
    if (jti != NULL && jti[0] != '\0') {
        int64_t *old = ks_strmap_get(r->jtis, jti), *v;
        if (old != NULL) {
            if (expires > *old)
                *old = expires;
        } else if ((v = malloc(sizeof(*v))) != NULL) {
            *v = expires;
            if (ks_strmap_put(r->jtis, jti, v) != KS_OK)
                free(v);
        }
    }
    if (username != NULL && username[0] != '\0' && issued_before > 0) {
        rev_user *old = ks_strmap_get(r->users, username), *v;
        if (old != NULL) {
            if (issued_before > old->cutoff)
                old->cutoff = issued_before;
            if (expires > old->expires)
                old->expires = expires;
        } else if ((v = malloc(sizeof(*v))) != NULL) {
            v->cutoff = issued_before;
            v->expires = expires;
            if (ks_strmap_put(r->users, username, v) != KS_OK)
                free(v);
        }
    }
}

static void apply_message(struct iam_revocations *r, const void *data, size_t len)
{
    Kscore__V1__Revocation *rev = NULL;

    if (KS_UNPACK(kscore__v1__revocation, data, len, &rev) != KS_OK) {
        ks_warn("revocation: skipped a value that is not a Revocation: %s", ks_status_last());
        return;
    }
    pthread_mutex_lock(&r->mu);
    apply_locked(r, rev->jti, rev->username, rev->issued_before_unix, rev->expires_unix);
    pthread_mutex_unlock(&r->mu);
    ks_codec_free(&rev->base);
}

typedef struct {
    ks_strmap *map;
    int64_t now;
} prune_ctx;

static int prune_jti(const char *key, void *value, void *arg)
{
    prune_ctx *c = arg;

    if (*(int64_t *)value + REV_SKEW_S < c->now)
        ks_strmap_remove(c->map, key);
    return 0;
}

static int prune_user(const char *key, void *value, void *arg)
{
    prune_ctx *c = arg;

    if (((rev_user *)value)->expires + REV_SKEW_S < c->now)
        ks_strmap_remove(c->map, key);
    return 0;
}

/* Forget what can refuse nothing any more. */
static void prune(struct iam_revocations *r)
{
    prune_ctx c = {.now = iam_now_unix()};

    pthread_mutex_lock(&r->mu);
    c.map = r->jtis;
    ks_strmap_each(r->jtis, prune_jti, &c);
    c.map = r->users;
    ks_strmap_each(r->users, prune_user, &c);
    pthread_mutex_unlock(&r->mu);
}

int iam_is_revoked(iam *s, const char *jti, const char *username, int64_t iat)
{
    struct iam_revocations *r = s->revoked;
    int revoked = 0;

    if (r == NULL)
        return 0;
    pthread_mutex_lock(&r->mu);
    if (jti != NULL && ks_strmap_get(r->jtis, jti) != NULL)
        revoked = 1;
    if (!revoked && username != NULL) {
        rev_user *u = ks_strmap_get(r->users, username);
        if (u != NULL && iat < u->cutoff)
            revoked = 1;
    }
    pthread_mutex_unlock(&r->mu);
    return revoked;
}

int64_t iam_revocation_floor(iam *s, const char *username)
{
    struct iam_revocations *r = s->revoked;
    int64_t floor_ = 0;

    if (r == NULL || username == NULL)
        return 0;
    pthread_mutex_lock(&r->mu);
    rev_user *u = ks_strmap_get(r->users, username);
    if (u != NULL)
        floor_ = u->cutoff;
    pthread_mutex_unlock(&r->mu);
    return floor_;
}

int iam_revocations_loaded(iam *s, int wait_ms)
{
    struct iam_revocations *r = s->revoked;
    int64_t end = iam_now_ms() + wait_ms;
    struct timespec pause = {0, 1000000};

    if (r == NULL)
        return 0;
    while (!atomic_load(&r->loaded)) {
        if (iam_now_ms() >= end)
            return 0;
        nanosleep(&pause, NULL);
    }
    return 1;
}

/* ---- storing and publishing ---- */

static ks_status pack_revocation(const char *jti, const char *username, int64_t issued_before,
                                 int64_t expires, uint8_t **buf, size_t *len)
{
    Kscore__V1__Revocation rev = KSCORE__V1__REVOCATION__INIT;

    rev.jti = (char *)(jti ? jti : "");
    rev.username = (char *)(username ? username : "");
    rev.issued_before_unix = issued_before;
    rev.expires_unix = expires;
    return ks_codec_pack(&rev.base, buf, len);
}

/* Queue a put for the thread; takes buf. */
static void enqueue(struct iam_revocations *r, const char *key, uint8_t *buf, size_t len)
{
    rev_pending *p = calloc(1, sizeof(*p));

    if (p == NULL) {
        ks_error("revocation: out of memory queueing %s for retry: it is in force on this "
                 "replica and was published, but is not stored",
                 key);
        free(buf);
        return;
    }
    snprintf(p->key, sizeof(p->key), "%s", key);
    p->buf = buf;
    p->len = len;
    pthread_mutex_lock(&r->mu);
    if (r->npending >= REV_MAX_PENDING) {
        pthread_mutex_unlock(&r->mu);
        ks_error("revocation: %d revocations wait to be stored; dropping %s (in force on this "
                 "replica and published only)",
                 REV_MAX_PENDING, key);
        ks_metric_inc(ks_metrics_counter("ks_iam_revocations_dropped_total",
                                         "revocations never stored in KS_REVOKED", NULL));
        free(buf);
        free(p);
        return;
    }
    if (r->tail)
        r->tail->next = p;
    else
        r->head = p;
    r->tail = p;
    r->npending++;
    ks_metric_set(m_pending(), (double)r->npending);
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void publish(iam *s, const uint8_t *buf, size_t len)
{
    if (ks_bus_publish(s->bus, REV_SUBJECT, buf, len) != KS_OK)
        ks_warn("revocation: publish on %s failed: %s", REV_SUBJECT, ks_status_last());
}

ks_status iam_revoke_token(iam *s, const char *jti, int64_t exp_unix)
{
    struct iam_revocations *r = s->revoked;
    char key[REV_KEY_MAX];
    uint8_t *buf = NULL;
    size_t len = 0;
    ks_bus_kv *kv;
    ks_status st;

    if (r == NULL)
        return KS_FAIL(KS_ERR_UNAVAILABLE, "revocations are not started");
    if (!jti_valid(jti))
        return KS_FAIL(KS_ERR_INVALID, "not a token id");
    snprintf(key, sizeof(key), "jti.%s", jti);
    st = pack_revocation(jti, NULL, 0, exp_unix, &buf, &len);
    if (st)
        return st;
    pthread_mutex_lock(&r->mu);
    apply_locked(r, jti, NULL, 0, exp_unix);
    pthread_mutex_unlock(&r->mu);
    publish(s, buf, len);
    ks_metric_inc(m_revoked("token"));
    kv = atomic_load(&r->kv);
    st = kv ? ks_bus_kv_put(kv, key, buf, len, NULL)
            : KS_FAIL(KS_ERR_UNAVAILABLE, "the bucket %s is not open", REV_BUCKET);
    if (st) {
        ks_warn("revocation of a token not stored yet (retried): %s", ks_status_last());
        enqueue(r, key, buf, len);
        return KS_FAIL(KS_ERR_UNAVAILABLE, "the revocation is in force but not stored yet");
    }
    free(buf);
    return KS_OK;
}

ks_status iam_revoke_token_once(iam *s, const char *jti, int64_t exp_unix)
{
    struct iam_revocations *r = s->revoked;
    char key[REV_KEY_MAX];
    uint8_t *buf = NULL;
    size_t len = 0;
    ks_bus_kv *kv;
    ks_status st;

    if (r == NULL)
        return KS_FAIL(KS_ERR_UNAVAILABLE, "revocations are not started");
    if (!jti_valid(jti))
        return KS_FAIL(KS_ERR_INVALID, "not a token id");
    kv = atomic_load(&r->kv);
    if (kv == NULL)
        return KS_FAIL(KS_ERR_UNAVAILABLE, "the bucket %s is not open", REV_BUCKET);
    snprintf(key, sizeof(key), "jti.%s", jti);
    st = pack_revocation(jti, NULL, 0, exp_unix, &buf, &len);
    if (st)
        return st;
    st = ks_bus_kv_update(kv, key, buf, len, 0, NULL);
    if (st == KS_OK) {
        pthread_mutex_lock(&r->mu);
        apply_locked(r, jti, NULL, 0, exp_unix);
        pthread_mutex_unlock(&r->mu);
        publish(s, buf, len);
        ks_metric_inc(m_revoked("token"));
    } else if (st == KS_ERR_CONFLICT) {
        st = KS_FAIL(KS_ERR_CONFLICT, "the token was already revoked");
    }
    free(buf);
    return st;
}

ks_status iam_revoke_user(iam *s, const char *username, int64_t issued_before_unix)
{
    struct iam_revocations *r = s->revoked;
    char key[REV_KEY_MAX], esc[KS_SUBJECT_ESCAPED_MAX(256)];
    int64_t expires = issued_before_unix + (r ? r->ttl_ms / 1000 : 0);
    uint8_t *buf = NULL;
    size_t len = 0;
    ks_bus_kv *kv;
    ks_status st;

    if (r == NULL)
        return KS_FAIL(KS_ERR_UNAVAILABLE, "revocations are not started");
    if (username == NULL || username[0] == '\0' || strlen(username) > 256 ||
        ks_subject_escape_token(username, esc, sizeof(esc)) != KS_OK)
        return KS_FAIL(KS_ERR_INVALID, "not a user name");
    snprintf(key, sizeof(key), "user.%s", esc);
    st = pack_revocation(NULL, username, issued_before_unix, expires, &buf, &len);
    if (st)
        return st;
    pthread_mutex_lock(&r->mu);
    apply_locked(r, NULL, username, issued_before_unix, expires);
    pthread_mutex_unlock(&r->mu);
    publish(s, buf, len);
    ks_metric_inc(m_revoked("user"));
    kv = atomic_load(&r->kv);
    if (kv == NULL) {
        st = KS_FAIL(KS_ERR_UNAVAILABLE, "the bucket %s is not open", REV_BUCKET);
    } else {
        /* Keep the latest cutoff when replicas race: compare and set. */
        for (int attempt = 0; attempt < 5; attempt++) {
            void *old = NULL;
            size_t oldlen = 0;
            uint64_t rev = 0;
            Kscore__V1__Revocation *prev = NULL;

            st = ks_bus_kv_get(kv, key, &old, &oldlen, &rev);
            if (st == KS_ERR_NOT_FOUND) {
                rev = 0;
            } else if (st) {
                break;
            } else {
                int newer = 0;
                if (KS_UNPACK(kscore__v1__revocation, old, oldlen, &prev) == KS_OK) {
                    newer = prev->issued_before_unix >= issued_before_unix;
                    ks_codec_free(&prev->base);
                }
                free(old);
                if (newer) {
                    st = KS_OK;
                    break;
                }
            }
            st = ks_bus_kv_update(kv, key, buf, len, rev, NULL);
            if (st != KS_ERR_CONFLICT)
                break;
        }
    }
    if (st) {
        ks_warn("revocation of the tokens of a user not stored yet (retried): %s",
                ks_status_last());
        enqueue(r, key, buf, len);
        return KS_FAIL(KS_ERR_UNAVAILABLE, "the revocation is in force but not stored yet");
    }
    free(buf);
    return KS_OK;
}

/* ---- the bucket: open, watch, retry ---- */

static void on_watch(const ks_bus_kv_entry *entry, void *arg)
{
    struct iam_revocations *r = arg;

    if (entry == NULL) {
        if (!atomic_exchange(&r->loaded, 1))
            ks_info("revocation: the revocations in %s are loaded", REV_BUCKET);
        return;
    }
    if (entry->revision > atomic_load(&r->seen))
        atomic_store(&r->seen, entry->revision);
    if (entry->op != KS_BUS_KV_PUT)
        return; /* entries end by age; a delete changes nothing */
    apply_message(r, entry->value, entry->len);
}

static void on_published(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    apply_message(arg, ks_bus_msg_data(msg), ks_bus_msg_len(msg));
    ks_bus_msg_destroy(msg);
}

static ks_status open_bucket(struct iam_revocations *r)
{
    ks_bus_kv_cfg cfg = {.bucket = REV_BUCKET,
                         .history = 1,
                         .replicas = (int)r->s->cfg->revoked_replicas,
                         .ttl_ms = r->ttl_ms};
    ks_bus_kv *kv = NULL;
    ks_status st;

    if (!ks_bus_is_connected(r->s->bus))
        return KS_FAIL(KS_ERR_UNAVAILABLE, "NATS is not connected");
    st = ks_bus_kv_open(r->s->bus, &cfg, 1, &kv);
    if (st)
        return st;
    st = ks_bus_kv_watch(kv, ">", on_watch, r, &r->watch);
    if (st) {
        ks_bus_kv_close(kv);
        return st;
    }
    atomic_store(&r->kv, kv);
    ks_info("revocation: bucket %s open (entries live %lld s)", REV_BUCKET,
            (long long)(r->ttl_ms / 1000));
    return KS_OK;
}

/* Store the queued revocations, oldest first, until one fails. */
static void flush_pending(struct iam_revocations *r, ks_bus_kv *kv)
{
    for (;;) {
        rev_pending *p;
        ks_status st;

        pthread_mutex_lock(&r->mu);
        p = r->head;
        if (p != NULL) {
            r->head = p->next;
            if (r->head == NULL)
                r->tail = NULL;
            r->npending--;
        }
        pthread_mutex_unlock(&r->mu);
        if (p == NULL)
            return;
        /* A user entry may race with a newer cutoff stored meanwhile; the
         * in-memory max wins locally and the next revocation repairs it. */
        st = ks_bus_kv_put(kv, p->key, p->buf, p->len, NULL);
        if (st) {
            pthread_mutex_lock(&r->mu);
            p->next = r->head;
            r->head = p;
            if (r->tail == NULL)
                r->tail = p;
            r->npending++;
            ks_metric_set(m_pending(), (double)r->npending);
            pthread_mutex_unlock(&r->mu);
            return;
        }
        ks_info("revocation: stored %s after a retry", p->key);
        free(p->buf);
        free(p);
        pthread_mutex_lock(&r->mu);
        ks_metric_set(m_pending(), (double)r->npending);
        pthread_mutex_unlock(&r->mu);
    }
}

/* A watch ends silently when its connection closes. If the bucket holds a
 * revision the watch has not delivered on two checks in a row, start a new
 * watch: it replays every entry (applying one twice changes nothing). */
static void check_watch(struct iam_revocations *r, ks_bus_kv *kv)
{
    uint64_t last = 0;
    ks_bus_kv_watcher *w = NULL;

    if (ks_bus_kv_last_revision(kv, 0, &last) != KS_OK || last <= atomic_load(&r->seen)) {
        r->stuck_at = 0;
        return;
    }
    if (r->stuck_at == 0 || last < r->stuck_at) {
        r->stuck_at = last;
        return;
    }
    ks_warn("revocation: the watch of %s is behind (revision %llu of %llu); restarting it",
            REV_BUCKET, (unsigned long long)atomic_load(&r->seen), (unsigned long long)last);
    if (ks_bus_kv_watch(kv, ">", on_watch, r, &w) != KS_OK) {
        ks_warn("revocation: cannot restart the watch: %s", ks_status_last());
        return;
    }
    ks_bus_kv_watch_stop(r->watch);
    r->watch = w;
    r->stuck_at = 0;
}

static void *rev_thread(void *arg)
{
    struct iam_revocations *r = arg;
    int64_t backoff = 250, last_prune = iam_now_ms();
    int warned = 0;

    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        ks_bus_kv *kv = atomic_load(&r->kv);
        int64_t wait_ms = REV_PRUNE_MS;
        struct timespec until;

        pthread_mutex_unlock(&r->mu);
        if (kv == NULL) {
            if (open_bucket(r) != KS_OK) {
                if (!warned)
                    ks_warn("revocation: cannot open %s yet (retrying): %s", REV_BUCKET,
                            ks_status_last());
                warned = 1;
                wait_ms = backoff;
                backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
            } else {
                backoff = 250;
                kv = atomic_load(&r->kv);
            }
        }
        if (kv != NULL) {
            flush_pending(r, kv);
            pthread_mutex_lock(&r->mu);
            if (r->head != NULL) {
                wait_ms = backoff;
                backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
            } else {
                backoff = 250;
            }
            pthread_mutex_unlock(&r->mu);
        }
        if (iam_now_ms() - last_prune >= REV_PRUNE_MS) {
            prune(r);
            if (kv != NULL)
                check_watch(r, kv);
            last_prune = iam_now_ms();
        }
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += wait_ms / 1000;
        until.tv_nsec += (wait_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&r->mu);
        /* A new queued revocation signals the condition: retry it at once
         * only when the bucket is open (else keep the backoff). */
        if (!r->stop)
            pthread_cond_timedwait(&r->cv, &r->mu, &until);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static void rev_destroy(struct iam_revocations *r)
{
    if (r == NULL)
        return;
    while (r->head) {
        rev_pending *p = r->head;
        r->head = p->next;
        free(p->buf);
        free(p);
    }
    ks_strmap_destroy(r->jtis);
    ks_strmap_destroy(r->users);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

ks_status iam_revocations_start(iam *s)
{
    struct iam_revocations *r;
    pthread_condattr_t ca;
    ks_status st;

    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "revocations");
    r->s = s;
    r->ttl_ms = s->cfg->access_ttl_ms > s->cfg->refresh_ttl_ms ? s->cfg->access_ttl_ms
                                                                : s->cfg->refresh_ttl_ms;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_REALTIME);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    r->jtis = ks_strmap_create(free);
    r->users = ks_strmap_create(free);
    if (r->jtis == NULL || r->users == NULL) {
        rev_destroy(r);
        return KS_FAIL(KS_ERR_NOMEM, "revocations");
    }
    /* Core NATS subscriptions survive reconnects: a second path that works
     * even while the bucket's watch is down. */
    st = ks_bus_subscribe(s->bus, REV_SUBJECT, NULL, on_published, r, &r->sub);
    if (st) {
        rev_destroy(r);
        return st;
    }
    if (pthread_create(&r->thread, NULL, rev_thread, r) != 0) {
        ks_bus_unsubscribe(r->sub);
        rev_destroy(r);
        return KS_FAIL(KS_ERR_INTERNAL, "cannot start the revocation thread");
    }
    r->thread_started = 1;
    s->revoked = r;
    return KS_OK;
}

void iam_revocations_stop(iam *s)
{
    struct iam_revocations *r = s ? s->revoked : NULL;
    ks_bus_kv *kv;

    /* main.c's iam_stop calls this before the password pool and the kube
     * client go away: stop the other background parts of users/guard/
     * bootstrap here too, while what they use still exists. */
    if (s != NULL) {
        iam_bootstrap_stop(s);
        iam_guard_stop(s);
    }
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (r->thread_started)
        pthread_join(r->thread, NULL);
    ks_bus_unsubscribe(r->sub);
    r->sub = NULL;
    ks_bus_kv_watch_stop(r->watch);
    r->watch = NULL;
    kv = atomic_exchange(&r->kv, NULL);
    /* one last try, only when it can work quickly (a put waits for its ack) */
    if (kv != NULL && r->head != NULL && ks_bus_is_connected(s->bus))
        flush_pending(r, kv);
    if (r->head != NULL)
        ks_error("revocation: %zu revocations were never stored in %s", r->npending,
                 REV_BUCKET);
    ks_bus_kv_close(kv);
    /* The set stays (reachable from s) for handlers still answering while
     * the service stops; the process exits next. */
}
