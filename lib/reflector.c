/* reflector.c: list+watch with a local store. See reflector.h. */
#include "reflector.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "strmap.h"

#define RV_MAX 128

typedef struct {
    char *uid;
    char *rv;
    char *json;
    size_t len;
} store_item;

struct ks_reflector {
    ks_kube_client *kube;
    ks_reflector_resource res;
    char group[256], version[64], resource[128], kind[128];
    char path[512];
    ks_reflector_opts opts;
    ks_reflector_fn fn;
    ks_reflector_synced_fn synced_fn;
    void *arg;

    pthread_t thread;
    pthread_mutex_t mu;      /* store, stop */
    pthread_cond_t cond;     /* wakes sleeps on stop */
    int stop;
    ks_strmap *store;        /* "ns/name" -> store_item */
    atomic_int synced;
    atomic_ulong relists;
    atomic_ulong watches;

    /* watch state, reflector thread only */
    char rv[RV_MAX];
    int need_list;
    int stream_failed;       /* the stream ended on a bad event or ERROR */
    int expired;             /* ... and the reason was 410 */
    unsigned long stream_events; /* objects received on the current stream */
    int short_watch;         /* the stream ended within 1 s and carried nothing */
    ks_kube_splitter *splitter;

    ks_metric *m_events[4];
    ks_metric *m_relists;
    ks_metric *m_watches;
    ks_metric *m_bad_events;
    ks_metric *m_errors;
};

static void store_item_free(void *p)
{
    store_item *it = p;
    if (it == NULL)
        return;
    free(it->uid);
    free(it->rv);
    free(it->json);
    free(it);
}

ks_status ks_reflector_path(const ks_reflector_resource *res, char *out, size_t cap)
{
    int n;
    if (res->group == NULL || res->group[0] == '\0')
        n = snprintf(out, cap, "/api/%s/%s", res->version, res->resource);
    else
        n = snprintf(out, cap, "/apis/%s/%s/%s", res->group, res->version, res->resource);
    if (n < 0 || (size_t)n >= cap)
        return KS_FAIL(KS_ERR_TOO_LARGE, "resource path");
    return KS_OK;
}

static const char *json_str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* Sleep up to ms unless stopped. Returns 1 when stopped. */
static int reflector_sleep(ks_reflector *r, long ms)
{
    struct timespec ts;
    int stopped;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    while (!r->stop && pthread_cond_timedwait(&r->cond, &r->mu, &ts) == 0)
        ;
    stopped = r->stop;
    pthread_mutex_unlock(&r->mu);
    return stopped;
}

static int reflector_stopped(ks_reflector *r)
{
    int s;
    pthread_mutex_lock(&r->mu);
    s = r->stop;
    pthread_mutex_unlock(&r->mu);
    return s;
}

static uint32_t random_u32(void)
{
    uint32_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
        v = (uint32_t)time(NULL) * 2654435761u;
    return v;
}

/* Backoff: base doubles from initial to max; the wait is base plus up to half
 * of it at random (jitter), and at least Retry-After when the server gave one. */
static long backoff_next(ks_reflector *r, long *base, long retry_after_s)
{
    long wait = *base + (long)(random_u32() % (uint32_t)(*base / 2 + 1));
    if (retry_after_s > 0 && retry_after_s * 1000 > wait)
        wait = retry_after_s * 1000;
    *base = *base * 2 > r->opts.backoff_max_ms ? r->opts.backoff_max_ms : *base * 2;
    return wait;
}

static void store_key(const char *ns, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", ns, name);
}

/* Report an event through fn. */
static void emit(ks_reflector *r, ks_reflect_type type, const char *ns, const char *name,
                 const store_item *it)
{
    ks_reflect_event ev = {
        .type = type,
        .namespace_ = ns,
        .name = name,
        .uid = it->uid,
        .resource_version = it->rv,
        .object_json = it->json,
        .object_len = it->len,
    };
    ks_metric_inc(r->m_events[type]);
    r->fn(r->arg, &r->res, &ev);
}

