#include "mirror.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "kscore/v1/mirror.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "strmap.h"
#include "subject.h"

#define KEY_MAX 1024

struct rec_mirror {
    ks_bus *bus;
    ks_bus_kv *kv;              /* under write_mu; NULL until opened */
    char bucket[256];
    int replicas;
    atomic_int open;
    atomic_int dirty;
    pthread_mutex_t write_mu;   /* one writer at a time: events and resyncs */
    atomic_int leading;
    ks_metric *m_puts, *m_deletes, *m_errors, *m_lag, *m_leader;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

ks_status rec_mirror_create(ks_bus *bus, const char *bucket, int replicas, rec_mirror **out)
{
    static const double lag_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1};
    rec_mirror *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "mirror");
    if (snprintf(m->bucket, sizeof(m->bucket), "%s", bucket) >= (int)sizeof(m->bucket)) {
        free(m);
        return KS_FAIL(KS_ERR_INVALID, "bucket name too long");
    }
    m->replicas = replicas;
    m->bus = bus;
    pthread_mutex_init(&m->write_mu, NULL);
    m->m_puts = ks_metrics_counter("ks_mirror_puts_total", "objects written to the mirror", NULL);
    m->m_deletes = ks_metrics_counter("ks_mirror_deletes_total", "objects deleted from the mirror", NULL);
    m->m_errors = ks_metrics_counter("ks_mirror_write_errors_total", "mirror writes that failed", NULL);
    m->m_lag = ks_metrics_histogram("ks_mirror_lag_seconds",
                                    "time from a watch event to the KV acknowledgement", NULL,
                                    lag_bounds, sizeof(lag_bounds) / sizeof(lag_bounds[0]));
    m->m_leader = ks_metrics_gauge("ks_mirror_leader", "1 while this replica writes the mirror", NULL);
    *out = m;
    return KS_OK;
}

void rec_mirror_destroy(rec_mirror *m)
{
    if (m == NULL)
        return;
    ks_bus_kv_close(m->kv);
    pthread_mutex_destroy(&m->write_mu);
    free(m);
}

/* Caller holds write_mu. */
static ks_status mirror_open_locked(rec_mirror *m)
{
    ks_bus_kv_cfg cfg = {.bucket = m->bucket, .history = 1, .replicas = m->replicas};
    ks_status st;

    if (m->kv != NULL)
        return KS_OK;
    st = ks_bus_kv_open(m->bus, &cfg, 1, &m->kv);
    if (st == KS_OK) {
        atomic_store(&m->open, 1);
        ks_info("mirror: bucket %s open", m->bucket);
    }
    return st;
}

ks_status rec_mirror_open(rec_mirror *m)
{
    ks_status st;
    pthread_mutex_lock(&m->write_mu);
    st = mirror_open_locked(m);
    pthread_mutex_unlock(&m->write_mu);
    return st;
}

int rec_mirror_is_open(rec_mirror *m)
{
    return atomic_load(&m->open);
}

int rec_mirror_take_dirty(rec_mirror *m)
{
    return atomic_exchange(&m->dirty, 0);
}

void rec_mirror_set_leader(rec_mirror *m, int leading)
{
    atomic_store(&m->leading, leading ? 1 : 0);
    ks_metric_set(m->m_leader, leading ? 1 : 0);
}

int rec_mirror_is_leader(rec_mirror *m)
{
    return atomic_load(&m->leading);
}

static ks_status object_key(const ks_reflector_resource *res, const char *ns, const char *name,
                            char *key, size_t cap)
{
    return ks_subject_object_key(res->group, res->resource, ns, name, key, cap);
}

/* Write one object; the caller holds write_mu. */
static ks_status write_put(rec_mirror *m, const ks_reflector_resource *res, int type,
                           const char *ns, const char *name, const char *uid, const char *rv,
                           const char *json, size_t len)
{
    Kscore__V1__ObjectEvent ev = KSCORE__V1__OBJECT_EVENT__INIT;
    char key[KEY_MAX], resource[512];
    uint8_t *buf = NULL;
    size_t buflen = 0;
    ks_status st;

    st = object_key(res, ns, name, key, sizeof(key));
    if (st)
        return st;
    snprintf(resource, sizeof(resource), "%s/%s", res->group, res->resource);
    ev.type = type;
    ev.resource = resource;
    ev.namespace_ = (char *)ns;
    ev.name = (char *)name;
    ev.uid = (char *)uid;
    ev.resource_version = (char *)rv;
    ev.object.data = (uint8_t *)json;
    ev.object.len = len;
    ev.observed_unix_ms = now_ms();
    st = ks_codec_pack(&ev.base, &buf, &buflen);
    if (st)
        return st;
    st = ks_bus_kv_put(m->kv, key, buf, buflen, NULL);
    free(buf);
    if (st == KS_OK)
        ks_metric_inc(m->m_puts);
    return st;
}

