/* ctlkit.c: helpers of the tenant controllers. See ctlkit.h. */
#include "ctlkit.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../resources.h"
#include "log.h"
#include "strmap.h"

#define CK_PATH_MAX 1024

int64_t ck_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- keys and accessors ---- */

ks_status ck_key_split(const char *key, char *ns, size_t nscap, char *name, size_t namecap)
{
    const char *slash = strchr(key, '/');
    size_t nl;

    if (slash == NULL || slash[1] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "bad key \"%.200s\"", key);
    nl = (size_t)(slash - key);
    if (nl >= nscap || strlen(slash + 1) >= namecap)
        return KS_FAIL(KS_ERR_TOO_LARGE, "key \"%.200s\" too long", key);
    memcpy(ns, key, nl);
    ns[nl] = '\0';
    memcpy(name, slash + 1, strlen(slash + 1) + 1);
    return KS_OK;
}

static const json_t *meta(const json_t *obj)
{
    return json_object_get(obj, "metadata");
}

const char *ck_name(const json_t *obj)
{
    return json_string_value(json_object_get(meta(obj), "name"));
}

const char *ck_namespace(const json_t *obj)
{
    const char *ns = json_string_value(json_object_get(meta(obj), "namespace"));
    return ns ? ns : "";
}

const char *ck_label(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(json_object_get(meta(obj), "labels"), key));
}

const char *ck_annotation(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(json_object_get(meta(obj), "annotations"), key));
}

bool ck_deleting(const json_t *obj)
{
    const json_t *d = json_object_get(meta(obj), "deletionTimestamp");
    return d != NULL && !json_is_null(d);
}

bool ck_has_finalizer(const json_t *obj, const char *finalizer)
{
    const json_t *f = json_object_get(meta(obj), "finalizers");
    for (size_t i = 0; i < json_array_size(f); i++) {
        const char *s = json_string_value(json_array_get(f, i));
        if (s != NULL && strcmp(s, finalizer) == 0)
            return true;
    }
    return false;
}

json_t *ck_object_or_empty(const json_t *v)
{
    return json_is_object(v) ? json_deep_copy(v) : json_object();
}

static bool empty_json(const json_t *v)
{
    return v == NULL || json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0);
}

bool ck_json_same(const json_t *a, const json_t *b)
{
    if (empty_json(a) || empty_json(b))
        return empty_json(a) && empty_json(b);
    return json_equal(a, b);
}

/* ---- resources ---- */

static const ks_reflector_resource *resource_find(const char *resource)
{
    const char *slash = strchr(resource, '/');
    size_t gl;

    if (slash == NULL)
        return NULL;
    gl = (size_t)(slash - resource);
    for (size_t i = 0; i < rec_nresources; i++) {
        const ks_reflector_resource *r = &rec_resources[i];
        if (strlen(r->group) == gl && strncmp(r->group, resource, gl) == 0 &&
            strcmp(r->resource, slash + 1) == 0)
            return r;
    }
    return NULL;
}

/* Set kind and apiVersion, which list items of kube-apiserver lack. */
static void set_type(json_t *obj, const ks_reflector_resource *r)
{
    char av[192];

    if (r == NULL || !json_is_object(obj))
        return;
    if (r->group[0])
        snprintf(av, sizeof(av), "%s/%s", r->group, r->version);
    else
        snprintf(av, sizeof(av), "%s", r->version);
    if (!json_is_string(json_object_get(obj, "apiVersion")))
        json_object_set_new(obj, "apiVersion", json_string(av));
    if (!json_is_string(json_object_get(obj, "kind")))
        json_object_set_new(obj, "kind", json_string(r->kind));
}

/* ---- reads ---- */

ks_status ck_get_live(rec_runtime *rt, const char *resource, const char *ns, const char *name,
                      json_t **out)
{
    char path[CK_PATH_MAX];
    json_t *obj = NULL;
    ks_status st;

    if ((st = rec_path(rt, resource, ns, name, path, sizeof(path))) != KS_OK)
        return st;
    if ((st = ks_kube_get(rec_kube(rt), path, &obj)) != KS_OK)
        return st;
    set_type(obj, resource_find(resource));
    *out = obj;
    return KS_OK;
}