/* Build a store item from an object; NULL when it lacks metadata. */
static store_item *item_from_object(ks_reflector *r, json_t *obj, const char **ns,
                                    const char **name)
{
    json_t *meta = json_object_get(obj, "metadata");
    store_item *it;

    *name = json_str(meta, "name");
    *ns = json_str(meta, "namespace");
    if (!json_is_object(meta) || (*name)[0] == '\0' ||
        json_string_value(json_object_get(meta, "resourceVersion")) == NULL)
        return NULL;
    /* List items of built-in kinds come without kind/apiVersion. */
    if (json_object_get(obj, "kind") == NULL) {
        char api_version[320];
        snprintf(api_version, sizeof(api_version), "%s%s%s", r->group, r->group[0] ? "/" : "",
                 r->version);
        json_object_set_new(obj, "apiVersion", json_string(api_version));
        json_object_set_new(obj, "kind", json_string(r->kind));
    }
    it = calloc(1, sizeof(*it));
    if (it == NULL)
        return NULL;
    it->uid = strdup(json_str(meta, "uid"));
    it->rv = strdup(json_str(meta, "resourceVersion"));
    it->json = json_dumps(obj, JSON_COMPACT);
    if (!it->uid || !it->rv || !it->json) {
        store_item_free(it);
        return NULL;
    }
    it->len = strlen(it->json);
    return it;
}

/* Apply an ADDED/MODIFIED object to the store and report it if its version
 * changed. Takes ownership of it. */
static void apply_upsert(ks_reflector *r, const char *ns, const char *name, store_item *it)
{
    char key[512];
    store_item *old;
    ks_reflect_type type;
    ks_status st;

    store_key(ns, name, key, sizeof(key));
    pthread_mutex_lock(&r->mu);
    old = ks_strmap_get(r->store, key);
    if (old != NULL && strcmp(old->rv, it->rv) == 0) {
        /* Same version: keep what we have, report nothing. */
        pthread_mutex_unlock(&r->mu);
        store_item_free(it);
        return;
    }
    type = old ? KS_REFLECT_MODIFIED : KS_REFLECT_ADDED;
    st = ks_strmap_put(r->store, key, it); /* frees old */
    pthread_mutex_unlock(&r->mu);
    if (st) {
        ks_error("reflector %s: out of memory storing %s", r->resource, key);
        store_item_free(it);
        r->need_list = 1;
        return;
    }
    /* it stays valid: only this thread replaces or removes store items. */
    emit(r, type, ns, name, it);
}

static void apply_delete(ks_reflector *r, const char *ns, const char *name, store_item *last)
{
    char key[512];
    store_item *old;

    store_key(ns, name, key, sizeof(key));
    pthread_mutex_lock(&r->mu);
    old = ks_strmap_take(r->store, key);
    pthread_mutex_unlock(&r->mu);
    if (old == NULL && last == NULL)
        return;
    emit(r, KS_REFLECT_DELETED, ns, name, last ? last : old);
    store_item_free(old);
    store_item_free(last);
}

/* ---- list ---- */

typedef struct {
    ks_reflector *r;
    ks_strmap *seen;   /* keys present in the new list */
} list_ctx;

static int report_vanished(const char *key, void *value, void *arg)
{
    list_ctx *lc = arg;
    store_item *it = value;
    char ns[512], *slash;
    const char *name;

    if (ks_strmap_get(lc->seen, key) != NULL)
        return 0;
    /* A copy: key belongs to the store entry that ks_strmap_take frees. */
    snprintf(ns, sizeof(ns), "%s", key);
    slash = strchr(ns, '/');
    if (slash == NULL)
        return 0;
    *slash = '\0';
    name = slash + 1;
    /* Only this thread changes the store, so it may iterate without the
     * lock; readers on other threads need it around the change itself. */
    pthread_mutex_lock(&lc->r->mu);
    ks_strmap_take(lc->r->store, key);
    pthread_mutex_unlock(&lc->r->mu);
    emit(lc->r, KS_REFLECT_DELETED, ns, name, it);
    store_item_free(it);
    return 0;
}

/* One full paged list. On success the store equals the list, every
 * difference has been reported, and r->rv is the list's version. */