static ks_status write_delete(rec_mirror *m, const ks_reflector_resource *res, const char *ns,
                              const char *name)
{
    char key[KEY_MAX];
    ks_status st = object_key(res, ns, name, key, sizeof(key));

    if (st)
        return st;
    st = ks_bus_kv_delete(m->kv, key);
    if (st == KS_OK)
        ks_metric_inc(m->m_deletes);
    return st;
}

void rec_mirror_on_event(void *arg, const ks_reflector_resource *res, const ks_reflect_event *ev)
{
    rec_mirror *m = arg;
    double t0 = mono_s();
    ks_status st;

    if (!atomic_load(&m->leading))
        return;
    if (!ks_bus_is_connected(m->bus)) {
        /* Do not stall the reflector on a bus that is away. */
        atomic_store(&m->dirty, 1);
        ks_metric_inc(m->m_errors);
        return;
    }
    pthread_mutex_lock(&m->write_mu);
    st = mirror_open_locked(m);
    if (st)
        ;
    else if (ev->type == KS_REFLECT_DELETED)
        st = write_delete(m, res, ev->namespace_, ev->name);
    else
        st = write_put(m, res,
                       ev->type == KS_REFLECT_ADDED ? KSCORE__V1__OBJECT_EVENT__TYPE__TYPE_ADDED
                                                    : KSCORE__V1__OBJECT_EVENT__TYPE__TYPE_MODIFIED,
                       ev->namespace_, ev->name, ev->uid, ev->resource_version, ev->object_json,
                       ev->object_len);
    pthread_mutex_unlock(&m->write_mu);
    if (st) {
        /* The reconciler's resync repairs the bucket once writes work again. */
        atomic_store(&m->dirty, 1);
        ks_metric_inc(m->m_errors);
        ks_warn("mirror: cannot write %s %s/%s: %s", res->resource, ev->namespace_, ev->name,
                ks_status_last());
        return;
    }
    ks_metric_observe(m->m_lag, mono_s() - t0);
}

/* ---- resync ---- */

typedef struct {
    ks_strmap *bucket;           /* key -> strdup(resourceVersion) */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int loaded;
    unsigned bad;
} bucket_scan;

static void scan_entry(const ks_bus_kv_entry *e, void *arg)
{
    bucket_scan *bs = arg;
    Kscore__V1__ObjectEvent *ev = NULL;

    pthread_mutex_lock(&bs->mu);
    if (e == NULL) {
        bs->loaded = 1;
        pthread_cond_broadcast(&bs->cond);
    } else if (!bs->loaded && e->op == KS_BUS_KV_PUT) {
        char *rv = NULL;
        if (KS_UNPACK(kscore__v1__object_event, e->value, e->len, &ev) == KS_OK)
            rv = strdup(ev->resource_version);
        else
            bs->bad++;
        /* An undecodable value gets rv "" so it is rewritten. */
        if (ks_strmap_put(bs->bucket, e->key, rv ? rv : strdup("")) != KS_OK)
            bs->bad++;
        if (ev != NULL)
            ks_codec_free(&ev->base);
    }
    pthread_mutex_unlock(&bs->mu);
}

typedef struct {
    rec_mirror *m;
    const ks_reflector_resource *res;
    ks_strmap *bucket;
    unsigned puts;
    ks_status st;
} resync_ctx;