ks_status ck_get(rec_runtime *rt, const char *resource, const char *ns, const char *name,
                 json_t **out)
{
    json_t *obj = NULL;
    ks_status st;

    st = rec_get(rt, resource, ns, name, &obj);
    if (st != KS_ERR_NOT_FOUND) {
        if (st == KS_OK)
            *out = obj;
        return st;
    }
    ks_status_clear();
    return ck_get_live(rt, resource, ns, name, out);
}

ks_status ck_list(rec_runtime *rt, const char *resource, const char *ns,
                  const char *label_selector, json_t **items)
{
    char path[CK_PATH_MAX], sel[512];
    const ks_reflector_resource *r = resource_find(resource);
    json_t *list = NULL, *arr;
    size_t len;
    ks_status st;

    if ((st = rec_path(rt, resource, ns, NULL, path, sizeof(path))) != KS_OK)
        return st;
    if (label_selector != NULL) {
        if ((st = ks_kube_query_escape(label_selector, sel, sizeof(sel))) != KS_OK)
            return st;
        len = strlen(path);
        if ((size_t)snprintf(path + len, sizeof(path) - len, "?labelSelector=%s", sel) >=
            sizeof(path) - len)
            return KS_FAIL(KS_ERR_TOO_LARGE, "list path of %s", resource);
    }
    if ((st = ks_kube_get(rec_kube(rt), path, &list)) != KS_OK)
        return st;
    arr = json_object_get(list, "items");
    if (!json_is_array(arr)) {
        json_decref(list);
        return KS_FAIL(KS_ERR_PROTOCOL, "list of %s has no items", resource);
    }
    json_incref(arr);
    json_decref(list);
    for (size_t i = 0; i < json_array_size(arr); i++)
        set_type(json_array_get(arr, i), r);
    *items = arr;
    return KS_OK;
}

/* ---- writes ---- */

