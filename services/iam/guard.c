/* guard.c: login records and the brute-force guard (iam.h; docs/iam.md
 * "Brute-force guard").
 *
 * iam_guard_record queues a LoginRecord; one writer thread creates it
 * through kube-apiserver, retrying while kube-apiserver is away. A record
 * that cannot be written is logged and counted, never dropped silently.
 *
 * iam_guard_blocked counts the failed LoginRecords of the user in the
 * mirror that are newer than now - window (and than the user's
 * status.lastTransitionTime, so re-activating a user clears the count),
 * plus the recent failures that the mirror does not show yet (the record
 * is still queued, or the reconciler has not mirrored it). Those are this
 * replica's own and those the other replicas announce on
 * ks.iam.loginfailures (a kscore.v1.ObjectEvent carrying the LoginRecord,
 * published the moment the password check fails), so a burst of failures
 * blocks the account at once on every replica, without waiting for the round
 * trip through kube-apiserver and the mirror. A user whose status.state is
 * AuthLimitExceeded is blocked too (the user controller sets it). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "iam.h"
#include "kscore/v1/mirror.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "strmap.h"
#include "uuid.h"

#define LR_PATH IAM_KUBE_PREFIX "/loginrecords"
#define LR_USER_LABEL "iam.kubesphere.io/user-ref"
#define LR_QUEUE_MAX 10000
#define LR_MAX_ATTEMPTS 8
#define LR_FLUSH_AT_STOP_MS 1500  /* the whole flush at stop */
#define LR_WRITE_MS 10000         /* one write */
#define LR_WRITE_AT_STOP_MS 1000  /* one write during the flush */
#define LR_FIELD_MAX 512        /* bytes kept of sourceIP, userAgent, reason */
#define LR_LOCAL_MAX 256        /* local failures kept per user */
#define LR_NAME_MAX 254
#define LR_SUBJECT "ks.iam.loginfailures"
#define LR_EVENT_MAX (64u * 1024u)

typedef struct lr_job {
    json_t *obj;
    char name[LR_NAME_MAX];
    int attempts;
    int64_t next_ms;
    struct lr_job *next;
} lr_job;

typedef struct {
    char name[LR_NAME_MAX];
    int64_t at_ms;
} lr_failure;

typedef struct {
    lr_failure items[LR_LOCAL_MAX];
    size_t n;
} lr_failures;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    lr_job *head, *tail;
    size_t n;
    int stop;
    int started;
    pthread_t thread;
    ks_strmap *local; /* user -> lr_failures */
    ks_bus_sub *sub;  /* ks.iam.loginfailures */
    iam *s;
} G = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static ks_metric *m_records(const char *result)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "result=\"%s\"", result);
    return ks_metrics_counter("ks_iam_loginrecords_total",
                              "LoginRecords: written, retried, failed (not written), dropped",
                              labels);
}

/* Copy s into out as printable ASCII (other bytes become '?'), so any
 * header a client sends becomes a valid JSON string. */
static void clean_field(const char *s, char *out, size_t cap)
{
    size_t o = 0;

    for (; s != NULL && *s != '\0' && o + 1 < cap; s++)
        out[o++] = ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f) ? *s : '?';
    out[o] = '\0';
}

/* "<user>-<10 hex>", within the 253 characters of a DNS subdomain. */
static ks_status record_name(const char *username, char out[LR_NAME_MAX])
{
    char uuid[KS_UUID_STR_SIZE], suffix[11];
    size_t ulen = strlen(username), j = 0;
    ks_status st = ks_uuid_v4(uuid);

    if (st)
        return st;
    for (size_t i = 0; uuid[i] && j < 10; i++)
        if (uuid[i] != '-')
            suffix[j++] = uuid[i];
    suffix[j] = '\0';
    if (ulen > 253 - 11)
        ulen = 253 - 11;
    /* a label may not end in '-' or '.' before the separator */
    while (ulen > 0 && (username[ulen - 1] == '.' || username[ulen - 1] == '-'))
        ulen--;
    snprintf(out, LR_NAME_MAX, "%.*s-%s", (int)ulen, username, suffix);
    return KS_OK;
}

