/* controller.c: the controllers' runtime. See controller.h. */
#include "controller.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "uuid.h"

#define REC_MAX_CONTROLLERS 64
#define REC_MAX_RESOURCES 32

typedef struct {
    const rec_controller *c;
    ks_workqueue *q;          /* NULL while not leading */
    rec_runtime *rt;
    ks_metric *m_reconciles, *m_errors, *m_writes;
} ctl_slot;

struct rec_runtime {
    ks_kube_client *kube;
    ks_bus *bus;
    rec_settings settings;
    ks_reflector_resource resources[REC_MAX_RESOURCES];
    char names[REC_MAX_RESOURCES][320];  /* "<group>/<resource>" */
    ks_reflector *reflectors[REC_MAX_RESOURCES];
    size_t nres;
    ctl_slot ctls[REC_MAX_CONTROLLERS];
    size_t nctl;
    pthread_rwlock_t lock;    /* leading and the queues */
    int leading;
};

static int res_index(rec_runtime *rt, const char *resource)
{
    for (size_t i = 0; i < rt->nres; i++)
        if (strcmp(rt->names[i], resource) == 0)
            return (int)i;
    return -1;
}

static ctl_slot *ctl_find(rec_runtime *rt, const char *name)
{
    for (size_t i = 0; i < rt->nctl; i++)
        if (strcmp(rt->ctls[i].c->name, name) == 0)
            return &rt->ctls[i];
    return NULL;
}

ks_status rec_get(rec_runtime *rt, const char *resource, const char *ns, const char *name,
                  json_t **obj)
{
    int i = res_index(rt, resource);
    char *json = NULL;
    json_t *o;
    ks_status st;

    if (i < 0)
        return KS_FAIL(KS_ERR_INVALID, "%s is not watched", resource);
    st = ks_reflector_get(rt->reflectors[i], ns ? ns : "", name, &json, NULL);
    if (st)
        return st;
    o = json_loads(json, 0, NULL);
    free(json);
    if (o == NULL)
        return KS_FAIL(KS_ERR_PROTOCOL, "stored %s %s/%s is not JSON", resource, ns, name);
    *obj = o;
    return KS_OK;
}

typedef struct {
    char **jsons;
    size_t n, cap;
} json_list;

static int collect(void *arg, const char *ns, const char *name, const char *uid, const char *rv,
                   const char *json, size_t len)
{
    json_list *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        char **nj = realloc(l->jsons, cap * sizeof(*nj));
        if (nj == NULL)
            return 1;
        l->jsons = nj;
        l->cap = cap;
    }
    l->jsons[l->n] = strdup(json);
    if (l->jsons[l->n] == NULL)
        return 1;
    l->n++;
    return 0;
}

void rec_each(rec_runtime *rt, const char *resource, int (*fn)(const json_t *obj, void *arg),
              void *arg)
{
    int i = res_index(rt, resource);
    json_list l = {0};
    int stop = 0;

    if (i < 0)
        return;
    /* Copy out first so fn runs without the store's lock. */
    ks_reflector_each(rt->reflectors[i], collect, &l);
    for (size_t k = 0; k < l.n; k++) {
        if (!stop) {
            json_t *o = json_loads(l.jsons[k], 0, NULL);
            if (o != NULL)
                stop = fn(o, arg);
            json_decref(o);
        }
        free(l.jsons[k]);
    }
    free(l.jsons);
}

int rec_synced(rec_runtime *rt, const char *resource)
{
    int i = res_index(rt, resource);
    return i >= 0 && ks_reflector_has_synced(rt->reflectors[i]);
}

ks_kube_client *rec_kube(rec_runtime *rt)
{
    return rt->kube;
}

ks_bus *rec_bus(rec_runtime *rt)
{
    return rt->bus;
}

const rec_settings *rec_config(rec_runtime *rt)
{
    return &rt->settings;
}

void rec_enqueue_after(rec_runtime *rt, const char *controller, const char *key, int64_t ms)
{
    ctl_slot *s = ctl_find(rt, controller);

    if (s == NULL)
        return;
    pthread_rwlock_rdlock(&rt->lock);
    if (s->q != NULL) {
        ks_status st = ms > 0 ? ks_workqueue_add_after(s->q, key, ms) : ks_workqueue_add(s->q, key);
        if (st && st != KS_ERR_CLOSED)
            ks_warn("controller %s: cannot queue %s: %s", controller, key, ks_status_last());
    }
    pthread_rwlock_unlock(&rt->lock);
}

void rec_enqueue(rec_runtime *rt, const char *controller, const char *key)
{
    rec_enqueue_after(rt, controller, key, 0);
}

void rec_write_count(rec_runtime *rt, const char *controller)
{
    ctl_slot *s = ctl_find(rt, controller);
    if (s != NULL)
        ks_metric_inc(s->m_writes);
}