static ks_status object_path(rec_runtime *rt, const char *resource, const json_t *obj,
                             bool with_name, char *path, size_t cap)
{
    const char *name = ck_name(obj), *ns = ck_namespace(obj);

    if (name == NULL || name[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "%s object without a name", resource);
    return rec_path(rt, resource, ns, with_name ? name : NULL, path, cap);
}

ks_status ck_create(rec_runtime *rt, const char *ctl, const char *resource, const json_t *obj,
                    json_t **out)
{
    char path[CK_PATH_MAX];
    json_t *o = json_deep_copy(obj);
    ks_status st;

    if (o == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "copy of a new %s", resource);
    set_type(o, resource_find(resource));
    st = object_path(rt, resource, o, false, path, sizeof(path));
    if (st == KS_OK) {
        rec_write_count(rt, ctl);
        st = ks_kube_create(rec_kube(rt), path, o, out);
        if (st == KS_OK)
            ks_info("%s: created %s %s%s%s", ctl, resource, ck_namespace(o),
                    ck_namespace(o)[0] ? "/" : "", ck_name(o));
        else if (st == KS_ERR_CONFLICT)
            ks_info("%s: %s %s%s%s exists already (409): retrying", ctl, resource,
                    ck_namespace(o), ck_namespace(o)[0] ? "/" : "", ck_name(o));
    }
    json_decref(o);
    return st;
}

ks_status ck_update(rec_runtime *rt, const char *ctl, const char *resource, const json_t *obj,
                    json_t **out)
{
    char path[CK_PATH_MAX];
    ks_status st;

    if (!json_is_string(json_object_get(meta(obj), "resourceVersion")))
        return KS_FAIL(KS_ERR_INVALID, "update of %s without a resourceVersion", resource);
    if ((st = object_path(rt, resource, obj, true, path, sizeof(path))) != KS_OK)
        return st;
    rec_write_count(rt, ctl);
    st = ks_kube_update(rec_kube(rt), path, obj, out);
    if (st == KS_OK)
        ks_info("%s: updated %s %s%s%s", ctl, resource, ck_namespace(obj),
                ck_namespace(obj)[0] ? "/" : "", ck_name(obj));
    else if (st == KS_ERR_CONFLICT)
        ks_info("%s: %s %s%s%s changed meanwhile (409): retrying", ctl, resource,
                ck_namespace(obj), ck_namespace(obj)[0] ? "/" : "", ck_name(obj));
    return st;
}

ks_status ck_delete(rec_runtime *rt, const char *ctl, const char *resource, const json_t *obj)
{
    char path[CK_PATH_MAX];
    const json_t *md = meta(obj);
    json_t *opts;
    char *body;
    ks_kube_response resp;
    ks_status st;

    if ((st = object_path(rt, resource, obj, true, path, sizeof(path))) != KS_OK)
        return st;
    opts = json_pack("{s:s, s:s, s:{s:O?, s:O?}}", "apiVersion", "v1", "kind", "DeleteOptions",
                     "preconditions", "uid", json_object_get(md, "uid"), "resourceVersion",
                     json_object_get(md, "resourceVersion"));
    body = opts ? json_dumps(opts, JSON_COMPACT) : NULL;
    json_decref(opts);
    if (body == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "delete options");
    rec_write_count(rt, ctl);
    st = ks_kube_request(rec_kube(rt), "DELETE", path, body, NULL, 0, &resp);
    ks_kube_response_clear(&resp);
    free(body);
    if (st == KS_ERR_NOT_FOUND) {
        ks_status_clear();
        st = KS_OK;
    } else if (st == KS_OK) {
        ks_info("%s: deleted %s %s%s%s", ctl, resource, ck_namespace(obj),
                ck_namespace(obj)[0] ? "/" : "", ck_name(obj));
    }
    return st;
}

ks_status ck_set_finalizer(rec_runtime *rt, const char *ctl, const char *resource,
                           const json_t *obj, const char *finalizer, bool present, json_t **out)
{
    json_t *o, *md, *fins, *nf;
    ks_status st;

    if (ck_has_finalizer(obj, finalizer) == present) {
        if (out != NULL)
            *out = json_incref((json_t *)obj);
        return KS_OK;
    }
    o = json_deep_copy(obj);
    nf = json_array();
    if (o == NULL || nf == NULL || (md = json_object_get(o, "metadata")) == NULL) {
        json_decref(o);
        json_decref(nf);
        return KS_FAIL(KS_ERR_NOMEM, "finalizer of a %s", resource);
    }
    fins = json_object_get(md, "finalizers");
    for (size_t i = 0; i < json_array_size(fins); i++) {
        const char *s = json_string_value(json_array_get(fins, i));
        if (s == NULL || strcmp(s, finalizer) != 0)
            json_array_append(nf, json_array_get(fins, i));
    }
    if (present)
        json_array_append_new(nf, json_string(finalizer));
    json_object_set_new(md, "finalizers", nf);
    st = ck_update(rt, ctl, resource, o, out);
    json_decref(o);
    return st;
}

/* Bring the map `key` of cur's metadata in line with desired's; 1 if changed. */
static int merge_map(json_t *cur_md, const json_t *desired_md, const char *key, ck_match how)
{
    const json_t *want = json_object_get(desired_md, key), *v;
    json_t *have = json_object_get(cur_md, key), *m;
    const char *k;
    int changed = 0;

    if (how == CK_EXACT) {
        if (ck_json_same(have, want))
            return 0;
        if (json_is_object(want) && json_object_size(want) > 0)
            json_object_set_new(cur_md, key, json_deep_copy(want));
        else
            json_object_del(cur_md, key);
        return 1;
    }
    if (!json_is_object(want) || json_object_size(want) == 0)
        return 0;
    if (!json_is_object(have)) {
        json_object_set_new(cur_md, key, json_deep_copy(want));
        return 1;
    }
    m = have;
    json_object_foreach((json_t *)want, k, v) {
        if (!json_equal(json_object_get(m, k), v)) {
            json_object_set(m, k, (json_t *)v);
            changed = 1;
        }
    }
    return changed;
}

ks_status ck_ensure(rec_runtime *rt, const char *ctl, const char *resource, const json_t *desired,
                    const char *const *fields, ck_match labels, ck_match annotations, bool *wrote)
{
    json_t *cur = NULL, *upd = NULL, *md;
    const char *name = ck_name(desired);
    int changed = 0;
    ks_status st;

    if (wrote != NULL)
        *wrote = false;
    if (name == NULL)
        return KS_FAIL(KS_ERR_INVALID, "%s object without a name", resource);
    st = ck_get(rt, resource, ck_namespace(desired), name, &cur);
    if (st == KS_ERR_NOT_FOUND) {
        ks_status_clear();
        st = ck_create(rt, ctl, resource, desired, NULL);
        if (st == KS_OK && wrote != NULL)
            *wrote = true;
        return st;
    }
    if (st != KS_OK)
        return st;
    if (ck_deleting(cur))
        goto out;
    upd = json_deep_copy(cur);
    md = upd ? json_object_get(upd, "metadata") : NULL;
    if (md == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "copy of %s %s", resource, name);
        goto out;
    }
    changed |= merge_map(md, json_object_get(desired, "metadata"), "labels", labels);
    changed |= merge_map(md, json_object_get(desired, "metadata"), "annotations", annotations);
    for (const char *const *f = fields; f && *f; f++) {
        const json_t *want = json_object_get(desired, *f);
        if (ck_json_same(json_object_get(upd, *f), want))
            continue;
        if (want != NULL && !json_is_null(want))
            json_object_set_new(upd, *f, json_deep_copy(want));
        else
            json_object_del(upd, *f);
        changed = 1;
    }
    if (changed) {
        st = ck_update(rt, ctl, resource, upd, NULL);
        if (st == KS_OK && wrote != NULL)
            *wrote = true;
    }
out:
    json_decref(cur);
    json_decref(upd);
    return st;
}