static ks_status do_list(ks_reflector *r, long *retry_after_s)
{
    char path[2048], cont[1024] = "", rv[RV_MAX] = "";
    static int sentinel;
    list_ctx lc = {r, ks_strmap_create(NULL)};
    int paged = 1;
    ks_status st;

    if (lc.seen == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "list");
    for (;;) {
        ks_kube_response resp;
        json_t *body, *items, *item;
        size_t i;
        int n;

        if (paged && cont[0] != '\0') {
            char esc[3 * sizeof(cont)];
            if (ks_kube_query_escape(cont, esc, sizeof(esc)) != KS_OK) {
                st = KS_FAIL(KS_ERR_PROTOCOL, "continue token too long");
                goto out;
            }
            n = snprintf(path, sizeof(path), "%s?limit=%d&continue=%s", r->path,
                         r->opts.page_size, esc);
        } else if (paged) {
            n = snprintf(path, sizeof(path), "%s?limit=%d", r->path, r->opts.page_size);
        } else {
            n = snprintf(path, sizeof(path), "%s", r->path);
        }
        if (n < 0 || (size_t)n >= sizeof(path)) {
            st = KS_FAIL(KS_ERR_TOO_LARGE, "list path");
            goto out;
        }
        st = ks_kube_request(r->kube, "GET", path, NULL, NULL, 0, &resp);
        if (st != KS_OK) {
            int expired = ks_kube_response_expired(&resp);
            *retry_after_s = resp.retry_after_s;
            ks_kube_response_clear(&resp);
            if (expired && cont[0] != '\0') {
                /* The continue token expired: start over with a full list. */
                ks_info("reflector %s: continue token expired, listing in full", r->resource);
                paged = 0;
                cont[0] = '\0';
                ks_strmap_destroy(lc.seen);
                lc.seen = ks_strmap_create(NULL);
                if (lc.seen == NULL) {
                    st = KS_FAIL(KS_ERR_NOMEM, "list");
                    goto out;
                }
                continue;
            }
            goto out;
        }
        body = json_loadb(resp.body ? resp.body : "", resp.body_len, 0, NULL);
        if (body == NULL && resp.body_len > 0) {
            /* jansson refuses integers beyond 64 bits, which kube-apiserver
             * keeps in preserve-unknown-fields objects: read numbers as
             * reals rather than lose the whole resource. */
            body = json_loadb(resp.body, resp.body_len, JSON_DECODE_INT_AS_REAL, NULL);
            if (body != NULL)
                ks_warn("reflector %s: list holds integers beyond 64 bits; numbers read as reals",
                        r->resource);
        }
        ks_kube_response_clear(&resp);
        items = json_object_get(body, "items");
        if (!json_is_array(items)) {
            json_decref(body);
            st = KS_FAIL(KS_ERR_PROTOCOL, "list of %s has no items", r->resource);
            goto out;
        }
        json_array_foreach(items, i, item) {
            const char *ns, *name;
            char key[512];
            store_item *it = item_from_object(r, item, &ns, &name);
            if (it == NULL) {
                ks_metric_inc(r->m_bad_events);
                ks_warn("reflector %s: list item without metadata skipped", r->resource);
                continue;
            }
            store_key(ns, name, key, sizeof(key));
            if (ks_strmap_put(lc.seen, key, &sentinel) != KS_OK) {
                store_item_free(it);
                json_decref(body);
                st = KS_FAIL(KS_ERR_NOMEM, "list");
                goto out;
            }
            apply_upsert(r, ns, name, it);
        }
        {
            json_t *meta = json_object_get(body, "metadata");
            snprintf(rv, sizeof(rv), "%s", json_str(meta, "resourceVersion"));
            snprintf(cont, sizeof(cont), "%s", paged ? json_str(meta, "continue") : "");
        }
        json_decref(body);
        if (cont[0] == '\0')
            break;
        if (reflector_stopped(r)) {
            st = KS_FAIL(KS_ERR_CLOSED, "stopped");
            goto out;
        }
    }
    /* Everything the list no longer has was deleted while we were away. */
    ks_strmap_each(r->store, report_vanished, &lc);
    snprintf(r->rv, sizeof(r->rv), "%s", rv);
    atomic_fetch_add(&r->relists, 1);
    ks_metric_inc(r->m_relists);
    st = KS_OK;
out:
    ks_strmap_destroy(lc.seen);
    return st;
}

/* ---- watch ---- */