ks_status rec_path(rec_runtime *rt, const char *resource, const char *ns, const char *name,
                   char *out, size_t cap)
{
    int i = res_index(rt, resource);
    const ks_reflector_resource *r;
    int n;

    if (i < 0)
        return KS_FAIL(KS_ERR_INVALID, "%s is not watched", resource);
    r = &rt->resources[i];
    if (r->group[0])
        n = snprintf(out, cap, "/apis/%s/%s", r->group, r->version);
    else
        n = snprintf(out, cap, "/api/%s", r->version);
    if (n > 0 && (size_t)n < cap && ns != NULL && ns[0] != '\0')
        n += snprintf(out + n, cap - (size_t)n, "/namespaces/%s", ns);
    if (n > 0 && (size_t)n < cap)
        n += snprintf(out + n, cap - (size_t)n, "/%s", r->resource);
    if (n > 0 && (size_t)n < cap && name != NULL)
        n += snprintf(out + n, cap - (size_t)n, "/%s", name);
    if (n < 0 || (size_t)n >= cap)
        return KS_FAIL(KS_ERR_TOO_LARGE, "path of %s", resource);
    return KS_OK;
}

void rec_event(rec_runtime *rt, const json_t *obj, const char *type, const char *reason,
               const char *fmt, ...)
{
    const json_t *md = json_object_get(obj, "metadata");
    const char *ns = json_string_value(json_object_get(md, "namespace"));
    const char *name = json_string_value(json_object_get(md, "name"));
    char msg[1024], ev_name[320], path[512], uuid[40], ts[40];
    json_t *ev;
    ks_kube_response resp;
    struct tm tm;
    time_t now = time(NULL);
    char *body;
    va_list ap;
    ks_status st;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (name == NULL)
        return;
    /* Events of cluster-scoped objects live in "default", as Kubernetes does. */
    if (ns == NULL || ns[0] == '\0')
        ns = "default";
    if (ks_uuid_v4(uuid) != KS_OK)
        snprintf(uuid, sizeof(uuid), "%ld", (long)now);
    snprintf(ev_name, sizeof(ev_name), "%.200s.%.16s", name, uuid);
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    ev = json_pack("{s:s, s:s, s:{s:s, s:s}, s:{s:O?, s:O?, s:O?, s:O?, s:O?}, s:s, s:s, s:s, "
                   "s:{s:s}, s:s, s:s, s:i}",
                   "apiVersion", "v1", "kind", "Event", "metadata", "name", ev_name, "namespace",
                   ns, "involvedObject", "apiVersion", json_object_get(obj, "apiVersion"), "kind",
                   json_object_get(obj, "kind"), "name", json_object_get(md, "name"), "namespace",
                   json_object_get(md, "namespace"), "uid", json_object_get(md, "uid"), "type",
                   type, "reason", reason, "message", msg, "source", "component",
                   "kscore-reconciler", "firstTimestamp", ts, "lastTimestamp", ts, "count", 1);
    body = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    json_decref(ev);
    if (body == NULL)
        return;
    snprintf(path, sizeof(path), "/api/v1/namespaces/%s/events", ns);
    st = ks_kube_request(rt->kube, "POST", path, body, NULL, 0, &resp);
    ks_kube_response_clear(&resp);
    free(body);
    if (st) {
        ks_metric_inc(ks_metrics_counter("ks_controller_event_errors_total",
                                         "Kubernetes Events that could not be recorded", NULL));
        ks_warn("cannot record event %s on %s: %s", reason, name, ks_status_last());
    }
}

/* ---- running ---- */

static ks_workqueue_result run_one(const char *key, void *arg)
{
    ctl_slot *s = arg;
    ks_workqueue_result res;

    ks_metric_inc(s->m_reconciles);
    res = s->c->reconcile(s->rt, key);
    if (res.action == KS_WORKQUEUE_RETRY)
        ks_metric_inc(s->m_errors);
    return res;
}

static int enqueue_object(void *arg, const char *ns, const char *name, const char *uid,
                          const char *rv, const char *json, size_t len)
{
    ctl_slot *s = arg;
    char key[512];

    snprintf(key, sizeof(key), "%s/%s", ns, name);
    if (ks_workqueue_add(s->q, key) != KS_OK)
        ks_warn("controller %s: cannot queue %s: %s", s->c->name, key, ks_status_last());
    return 0;
}