ks_workqueue_result ck_result(ks_status st)
{
    if (st == KS_OK || st == KS_ERR_INVALID)
        return ks_workqueue_ok();
    return ks_workqueue_retry();
}

/* ---- warnings and waits ---- */

typedef struct {
    int64_t last_ms;      /* when the warning was last reported; 0: none */
    uint64_t hash;        /* of reason and message */
    char *what;           /* what the key waits for, or NULL */
} memo;

static pthread_mutex_t memo_mu = PTHREAD_MUTEX_INITIALIZER;
static ks_strmap *memos;

static void memo_free(void *p)
{
    memo *m = p;
    if (m != NULL)
        free(m->what);
    free(m);
}

static uint64_t hash_str(uint64_t h, const char *s)
{
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static void memo_key(char *out, size_t cap, const char *ctl, const char *key)
{
    snprintf(out, cap, "%s\x1f%s", ctl, key);
}

/* The memo of ctl/key, created if absent. memo_mu held. NULL when the map is
 * full or memory is short: the caller then reports without deduplication. */
static memo *memo_take(const char *mk)
{
    memo *m;

    if (memos == NULL && (memos = ks_strmap_create(memo_free)) == NULL)
        return NULL;
    if ((m = ks_strmap_get(memos, mk)) != NULL)
        return m;
    if (ks_strmap_size(memos) >= CK_MEMO_MAX || (m = calloc(1, sizeof(*m))) == NULL)
        return NULL;
    if (ks_strmap_put(memos, mk, m) != KS_OK) {
        free(m);
        return NULL;
    }
    return m;
}

void ck_warn(rec_runtime *rt, const char *ctl, const char *key, const json_t *obj,
             const char *reason, const char *fmt, ...)
{
    char msg[1024], mk[1200];
    uint64_t h;
    int64_t now = ck_now_ms();
    bool report = true;
    memo *m;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    h = hash_str(hash_str(1469598103934665603ULL, reason), msg);
    memo_key(mk, sizeof(mk), ctl, key);
    pthread_mutex_lock(&memo_mu);
    m = memo_take(mk);
    if (m != NULL) {
        if (m->last_ms != 0 && m->hash == h && now - m->last_ms < CK_WARN_REPEAT_MS)
            report = false;
        else {
            m->last_ms = now;
            m->hash = h;
        }
    }
    pthread_mutex_unlock(&memo_mu);
    if (!report)
        return;
    ks_warn("%s %s: %s: %s", ctl, key, reason, msg);
    if (obj != NULL)
        rec_event(rt, obj, "Warning", reason, "%s", msg);
}

void ck_ok(const char *ctl, const char *key)
{
    char mk[1200];

    memo_key(mk, sizeof(mk), ctl, key);
    pthread_mutex_lock(&memo_mu);
    if (memos != NULL)
        ks_strmap_remove(memos, mk);
    pthread_mutex_unlock(&memo_mu);
}

void ck_wait(const char *ctl, const char *key, const char *what)
{
    char mk[1200];
    memo *m;

    memo_key(mk, sizeof(mk), ctl, key);
    pthread_mutex_lock(&memo_mu);
    m = memo_take(mk);
    if (m != NULL && (m->what == NULL || strcmp(m->what, what) != 0)) {
        free(m->what);
        m->what = strdup(what);
    }
    pthread_mutex_unlock(&memo_mu);
}

typedef struct {
    const char *ctl, *what;
    size_t ctl_len;
    char **keys;
    size_t n, cap;
} wake_scan;

static int wake_collect(const char *mk, void *value, void *arg)
{
    wake_scan *w = arg;
    memo *m = value;
    char **nk;

    if (m->what == NULL || strcmp(m->what, w->what) != 0 ||
        strncmp(mk, w->ctl, w->ctl_len) != 0 || mk[w->ctl_len] != '\x1f')
        return 0;
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 8;
        if ((nk = realloc(w->keys, cap * sizeof(*nk))) == NULL)
            return 1;
        w->keys = nk;
        w->cap = cap;
    }
    if ((w->keys[w->n] = strdup(mk + w->ctl_len + 1)) != NULL)
        w->n++;
    return 0;
}