static void remember_failure(const char *username, const char *name, int64_t at_ms)
{
    lr_failures *f;

    pthread_mutex_lock(&G.mu);
    if (G.local == NULL)
        G.local = ks_strmap_create(free);
    f = G.local ? ks_strmap_get(G.local, username) : NULL;
    if (f == NULL && G.local != NULL && (f = calloc(1, sizeof(*f))) != NULL &&
        ks_strmap_put(G.local, username, f) != KS_OK) {
        free(f);
        f = NULL;
    }
    for (size_t i = 0; f != NULL && i < f->n; i++) {
        if (strcmp(f->items[i].name, name) == 0) { /* our own, heard back */
            pthread_mutex_unlock(&G.mu);
            return;
        }
    }
    if (f != NULL) {
        if (f->n == LR_LOCAL_MAX) {
            memmove(&f->items[0], &f->items[1], (LR_LOCAL_MAX - 1) * sizeof(f->items[0]));
            f->n--;
        }
        snprintf(f->items[f->n].name, LR_NAME_MAX, "%s", name);
        f->items[f->n].at_ms = at_ms;
        f->n++;
    }
    pthread_mutex_unlock(&G.mu);
}

/* Tell the other replicas about a failure at once (best effort: the
 * LoginRecord itself reaches them through the mirror anyway). */
static void announce_failure(iam *s, const json_t *record, const char *name)
{
    Kscore__V1__ObjectEvent ev = KSCORE__V1__OBJECT_EVENT__INIT;
    char *text = json_dumps(record, JSON_COMPACT);
    uint8_t *buf = NULL;
    size_t len = 0;

    if (text == NULL)
        return;
    ev.type = KSCORE__V1__OBJECT_EVENT__TYPE__TYPE_ADDED;
    ev.resource = IAM_RES_LOGINRECORDS;
    ev.namespace_ = "";
    ev.name = (char *)name;
    ev.object.data = (uint8_t *)text;
    ev.object.len = strlen(text);
    ev.observed_unix_ms = iam_now_ms();
    if (ks_codec_pack(&ev.base, &buf, &len) != KS_OK ||
        ks_bus_publish(s->bus, LR_SUBJECT, buf, len) != KS_OK)
        ks_debug("cannot announce a failed login on %s: %s", LR_SUBJECT, ks_status_last());
    free(buf);
    free(text);
}

static void on_failure_announced(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    Kscore__V1__ObjectEvent *ev = NULL;
    json_t *rec = NULL;
    const char *user;
    int64_t now = iam_now_ms();

    (void)bus;
    (void)arg;
    if (ks_codec_unpack(&kscore__v1__object_event__descriptor, ks_bus_msg_data(msg),
                        ks_bus_msg_len(msg), LR_EVENT_MAX, (ProtobufCMessage **)&ev) != KS_OK)
        goto out;
    rec = json_loadb((const char *)ev->object.data, ev->object.len, 0, NULL);
    user = json_string_value(json_object_get(
        json_object_get(json_object_get(rec, "metadata"), "labels"), LR_USER_LABEL));
    if (user == NULL || ev->name == NULL || ev->name[0] == '\0' ||
        strlen(ev->name) >= LR_NAME_MAX ||
        json_is_true(json_object_get(json_object_get(rec, "spec"), "success")))
        goto out;
    /* another replica's clock: never later than ours */
    remember_failure(user, ev->name,
                     ev->observed_unix_ms > 0 && ev->observed_unix_ms < now ? ev->observed_unix_ms
                                                                           : now);
out:
    json_decref(rec);
    ks_codec_free(ev ? &ev->base : NULL);
    ks_bus_msg_destroy(msg);
}