static int resync_object(void *arg, const char *ns, const char *name, const char *uid,
                         const char *rv, const char *json, size_t len)
{
    resync_ctx *rc = arg;
    char key[KEY_MAX];
    const char *have;

    /* A leader that lost the Lease mid-resync stops writing at once. */
    if (!atomic_load(&rc->m->leading)) {
        rc->st = KS_FAIL(KS_ERR_CLOSED, "no longer the leader");
        return 1;
    }
    if (object_key(rc->res, ns, name, key, sizeof(key)) != KS_OK)
        return 0;
    have = ks_strmap_get(rc->bucket, key);
    if (have != NULL && strcmp(have, rv) == 0) {
        ks_strmap_remove(rc->bucket, key);
        return 0;
    }
    ks_strmap_remove(rc->bucket, key);
    rc->st = write_put(rc->m, rc->res, KSCORE__V1__OBJECT_EVENT__TYPE__TYPE_MODIFIED, ns, name,
                       uid, rv, json, len);
    if (rc->st)
        return 1;
    rc->puts++;
    return 0;
}

typedef struct {
    rec_mirror *m;
    unsigned deletes;
    ks_status st;
} delete_ctx;

static int resync_delete(const char *key, void *value, void *arg)
{
    delete_ctx *dc = arg;
    ks_status st = ks_bus_kv_delete(dc->m->kv, key);

    if (st) {
        dc->st = st;
        return 1;
    }
    ks_metric_inc(dc->m->m_deletes);
    dc->deletes++;
    return 0;
}

ks_status rec_mirror_resync(rec_mirror *m, ks_reflector *r, const ks_reflector_resource *res,
                            unsigned *puts, unsigned *deletes)
{
    char prefix[KEY_MAX], group[512];
    bucket_scan bs = {0};
    ks_bus_kv_watcher *w = NULL;
    int loaded = 0;
    resync_ctx rc = {0};
    delete_ctx dc = {0};
    struct timespec deadline;
    ks_status st;
    size_t n;

    if (!ks_bus_is_connected(m->bus))
        return KS_FAIL(KS_ERR_UNAVAILABLE, "not connected to NATS");
    st = ks_subject_escape_group(res->group, group, sizeof(group));
    if (st)
        return st;
    n = (size_t)snprintf(prefix, sizeof(prefix), "%s.", group);
    st = ks_subject_escape_token(res->resource, prefix + n, sizeof(prefix) - n - 3);
    if (st)
        return st;
    n += strlen(prefix + n);
    snprintf(prefix + n, sizeof(prefix) - n, ".>");

    bs.bucket = ks_strmap_create(free);
    if (bs.bucket == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "resync");
    pthread_mutex_init(&bs.mu, NULL);
    pthread_cond_init(&bs.cond, NULL);

    pthread_mutex_lock(&m->write_mu);
    st = mirror_open_locked(m);
    if (st)
        goto out;
    st = ks_bus_kv_watch(m->kv, prefix, scan_entry, &bs, &w);
    if (st)
        goto out;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 30;
    pthread_mutex_lock(&bs.mu);
    while (!bs.loaded && pthread_cond_timedwait(&bs.cond, &bs.mu, &deadline) == 0)
        ;
    loaded = bs.loaded;
    pthread_mutex_unlock(&bs.mu);
    /* Once loaded, scan_entry ignores further entries, so the watch may run
     * on while we work; it is stopped after write_mu is released (stopping
     * takes up to one 100 ms poll, which would hold up every writer). */
    if (!loaded) {
        st = KS_FAIL(KS_ERR_TIMEOUT, "reading the mirror's %s keys", res->resource);
        goto out;
    }
    rc.m = m;
    rc.res = res;
    rc.bucket = bs.bucket;
    ks_reflector_each(r, resync_object, &rc);
    if (rc.st) {
        st = rc.st;
        atomic_store(&m->dirty, 1);
        goto out;
    }
    /* What is left in the bucket map no longer exists in the API. */
    dc.m = m;
    ks_strmap_each(bs.bucket, resync_delete, &dc);
    st = dc.st;
    if (st)
        atomic_store(&m->dirty, 1);
    if (st == KS_OK) {
        if (puts) *puts = rc.puts;
        if (deletes) *deletes = dc.deletes;
    }
out:
    pthread_mutex_unlock(&m->write_mu);
    ks_bus_kv_watch_stop(w);
    ks_strmap_destroy(bs.bucket);
    pthread_cond_destroy(&bs.cond);
    pthread_mutex_destroy(&bs.mu);
    return st;
}