void ck_wake(rec_runtime *rt, const char *ctl, const char *what)
{
    wake_scan w = {.ctl = ctl, .what = what, .ctl_len = strlen(ctl)};

    pthread_mutex_lock(&memo_mu);
    if (memos != NULL)
        ks_strmap_each(memos, wake_collect, &w);
    pthread_mutex_unlock(&memo_mu);
    /* Queue outside the lock: rec_enqueue takes the runtime's. */
    for (size_t i = 0; i < w.n; i++) {
        rec_enqueue(rt, ctl, w.keys[i]);
        free(w.keys[i]);
    }
    free(w.keys);
}

/* ---- cached lists ---- */

typedef struct {
    ck_cache *c;
    json_t *items;
} cache_build;

static int cache_collect(const json_t *obj, void *arg)
{
    cache_build *b = arg;
    if (b->c->keep == NULL || b->c->keep(obj))
        json_array_append_new(b->items, json_deep_copy(obj));
    return 0;
}

static int by_ns_name(const void *a, const void *b)
{
    const json_t *x = *(const json_t *const *)a, *y = *(const json_t *const *)b;
    const char *xn = ck_name(x), *yn = ck_name(y);
    int c = strcmp(ck_namespace(x), ck_namespace(y));
    if (c != 0)
        return c;
    return strcmp(xn ? xn : "", yn ? yn : "");
}

/* A sorted copy of an array of objects. */
static json_t *sorted(json_t *items)
{
    size_t n = json_array_size(items);
    json_t **v = n ? malloc(n * sizeof(*v)) : NULL;
    json_t *out = json_array();

    if (out == NULL || (n && v == NULL)) {
        free(v);
        json_decref(out);
        return json_incref(items);
    }
    for (size_t i = 0; i < n; i++)
        v[i] = json_array_get(items, i);
    if (n > 1)
        qsort(v, n, sizeof(*v), by_ns_name);
    for (size_t i = 0; i < n; i++)
        json_array_append(out, v[i]);
    free(v);
    return out;
}

json_t *ck_cache_get(ck_cache *c, rec_runtime *rt)
{
    cache_build b = {.c = c};
    uint64_t gen;
    json_t *out;

    pthread_mutex_lock(&c->mu);
    if (c->items != NULL && c->built_gen == c->gen && ck_now_ms() - c->built_ms < CK_CACHE_TTL_MS) {
        out = json_incref(c->items);
        pthread_mutex_unlock(&c->mu);
        return out;
    }
    /* Take the generation before reading the store: a bump during the scan
     * makes the next caller rebuild. */
    gen = c->gen;
    pthread_mutex_unlock(&c->mu);
    b.items = json_array();
    if (b.items == NULL)
        return json_array();
    rec_each(rt, c->resource, cache_collect, &b);
    out = sorted(b.items);
    json_decref(b.items);
    pthread_mutex_lock(&c->mu);
    json_decref(c->items);
    c->items = json_incref(out);
    c->built_gen = gen;
    c->built_ms = ck_now_ms();
    pthread_mutex_unlock(&c->mu);
    return out;
}

void ck_cache_bump(ck_cache *c)
{
    pthread_mutex_lock(&c->mu);
    c->gen++;
    pthread_mutex_unlock(&c->mu);
}

void ck_problem_add(ck_problem *p, const char *reason, int retry, const char *fmt, ...)
{
    va_list ap;
    size_t n = strlen(p->msg);

    if (p->reason == NULL)
        p->reason = reason;
    p->retry |= retry;
    if (n > 0 && n < sizeof(p->msg) - 2) {
        memcpy(p->msg + n, "; ", 3);
        n += 2;
    }
    va_start(ap, fmt);
    if (n < sizeof(p->msg))
        vsnprintf(p->msg + n, sizeof(p->msg) - n, fmt, ap);
    va_end(ap);
}