static int on_watch_event(const char *event, size_t len, void *arg)
{
    ks_reflector *r = arg;
    ks_kube_event_type type;
    json_t *obj = NULL;
    const char *ns, *name;
    store_item *it;

    r->stream_events++;
    if (ks_kube_event_parse(event, len, &type, &obj) != KS_OK) {
        ks_metric_inc(r->m_bad_events);
        ks_warn("reflector %s: malformed watch event (%zu bytes), relisting", r->resource, len);
        r->stream_failed = 1;
        return 1;
    }
    switch (type) {
    case KS_KUBE_EVENT_BOOKMARK: {
        const char *rv = json_str(json_object_get(obj, "metadata"), "resourceVersion");
        if (rv[0] != '\0')
            snprintf(r->rv, sizeof(r->rv), "%s", rv);
        break;
    }
    case KS_KUBE_EVENT_ERROR: {
        ks_kube_status kst;
        if (ks_kube_status_from_json(obj, &kst) == KS_OK && ks_kube_status_is_expired(&kst)) {
            ks_info("reflector %s: resourceVersion %s expired, relisting", r->resource, r->rv);
            r->expired = 1;
        } else {
            ks_warn("reflector %s: watch error event, relisting", r->resource);
        }
        r->stream_failed = 1;
        json_decref(obj);
        return 1;
    }
    case KS_KUBE_EVENT_ADDED:
    case KS_KUBE_EVENT_MODIFIED:
    case KS_KUBE_EVENT_DELETED:
        it = item_from_object(r, obj, &ns, &name);
        if (it == NULL) {
            ks_metric_inc(r->m_bad_events);
            ks_warn("reflector %s: watch event without metadata, relisting", r->resource);
            r->stream_failed = 1;
            json_decref(obj);
            return 1;
        }
        snprintf(r->rv, sizeof(r->rv), "%s", it->rv);
        if (type == KS_KUBE_EVENT_DELETED)
            apply_delete(r, ns, name, it);
        else
            apply_upsert(r, ns, name, it);
        break;
    }
    json_decref(obj);
    return reflector_stopped(r);
}

static int on_watch_chunk(const char *chunk, size_t len, void *arg)
{
    ks_reflector *r = arg;
    ks_status st = ks_kube_splitter_feed(r->splitter, chunk, len, on_watch_event, r);

    if (st == KS_OK)
        return 0;
    if (st != KS_ERR_CLOSED) {
        ks_metric_inc(r->m_bad_events);
        ks_warn("reflector %s: unreadable watch stream (%s), relisting", r->resource,
                ks_status_name(st));
        r->stream_failed = 1;
    }
    return 1;
}