void rec_runtime_start_leading(rec_runtime *rt)
{
    if (rt == NULL)
        return;
    pthread_rwlock_wrlock(&rt->lock);
    if (rt->leading) {
        pthread_rwlock_unlock(&rt->lock);
        return;
    }
    for (size_t i = 0; i < rt->nctl; i++) {
        ctl_slot *s = &rt->ctls[i];
        ks_workqueue_opts o = {.name = s->c->name};
        int workers = s->c->workers > 0 ? s->c->workers : 2;

        if (ks_workqueue_create(&o, &s->q) != KS_OK) {
            ks_error("controller %s: cannot create its queue: %s", s->c->name, ks_status_last());
            continue;
        }
        if (ks_workqueue_run(s->q, (unsigned)workers, run_one, s) != KS_OK) {
            ks_error("controller %s: cannot start its workers: %s", s->c->name, ks_status_last());
            ks_workqueue_destroy(s->q);
            s->q = NULL;
        }
    }
    rt->leading = 1;
    pthread_rwlock_unlock(&rt->lock);
    /* Level-triggered: every primary object once. */
    pthread_rwlock_rdlock(&rt->lock);
    for (size_t i = 0; i < rt->nctl; i++) {
        ctl_slot *s = &rt->ctls[i];
        int r = res_index(rt, s->c->primary);
        if (s->q != NULL && r >= 0)
            ks_reflector_each(rt->reflectors[r], enqueue_object, s);
    }
    pthread_rwlock_unlock(&rt->lock);
    ks_info("controllers started (%zu)", rt->nctl);
}

void rec_runtime_stop_leading(rec_runtime *rt)
{
    ks_workqueue *qs[REC_MAX_CONTROLLERS] = {0};

    if (rt == NULL)
        return;
    pthread_rwlock_wrlock(&rt->lock);
    if (!rt->leading) {
        pthread_rwlock_unlock(&rt->lock);
        return;
    }
    rt->leading = 0;
    for (size_t i = 0; i < rt->nctl; i++) {
        qs[i] = rt->ctls[i].q;
        rt->ctls[i].q = NULL;
    }
    pthread_rwlock_unlock(&rt->lock);
    /* Outside the lock: a running reconcile may still call rec_enqueue. */
    for (size_t i = 0; i < rt->nctl; i++) {
        ks_workqueue_stop(qs[i]);
        ks_workqueue_destroy(qs[i]);
    }
    ks_info("controllers stopped");
}

void rec_runtime_on_event(rec_runtime *rt, const ks_reflector_resource *res,
                          const ks_reflect_event *ev)
{
    char resource[320], key[512];

    snprintf(resource, sizeof(resource), "%s/%s", res->group, res->resource);
    pthread_rwlock_rdlock(&rt->lock);
    if (!rt->leading) {
        pthread_rwlock_unlock(&rt->lock);
        return;
    }
    pthread_rwlock_unlock(&rt->lock);
    for (size_t i = 0; i < rt->nctl; i++) {
        const rec_controller *c = rt->ctls[i].c;
        if (strcmp(c->primary, resource) == 0) {
            snprintf(key, sizeof(key), "%s/%s", ev->namespace_, ev->name);
            rec_enqueue(rt, c->name, key);
        }
        for (const char *const *w = c->also_watch; c->map && w && *w; w++) {
            if (strcmp(*w, resource) == 0)
                c->map(rt, resource, ev);
        }
    }
}

ks_status rec_runtime_create(ks_kube_client *kube, ks_bus *bus, const rec_settings *settings,
                             const ks_reflector_resource *resources,
                             ks_reflector *const *reflectors, size_t n, rec_runtime **out)
{
    rec_runtime *rt;

    if (n > REC_MAX_RESOURCES)
        return KS_FAIL(KS_ERR_TOO_LARGE, "%zu resources", n);
    rt = calloc(1, sizeof(*rt));
    if (rt == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "controller runtime");
    rt->kube = kube;
    rt->bus = bus;
    rt->settings = *settings;
    pthread_rwlock_init(&rt->lock, NULL);
    for (size_t i = 0; i < n; i++) {
        rt->resources[i] = resources[i];
        rt->reflectors[i] = reflectors[i];
        snprintf(rt->names[i], sizeof(rt->names[i]), "%s/%s", resources[i].group,
                 resources[i].resource);
    }
    rt->nres = n;
    for (const rec_controller *const *c = rec_controllers; *c; c++) {
        if (rt->nctl == REC_MAX_CONTROLLERS) {
            pthread_rwlock_destroy(&rt->lock);
            free(rt);
            return KS_FAIL(KS_ERR_TOO_LARGE, "more than %d controllers", REC_MAX_CONTROLLERS);
        }
        {
        ctl_slot *s = &rt->ctls[rt->nctl++];
        char labels[128] = "";
        s->c = *c;
        s->rt = rt;
        ks_metrics_label_append(labels, sizeof(labels), "controller", (*c)->name);
        s->m_reconciles = ks_metrics_counter("ks_controller_reconciles_total", "reconciles run", labels);
        s->m_errors = ks_metrics_counter("ks_controller_errors_total", "reconciles that failed and retry", labels);
        s->m_writes = ks_metrics_counter("ks_controller_writes_total", "writes to kube-apiserver", labels);
        }
    }
    *out = rt;
    return KS_OK;
}

void rec_runtime_destroy(rec_runtime *rt)
{
    if (rt == NULL)
        return;
    rec_runtime_stop_leading(rt);
    pthread_rwlock_destroy(&rt->lock);
    free(rt);
}