ks_status iam_guard_record(iam *s, const char *username, const char *type, int success,
                           const char *reason, const char *source_ip, const char *user_agent)
{
    char name[LR_NAME_MAX], ip[LR_FIELD_MAX], ua[LR_FIELD_MAX], why[LR_FIELD_MAX];
    lr_job *job;
    ks_status st;

    if (username == NULL || username[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "a login record needs a user");
    st = record_name(username, name);
    if (st)
        return st;
    clean_field(source_ip, ip, sizeof(ip));
    clean_field(user_agent, ua, sizeof(ua));
    clean_field(reason, why, sizeof(why));
    job = calloc(1, sizeof(*job));
    if (job == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "login record");
    snprintf(job->name, sizeof(job->name), "%s", name);
    job->obj = json_pack("{s:s, s:s, s:{s:s, s:{s:s}}, s:{s:s, s:s, s:s, s:s, s:b, s:s}}",
                         "apiVersion", IAM_GROUP "/" IAM_VERSION, "kind", "LoginRecord",
                         "metadata", "name", name, "labels", LR_USER_LABEL, username, "spec",
                         "type", type, "provider", "kscore", "sourceIP", ip, "userAgent", ua,
                         "success", success, "reason", why);
    if (job->obj == NULL) {
        free(job);
        return KS_FAIL(KS_ERR_INVALID, "cannot build the login record of %s", username);
    }
    if (!success) {
        remember_failure(username, name, iam_now_ms());
        announce_failure(s, job->obj, name);
    }
    pthread_mutex_lock(&G.mu);
    if (!G.started || G.stop || G.n >= LR_QUEUE_MAX) {
        int full = G.n >= LR_QUEUE_MAX;
        pthread_mutex_unlock(&G.mu);
        ks_error("login record of %s (%s, success=%d) dropped: %s", username, type, success,
                 full ? "the writer queue is full" : "the writer is not running");
        ks_metric_inc(m_records("dropped"));
        json_decref(job->obj);
        free(job);
        return KS_FAIL(KS_ERR_UNAVAILABLE, "the login record writer cannot take it");
    }
    if (G.tail)
        G.tail->next = job;
    else
        G.head = job;
    G.tail = job;
    G.n++;
    pthread_cond_signal(&G.cv);
    pthread_mutex_unlock(&G.mu);
    return KS_OK;
}

/* ---- the writer ---- */

static int retriable(ks_status st)
{
    return st == KS_ERR_UNAVAILABLE || st == KS_ERR_TIMEOUT || st == KS_ERR_NOMEM ||
           st == KS_ERR_IO || st == KS_ERR_PROTOCOL;
}

/* Write one record. Returns 1 when done with it (written or given up). */
static int write_one(lr_job *job, int last_chance, long timeout_ms)
{
    ks_kube_response resp;
    char *body = json_dumps(job->obj, JSON_COMPACT);
    ks_status st;
    int done = 1;

    memset(&resp, 0, sizeof(resp));
    if (body == NULL)
        st = KS_FAIL(KS_ERR_NOMEM, "login record");
    else
        st = ks_kube_request(G.s->kube, "POST", LR_PATH, body, NULL, timeout_ms, &resp);
    free(body);
    if (st == KS_OK || (st == KS_ERR_CONFLICT && resp.http_code == 409)) {
        /* 409: an earlier attempt that timed out did land */
        ks_metric_inc(m_records("written"));
        goto out;
    }
    job->attempts++;
    if (!last_chance && retriable(st) && job->attempts < LR_MAX_ATTEMPTS) {
        int64_t backoff = 500LL << (job->attempts - 1);
        job->next_ms = iam_now_ms() + (backoff > 10000 ? 10000 : backoff);
        ks_warn("login record %s not written yet (attempt %d, retried): %s", job->name,
                job->attempts, ks_status_last());
        ks_metric_inc(m_records("retried"));
        done = 0;
        goto out;
    }
    ks_error("login record %s lost after %d attempts: %s%s%s", job->name, job->attempts,
             ks_status_last(), resp.status.message[0] ? ": " : "", resp.status.message);
    ks_metric_inc(m_records("failed"));
out:
    ks_kube_response_clear(&resp);
    return done;
}

static void *writer_thread(void *arg)
{
    pthread_mutex_lock(&G.mu);
    for (;;) {
        lr_job *job = G.head, *prev = NULL;
        int64_t now = iam_now_ms(), soonest = 0;

        if (G.stop)
            break;
        /* the first job that is due */
        while (job != NULL && job->next_ms > now) {
            if (soonest == 0 || job->next_ms < soonest)
                soonest = job->next_ms;
            prev = job;
            job = job->next;
        }
        if (job == NULL) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            int64_t wait = soonest ? soonest - now : 60000;
            until.tv_sec += wait / 1000;
            until.tv_nsec += (wait % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&G.cv, &G.mu, &until);
            continue;
        }
        if (prev)
            prev->next = job->next;
        else
            G.head = job->next;
        if (G.tail == job)
            G.tail = prev;
        job->next = NULL;
        G.n--;
        pthread_mutex_unlock(&G.mu);
        if (write_one(job, 0, LR_WRITE_MS)) {
            json_decref(job->obj);
            free(job);
            pthread_mutex_lock(&G.mu);
        } else {
            pthread_mutex_lock(&G.mu);
            if (G.tail)
                G.tail->next = job;
            else
                G.head = job;
            G.tail = job;
            G.n++;
        }
    }
    pthread_mutex_unlock(&G.mu);
    return NULL;
}

ks_status iam_guard_start(iam *s)
{
    ks_status st = ks_bus_subscribe(s->bus, LR_SUBJECT, NULL, on_failure_announced, NULL, &G.sub);

    if (st)
        return st;
    pthread_mutex_lock(&G.mu);
    G.s = s;
    G.stop = 0;
    if (G.local == NULL)
        G.local = ks_strmap_create(free);
    if (G.local == NULL || pthread_create(&G.thread, NULL, writer_thread, NULL) != 0) {
        pthread_mutex_unlock(&G.mu);
        return KS_FAIL(KS_ERR_INTERNAL, "cannot start the login record writer");
    }
    G.started = 1;
    pthread_mutex_unlock(&G.mu);
    return KS_OK;
}