static ks_status do_watch(ks_reflector *r, long *retry_after_s)
{
    char path[1024], esc[3 * RV_MAX];
    int span = r->opts.watch_max_s - r->opts.watch_min_s;
    int timeout_s = r->opts.watch_min_s + (span > 0 ? (int)(random_u32() % (uint32_t)(span + 1)) : 0);
    ks_kube_response resp;
    struct timespec t0, t1;
    long elapsed_ms;
    ks_status st;
    int n;

    if (ks_kube_query_escape(r->rv, esc, sizeof(esc)) != KS_OK)
        return KS_FAIL(KS_ERR_PROTOCOL, "resourceVersion too long");
    n = snprintf(path, sizeof(path),
                 "%s?watch=1&resourceVersion=%s&allowWatchBookmarks=true&timeoutSeconds=%d",
                 r->path, esc, timeout_s);
    if (n < 0 || (size_t)n >= sizeof(path))
        return KS_FAIL(KS_ERR_TOO_LARGE, "watch path");
    ks_kube_splitter_reset(r->splitter);
    r->stream_failed = 0;
    r->expired = 0;
    r->stream_events = 0;
    atomic_fetch_add(&r->watches, 1);
    ks_metric_inc(r->m_watches);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    st = ks_kube_stream(r->kube, path, (long)(timeout_s + 30) * 1000L, on_watch_chunk, r, &resp);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    elapsed_ms = (long)(t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    r->short_watch = st == KS_OK && r->stream_events == 0 && elapsed_ms < 1000;
    *retry_after_s = resp.retry_after_s;
    if (st != KS_OK && ks_kube_response_expired(&resp))
        r->expired = 1;
    ks_kube_response_clear(&resp);
    if (st == KS_OK && !r->stream_failed && ks_kube_splitter_finish(r->splitter) != KS_OK) {
        ks_metric_inc(r->m_bad_events);
        ks_warn("reflector %s: watch stream ended inside an event, relisting", r->resource);
        r->stream_failed = 1;
    }
    if (r->stream_failed || r->expired)
        r->need_list = 1;
    return st;
}

static void *reflector_thread(void *arg)
{
    ks_reflector *r = arg;
    long base = r->opts.backoff_initial_ms;

    r->need_list = 1;
    while (!reflector_stopped(r)) {
        long retry_after_s = -1;
        ks_status st;

        if (r->need_list) {
            st = do_list(r, &retry_after_s);
            if (st == KS_OK) {
                r->need_list = 0;
                base = r->opts.backoff_initial_ms;
                if (!atomic_exchange(&r->synced, 1))
                    ks_info("reflector %s: synced, %zu objects", r->resource, ks_reflector_size(r));
                if (r->synced_fn)
                    r->synced_fn(r->arg, &r->res);
                continue;
            }
        } else {
            st = do_watch(r, &retry_after_s);
            if (st == KS_OK && !r->stream_failed && !r->short_watch) {
                base = r->opts.backoff_initial_ms;
                continue; /* the server ended the stream: watch again from r->rv */
            }
            if (st == KS_OK && !r->stream_failed) {
                /* client-go's "very short watch": a stream that ended at once
                 * with nothing in it is a failure, so that a broken server or
                 * proxy is not asked again in a tight loop. */
                st = KS_FAIL(KS_ERR_PROTOCOL, "watch of %s ended within 1 s without events",
                             r->resource);
            }
            if (r->expired) {
                /* 410: relist at once, no backoff (client-go does the same). */
                continue;
            }
            if (st == KS_OK)
                st = KS_ERR_PROTOCOL;
        }
        if (st == KS_ERR_CLOSED || reflector_stopped(r))
            break;
        ks_metric_inc(r->m_errors);
        {
            long wait = backoff_next(r, &base, retry_after_s);
            ks_warn("reflector %s: %s; retrying in %ld ms", r->resource, ks_status_last(), wait);
            if (reflector_sleep(r, wait))
                break;
        }
    }
    return NULL;
}

ks_status ks_reflector_start(ks_kube_client *kube, const ks_reflector_resource *res,
                             const ks_reflector_opts *opts, ks_reflector_fn fn,
                             ks_reflector_synced_fn synced, void *arg, ks_reflector **out)
{
    ks_status st = KS_ERR_NOMEM;
    ks_reflector *r;
    char labels[256];
    static const char *const type_names[] = {"", "ADDED", "MODIFIED", "DELETED"};

    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "reflector");
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cond, NULL);
    r->kube = kube;
    snprintf(r->group, sizeof(r->group), "%s", res->group ? res->group : "");
    snprintf(r->version, sizeof(r->version), "%s", res->version);
    snprintf(r->resource, sizeof(r->resource), "%s", res->resource);
    snprintf(r->kind, sizeof(r->kind), "%s", res->kind ? res->kind : "");
    r->res.group = r->group;
    r->res.version = r->version;
    r->res.resource = r->resource;
    r->res.kind = r->kind;
    r->res.namespaced = res->namespaced;
    if (opts)
        r->opts = *opts;
    if (r->opts.page_size <= 0) r->opts.page_size = 500;
    if (r->opts.watch_min_s <= 0) r->opts.watch_min_s = 300;
    if (r->opts.watch_max_s < r->opts.watch_min_s) r->opts.watch_max_s = r->opts.watch_min_s < 600 ? 600 : r->opts.watch_min_s;
    if (r->opts.backoff_initial_ms <= 0) r->opts.backoff_initial_ms = 800;
    if (r->opts.backoff_max_ms <= 0) r->opts.backoff_max_ms = 30000;
    if (r->opts.max_event_bytes == 0) r->opts.max_event_bytes = 16u * 1024u * 1024u;
    r->fn = fn;
    r->synced_fn = synced;
    r->arg = arg;

    st = ks_reflector_path(&r->res, r->path, sizeof(r->path));
    if (st)
        goto out;
    r->store = ks_strmap_create(store_item_free);
    if (r->store == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "reflector store");
        goto out;
    }
    st = ks_kube_splitter_create(r->opts.max_event_bytes, &r->splitter);
    if (st)
        goto out;
    for (int t = 1; t <= 3; t++) {
        labels[0] = '\0';
        ks_metrics_label_append(labels, sizeof(labels), "resource", r->resource);
        ks_metrics_label_append(labels, sizeof(labels), "type", type_names[t]);
        r->m_events[t] = ks_metrics_counter("ks_reflector_events_total",
                                            "changes reported per resource and type", labels);
    }
    labels[0] = '\0';
    ks_metrics_label_append(labels, sizeof(labels), "resource", r->resource);
    r->m_relists = ks_metrics_counter("ks_reflector_relists_total", "full lists", labels);
    r->m_watches = ks_metrics_counter("ks_reflector_watch_starts_total", "watch streams started", labels);
    r->m_bad_events = ks_metrics_counter("ks_reflector_bad_events_total",
                                         "malformed events and list items", labels);
    r->m_errors = ks_metrics_counter("ks_reflector_errors_total", "list or watch failures", labels);
    if (pthread_create(&r->thread, NULL, reflector_thread, r) != 0) {
        st = KS_FAIL(KS_ERR_INTERNAL, "cannot start the reflector thread");
        goto out;
    }
    *out = r;
    r = NULL;
    st = KS_OK;
out:
    if (r != NULL) {
        ks_kube_splitter_destroy(r->splitter);
        ks_strmap_destroy(r->store);
        pthread_cond_destroy(&r->cond);
        pthread_mutex_destroy(&r->mu);
        free(r);
    }
    return st;
}

void ks_reflector_stop(ks_reflector *r)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    ks_kube_splitter_destroy(r->splitter);
    ks_strmap_destroy(r->store);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

int ks_reflector_has_synced(ks_reflector *r)
{
    return atomic_load(&r->synced);
}

typedef struct {
    int (*fn)(void *, const char *, const char *, const char *, const char *, const char *, size_t);
    void *arg;
} each_ctx;

static int each_item(const char *key, void *value, void *arg)
{
    each_ctx *ec = arg;
    store_item *it = value;
    char ns[256];
    const char *slash = strchr(key, '/');
    size_t nslen = slash ? (size_t)(slash - key) : 0;

    if (slash == NULL || nslen >= sizeof(ns))
        return 0;
    memcpy(ns, key, nslen);
    ns[nslen] = '\0';
    return ec->fn(ec->arg, ns, slash + 1, it->uid, it->rv, it->json, it->len);
}

void ks_reflector_each(ks_reflector *r,
                       int (*fn)(void *arg, const char *ns, const char *name, const char *uid,
                                 const char *rv, const char *json, size_t len),
                       void *arg)
{
    each_ctx ec = {fn, arg};
    pthread_mutex_lock(&r->mu);
    ks_strmap_each(r->store, each_item, &ec);
    pthread_mutex_unlock(&r->mu);
}

ks_status ks_reflector_get(ks_reflector *r, const char *ns, const char *name, char **json,
                           char **rv)
{
    char key[512];
    store_item *it;
    char *j = NULL, *v = NULL;
    ks_status st = KS_OK;

    store_key(ns ? ns : "", name, key, sizeof(key));
    pthread_mutex_lock(&r->mu);
    it = ks_strmap_get(r->store, key);
    if (it == NULL) {
        st = KS_FAIL(KS_ERR_NOT_FOUND, "%s %s not in the store", r->resource, key);
    } else {
        j = strdup(it->json);
        v = rv ? strdup(it->rv) : NULL;
        if (j == NULL || (rv && v == NULL))
            st = KS_FAIL(KS_ERR_NOMEM, "copy of %s", key);
    }
    pthread_mutex_unlock(&r->mu);
    if (st) {
        free(j);
        free(v);
        return st;
    }
    *json = j;
    if (rv)
        *rv = v;
    return KS_OK;
}

size_t ks_reflector_size(ks_reflector *r)
{
    size_t n;
    pthread_mutex_lock(&r->mu);
    n = ks_strmap_size(r->store);
    pthread_mutex_unlock(&r->mu);
    return n;
}

unsigned long ks_reflector_relists(ks_reflector *r)
{
    return atomic_load(&r->relists);
}

unsigned long ks_reflector_watches(ks_reflector *r)
{
    return atomic_load(&r->watches);
}