void iam_guard_stop(iam *s)
{
    int64_t until;
    size_t lost = 0;

    ks_bus_unsubscribe(G.sub);
    G.sub = NULL;
    pthread_mutex_lock(&G.mu);
    if (!G.started) {
        pthread_mutex_unlock(&G.mu);
        return;
    }
    G.stop = 1;
    pthread_cond_broadcast(&G.cv);
    pthread_mutex_unlock(&G.mu);
    pthread_join(G.thread, NULL);
    /* The kube client still works: write what is queued, within a bound. */
    until = iam_now_ms() + LR_FLUSH_AT_STOP_MS;
    pthread_mutex_lock(&G.mu);
    G.started = 0;
    while (G.head != NULL) {
        lr_job *job = G.head;
        G.head = job->next;
        G.n--;
        pthread_mutex_unlock(&G.mu);
        if (iam_now_ms() < until) {
            write_one(job, 1, LR_WRITE_AT_STOP_MS);
        } else {
            lost++;
            ks_metric_inc(m_records("dropped"));
        }
        json_decref(job->obj);
        free(job);
        pthread_mutex_lock(&G.mu);
    }
    G.tail = NULL;
    pthread_mutex_unlock(&G.mu);
    if (lost > 0)
        ks_error("%zu login records were not written before the stop", lost);
}

/* ---- the guard ---- */

typedef struct {
    int64_t since;
    size_t failures;
} count_ctx;

static int count_failures(const ks_mirror_item *item, void *arg)
{
    count_ctx *c = arg;
    const json_t *spec = json_object_get(item->object, "spec");
    const char *ts = json_string_value(
        json_object_get(json_object_get(item->object, "metadata"), "creationTimestamp"));
    int64_t t;

    if (json_is_true(json_object_get(spec, "success")) || ts == NULL ||
        iam_time_parse(ts, &t) != KS_OK)
        return 0;
    if (t >= c->since)
        c->failures++;
    return 0;
}

int iam_guard_blocked(iam *s, const char *username)
{
    json_t *user = NULL;
    count_ctx c = {.since = iam_now_unix() - s->cfg->login_window_ms / 1000};
    char (*names)[LR_NAME_MAX] = NULL;
    size_t nnames = 0;
    lr_failures *f;

    if (ks_mirror_cache_get(s->mirror, IAM_RES_USERS, "", username, &user, NULL) == KS_OK) {
        const char *ltt = json_string_value(
            json_object_get(json_object_get(user, "status"), "lastTransitionTime"));
        int64_t t;

        if (strcmp(iam_user_state(user), "AuthLimitExceeded") == 0) {
            json_decref(user);
            return 1;
        }
        if (ltt != NULL && iam_time_parse(ltt, &t) == KS_OK && t > c.since)
            c.since = t;
        json_decref(user);
    }
    ks_mirror_cache_foreach_by_label(s->mirror, IAM_RES_LOGINRECORDS, LR_USER_LABEL, username,
                                     count_failures, &c);
    if (c.failures >= (size_t)s->cfg->login_max_failures)
        return 1;
    /* This replica's failures that the mirror does not show yet. */
    pthread_mutex_lock(&G.mu);
    f = G.local ? ks_strmap_get(G.local, username) : NULL;
    if (f != NULL) {
        size_t keep = 0;
        int64_t window_start_ms = (iam_now_unix() - s->cfg->login_window_ms / 1000) * 1000;
        for (size_t i = 0; i < f->n; i++)
            if (f->items[i].at_ms >= window_start_ms)
                f->items[keep++] = f->items[i];
        f->n = keep;
        names = keep ? malloc(keep * sizeof(*names)) : NULL;
        for (size_t i = 0; names != NULL && i < keep; i++) {
            if (f->items[i].at_ms >= c.since * 1000)
                memcpy(names[nnames++], f->items[i].name, LR_NAME_MAX);
        }
        if (keep == 0)
            ks_strmap_remove(G.local, username);
    }
    pthread_mutex_unlock(&G.mu);
    for (size_t i = 0; i < nnames; i++) {
        json_t *rec = NULL;
        if (ks_mirror_cache_get(s->mirror, IAM_RES_LOGINRECORDS, "", names[i], &rec, NULL) ==
            KS_OK)
            json_decref(rec); /* counted above */
        else
            c.failures++;
    }
    free(names);
    return c.failures >= (size_t)s->cfg->login_max_failures;
}
