/* iamctl.c: what the IAM controllers share. See iamctl.h. */
#include "iamctl.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "strmap.h"

/* ---- time ---- */

int64_t iamx_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* n decimal digits at *p into *v; advances *p. 0 on success. */
static int digits(const char **p, int n, int *v)
{
    int x = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        x = x * 10 + (c - '0');
    }
    *p += n;
    *v = x;
    return 0;
}

ks_status iamx_time_parse(const char *s, int64_t *out)
{
    const char *p = s;
    struct tm tm = {0};
    int y, mo, d, h, mi, sec, off = 0;

    if (s == NULL || digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' ||
        digits(&p, 2, &d) || (*p != 'T' && *p != 't' && *p != ' '))
        return KS_FAIL(KS_ERR_INVALID, "not an RFC 3339 time");
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi) || *p++ != ':' ||
        digits(&p, 2, &sec))
        return KS_FAIL(KS_ERR_INVALID, "not an RFC 3339 time");
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return KS_FAIL(KS_ERR_INVALID, "not an RFC 3339 time");
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om;
        p++;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
            return KS_FAIL(KS_ERR_INVALID, "not an RFC 3339 time");
        off = sign * (oh * 3600 + om * 60);
    } else {
        return KS_FAIL(KS_ERR_INVALID, "not an RFC 3339 time");
    }
    if (*p != '\0' || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return KS_FAIL(KS_ERR_INVALID, "not an RFC 3339 time");
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    *out = (int64_t)timegm(&tm) - off;
    return KS_OK;
}

void iamx_time_format(int64_t unix_s, char *out, size_t cap)
{
    time_t t = (time_t)unix_s;
    struct tm tm;

    gmtime_r(&t, &tm);
    if (strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0 && cap > 0)
        out[0] = '\0';
}

/* ---- objects ---- */

const char *iamx_meta(const json_t *obj, const char *field)
{
    const char *s = json_string_value(json_object_get(json_object_get(obj, "metadata"), field));
    return s ? s : "";
}

const char *iamx_label(const json_t *obj, const char *key)
{
    return json_string_value(
        json_object_get(json_object_get(json_object_get(obj, "metadata"), "labels"), key));
}

const char *iamx_annotation(const json_t *obj, const char *key)
{
    return json_string_value(
        json_object_get(json_object_get(json_object_get(obj, "metadata"), "annotations"), key));
}

int iamx_deleting(const json_t *obj)
{
    return json_object_get(json_object_get(obj, "metadata"), "deletionTimestamp") != NULL &&
           !json_is_null(json_object_get(json_object_get(obj, "metadata"), "deletionTimestamp"));
}

int iamx_has_finalizer(const json_t *obj, const char *finalizer)
{
    const json_t *fs = json_object_get(json_object_get(obj, "metadata"), "finalizers");
    size_t i;
    json_t *f;

    json_array_foreach(fs, i, f) {
        if (json_is_string(f) && strcmp(json_string_value(f), finalizer) == 0)
            return 1;
    }
    return 0;
}

int iamx_add_finalizer(json_t *obj, const char *finalizer)
{
    json_t *md = json_object_get(obj, "metadata"), *fs;

    if (iamx_has_finalizer(obj, finalizer))
        return 0;
    if (!json_is_object(md))
        return -1;
    fs = json_object_get(md, "finalizers");
    if (!json_is_array(fs)) {
        fs = json_array();
        if (fs == NULL || json_object_set_new(md, "finalizers", fs) != 0)
            return -1;
    }
    return json_array_append_new(fs, json_string(finalizer)) == 0 ? 1 : -1;
}

int iamx_remove_finalizer(json_t *obj, const char *finalizer)
{
    json_t *fs = json_object_get(json_object_get(obj, "metadata"), "finalizers");
    int changed = 0;

    for (size_t i = 0; i < json_array_size(fs);) {
        json_t *f = json_array_get(fs, i);
        if (json_is_string(f) && strcmp(json_string_value(f), finalizer) == 0) {
            json_array_remove(fs, i);
            changed = 1;
        } else {
            i++;
        }
    }
    return changed;
}

int iamx_set_annotation(json_t *obj, const char *key, const char *value)
{
    json_t *md = json_object_get(obj, "metadata"), *an;

    if (!json_is_object(md))
        return -1;
    an = json_object_get(md, "annotations");
    if (!json_is_object(an)) {
        an = json_object();
        if (an == NULL || json_object_set_new(md, "annotations", an) != 0)
            return -1;
    }
    return json_object_set_new(an, key, json_string(value)) == 0 ? 0 : -1;
}

ks_status iamx_split_key(const char *key, char ns[IAMX_NAME_MAX], char name[IAMX_NAME_MAX])
{
    const char *slash = key ? strchr(key, '/') : NULL;
    size_t nslen;

    if (slash == NULL)
        return KS_FAIL(KS_ERR_INVALID, "key without '/'");
    nslen = (size_t)(slash - key);
    if (nslen >= IAMX_NAME_MAX || strlen(slash + 1) >= IAMX_NAME_MAX || slash[1] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "bad key");
    memcpy(ns, key, nslen);
    ns[nslen] = '\0';
    snprintf(name, IAMX_NAME_MAX, "%s", slash + 1);
    return KS_OK;
}

int iamx_synced(rec_runtime *rt, const char *const *resources)
{
    for (const char *const *r = resources; *r != NULL; r++)
        if (!rec_synced(rt, *r))
            return 0;
    return 1;
}

/* ---- writes ---- */

ks_status iamx_update(rec_runtime *rt, const char *ctl, const char *resource, const json_t *obj,
                      int status, json_t **out)
{
    char path[1024];
    const char *ns = iamx_meta(obj, "namespace"), *name = iamx_meta(obj, "name");
    char *body = NULL;
    ks_kube_response resp;
    ks_status st;
    size_t n;

    st = rec_path(rt, resource, ns, name, path, sizeof(path));
    if (st)
        return st;
    n = strlen(path);
    if (status && snprintf(path + n, sizeof(path) - n, "/status") >= (int)(sizeof(path) - n))
        return KS_FAIL(KS_ERR_TOO_LARGE, "path of %s", name);
    body = json_dumps(obj, JSON_COMPACT);
    if (body == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "body of %s", name);
    rec_write_count(rt, ctl);
    st = ks_kube_request(rec_kube(rt), "PUT", path, body, NULL, 0, &resp);
    free(body);
    if (st == KS_OK && out != NULL) {
        json_t *o = resp.body ? json_loadb(resp.body, resp.body_len, 0, NULL) : NULL;
        if (o == NULL)
            st = KS_FAIL(KS_ERR_PROTOCOL, "PUT %s: the answer is not JSON", path);
        else
            *out = o;
    } else if (st && resp.http_code > 0) {
        st = KS_FAIL(st, "PUT %s: %ld %s: %.300s", path, resp.http_code, resp.status.reason,
                     resp.status.message);
    }
    ks_kube_response_clear(&resp);
    return st;
}

ks_status iamx_delete(rec_runtime *rt, const char *ctl, const char *resource, const char *ns,
                      const char *name, const char *uid, const char *rv)
{
    char path[1024];
    char *body = NULL;
    json_t *opts;
    ks_kube_response resp;
    ks_status st;

    st = rec_path(rt, resource, ns, name, path, sizeof(path));
    if (st)
        return st;
    opts = json_pack("{s:s, s:s}", "kind", "DeleteOptions", "apiVersion", "v1");
    if (opts != NULL && ((uid != NULL && uid[0] != '\0') || (rv != NULL && rv[0] != '\0'))) {
        json_t *pre = json_object();
        if (pre != NULL && uid != NULL && uid[0] != '\0')
            json_object_set_new(pre, "uid", json_string(uid));
        if (pre != NULL && rv != NULL && rv[0] != '\0')
            json_object_set_new(pre, "resourceVersion", json_string(rv));
        if (pre == NULL || json_object_set_new(opts, "preconditions", pre) != 0) {
            json_decref(opts);
            opts = NULL;
        }
    }
    body = opts ? json_dumps(opts, JSON_COMPACT) : NULL;
    json_decref(opts);
    if (body == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "delete options");
    rec_write_count(rt, ctl);
    st = ks_kube_request(rec_kube(rt), "DELETE", path, body, NULL, 0, &resp);
    free(body);
    if (st == KS_ERR_NOT_FOUND)
        st = KS_OK;
    else if (st && resp.http_code > 0)
        st = KS_FAIL(st, "DELETE %s: %ld %s: %.300s", path, resp.http_code, resp.status.reason,
                     resp.status.message);
    ks_kube_response_clear(&resp);
    return st;
}

/* ---- indexes ---- */

typedef struct {
    char *rv;
    iamx_item item;     /* listed/labelled unused here */
    char **listed;      /* users named by subjects / users[] */
    size_t nlisted;
    char *label_user;   /* the user-ref label, or NULL */
} ix_entry;

typedef struct {
    char **keys;
    size_t n, cap;
} ix_ulist;

typedef struct {
    const char *resource;
    ks_strmap *entries;   /* "<ns>/<name>" -> ix_entry */
    ks_strmap *by_user;   /* user -> ix_ulist */
    int dirty;
} ix_index;

static pthread_mutex_t ix_mu = PTHREAD_MUTEX_INITIALIZER;
static ix_index ix[IAMX_IDX_N] = {
    [IAMX_IDX_LR] = {.resource = IAMX_RES_LOGINRECORDS, .dirty = 1},
    [IAMX_IDX_GRB] = {.resource = IAMX_RES_GLOBALROLEBINDINGS, .dirty = 1},
    [IAMX_IDX_GB] = {.resource = IAMX_RES_GROUPBINDINGS, .dirty = 1},
};
static _Thread_local int tl_seen;

static void entry_free(void *p)
{
    ix_entry *e = p;
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->nlisted; i++)
        free(e->listed[i]);
    free(e->listed);
    free(e->label_user);
    free(e->rv);
    free(e);
}

static void ulist_free(void *p)
{
    ix_ulist *l = p;
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        free(l->keys[i]);
    free(l->keys);
    free(l);
}

static int entry_lists(const ix_entry *e, const char *user)
{
    for (size_t i = 0; i < e->nlisted; i++)
        if (strcmp(e->listed[i], user) == 0)
            return 1;
    return 0;
}

/* The distinct users of an entry: listed ones, then the label's. *out
 * points into e (malloc'd array, caller frees); -1 when out of memory. */
static long entry_users(const ix_entry *e, const char ***out)
{
    const char **u = malloc((e->nlisted + 1) * sizeof(*u));
    long n = 0;

    if (u == NULL)
        return -1;
    for (size_t i = 0; i < e->nlisted; i++)
        u[n++] = e->listed[i];
    if (e->label_user != NULL && !entry_lists(e, e->label_user))
        u[n++] = e->label_user;
    *out = u;
    return n;
}

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

static int add_listed(ix_entry *e, const char *user)
{
    char **nl;

    if (user == NULL || user[0] == '\0' || entry_lists(e, user))
        return 0;
    nl = realloc(e->listed, (e->nlisted + 1) * sizeof(*nl));
    if (nl == NULL)
        return -1;
    e->listed = nl;
    if ((e->listed[e->nlisted] = strdup(user)) == NULL)
        return -1;
    e->nlisted++;
    return 0;
}

static ix_entry *entry_from_object(iamx_idx idx, const json_t *obj)
{
    ix_entry *e = calloc(1, sizeof(*e));
    const char *label = iamx_label(obj, IAMX_LABEL_USER_REF);
    const char *ts = iamx_meta(obj, "creationTimestamp");
    size_t i;
    json_t *v;

    if (e == NULL)
        return NULL;
    snprintf(e->item.ns, sizeof(e->item.ns), "%s", iamx_meta(obj, "namespace"));
    snprintf(e->item.name, sizeof(e->item.name), "%s", iamx_meta(obj, "name"));
    snprintf(e->item.uid, sizeof(e->item.uid), "%s", iamx_meta(obj, "uid"));
    snprintf(e->item.rv, sizeof(e->item.rv), "%s", iamx_meta(obj, "resourceVersion"));
    if (ts[0] == '\0' || iamx_time_parse(ts, &e->item.created) != KS_OK)
        e->item.created = 0;
    e->rv = strdup(iamx_meta(obj, "resourceVersion"));
    if (e->rv == NULL)
        goto fail;
    if (label != NULL && label[0] != '\0' && (e->label_user = strdup(label)) == NULL)
        goto fail;
    switch (idx) {
    case IAMX_IDX_LR:
        e->item.success = json_is_true(json_object_get(json_object_get(obj, "spec"), "success"));
        break;
    case IAMX_IDX_GRB:
        snprintf(e->item.ref, sizeof(e->item.ref), "%s",
                 str_or_empty(json_string_value(
                     json_object_get(json_object_get(obj, "roleRef"), "name"))));
        json_array_foreach(json_object_get(obj, "subjects"), i, v) {
            const char *kind = json_string_value(json_object_get(v, "kind"));
            if (kind != NULL && strcmp(kind, "User") == 0 &&
                add_listed(e, json_string_value(json_object_get(v, "name"))) != 0)
                goto fail;
        }
        break;
    case IAMX_IDX_GB:
        snprintf(e->item.ref, sizeof(e->item.ref), "%s",
                 str_or_empty(json_string_value(
                     json_object_get(json_object_get(obj, "groupRef"), "name"))));
        json_array_foreach(json_object_get(obj, "users"), i, v) {
            if (add_listed(e, json_string_value(v)) != 0)
                goto fail;
        }
        break;
    default:
        break;
    }
    return e;
fail:
    entry_free(e);
    return NULL;
}

static void ulist_remove(ix_index *x, const char *user, const char *key)
{
    ix_ulist *l = ks_strmap_get(x->by_user, user);

    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->keys[i], key) == 0) {
            free(l->keys[i]);
            l->keys[i] = l->keys[--l->n];
            break;
        }
    }
    if (l->n == 0)
        ks_strmap_remove(x->by_user, user);
}

static int ulist_add(ix_index *x, const char *user, const char *key)
{
    ix_ulist *l = ks_strmap_get(x->by_user, user);

    if (l == NULL) {
        l = calloc(1, sizeof(*l));
        if (l == NULL || ks_strmap_put(x->by_user, user, l) != KS_OK) {
            free(l);
            return -1;
        }
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        char **nk = realloc(l->keys, cap * sizeof(*nk));
        if (nk == NULL)
            return -1;
        l->keys = nk;
        l->cap = cap;
    }
    if ((l->keys[l->n] = strdup(key)) == NULL)
        return -1;
    l->n++;
    return 0;
}

/* Caller holds ix_mu. */
static void index_remove(ix_index *x, const char *key)
{
    ix_entry *e = ks_strmap_take(x->entries, key);

    if (e == NULL)
        return;
    for (size_t i = 0; i < e->nlisted; i++)
        ulist_remove(x, e->listed[i], key);
    if (e->label_user != NULL && !entry_lists(e, e->label_user))
        ulist_remove(x, e->label_user, key);
    entry_free(e);
}

/* Caller holds ix_mu. Takes e. Out of memory marks the index for a
 * rebuild at its next lookup. */
static void index_insert(ix_index *x, const char *key, ix_entry *e)
{
    index_remove(x, key);
    if (ks_strmap_put(x->entries, key, e) != KS_OK) {
        entry_free(e);
        x->dirty = 1;
        return;
    }
    for (size_t i = 0; i < e->nlisted; i++)
        if (ulist_add(x, e->listed[i], key) != 0)
            x->dirty = 1;
    if (e->label_user != NULL && !entry_lists(e, e->label_user) &&
        ulist_add(x, e->label_user, key) != 0)
        x->dirty = 1;
}

typedef struct {
    ix_index *x;
    iamx_idx idx;
} rebuild_ctx;

static int rebuild_one(const json_t *obj, void *arg)
{
    rebuild_ctx *c = arg;
    ix_entry *e = entry_from_object(c->idx, obj);
    char key[IAMX_KEY_MAX];

    if (e == NULL) {
        c->x->dirty = 1;
        return 0;
    }
    snprintf(key, sizeof(key), "%s/%s", e->item.ns, e->item.name);
    index_insert(c->x, key, e);
    return 0;
}

/* Caller holds ix_mu. rec_each takes only the store's lock, never ix_mu,
 * and the reflector thread calls map (and so ix_mu) without holding it. */
static void index_rebuild_locked(rec_runtime *rt, iamx_idx idx)
{
    ix_index *x = &ix[idx];
    rebuild_ctx c = {x, idx};

    ks_strmap_destroy(x->entries);
    ks_strmap_destroy(x->by_user);
    x->entries = ks_strmap_create(entry_free);
    x->by_user = ks_strmap_create(ulist_free);
    if (x->entries == NULL || x->by_user == NULL) {
        x->dirty = 1;
        return;
    }
    x->dirty = 0;
    rec_each(rt, x->resource, rebuild_one, &c);
    ks_debug("controllers: index of %s rebuilt (%zu objects)", x->resource,
             ks_strmap_size(x->entries));
}

static int index_ready_locked(rec_runtime *rt, iamx_idx idx)
{
    if (ix[idx].dirty || ix[idx].entries == NULL)
        index_rebuild_locked(rt, idx);
    return ix[idx].entries != NULL && ix[idx].by_user != NULL;
}

void iamx_reconcile_begin(void)
{
    if (tl_seen)
        return;
    tl_seen = 1;
    pthread_mutex_lock(&ix_mu);
    for (int i = 0; i < IAMX_IDX_N; i++)
        ix[i].dirty = 1;
    pthread_mutex_unlock(&ix_mu);
}

typedef struct {
    char user[IAMX_NAME_MAX];
    int now;   /* named after the change */
} affected;

void iamx_index_event(rec_runtime *rt, iamx_idx idx, const ks_reflect_event *ev, iamx_user_fn fn,
                      void *arg)
{
    ix_index *x = &ix[idx];
    json_t *obj = json_loadb(ev->object_json, ev->object_len, 0, NULL);
    ix_entry *ne = NULL, *old;
    char key[IAMX_KEY_MAX];
    affected *aff = NULL;
    size_t naff = 0;
    iamx_item now_item;

    if (obj == NULL)
        return;
    snprintf(key, sizeof(key), "%s/%s", ev->namespace_, ev->name);
    /* For DELETED, the object's last state still names the users to queue
     * (the index may not have it: built after the delete, or out of memory). */
    ne = entry_from_object(idx, obj);
    json_decref(obj);
    pthread_mutex_lock(&ix_mu);
    if (x->entries == NULL && !index_ready_locked(rt, idx)) {
        pthread_mutex_unlock(&ix_mu);
        entry_free(ne);
        return;
    }
    old = ks_strmap_get(x->entries, key);
    {
        const char **ou = NULL, **nu = NULL;
        long on = old ? entry_users(old, &ou) : 0, nn = ne ? entry_users(ne, &nu) : 0;
        /* A GroupBinding may list thousands: dedupe through maps. */
        ks_strmap *seen = ks_strmap_create(NULL), *now = ks_strmap_create(NULL);
        int deleted = ev->type == KS_REFLECT_DELETED;

        if (on >= 0 && nn >= 0 && on + nn > 0 && seen != NULL && now != NULL)
            aff = calloc((size_t)(on + nn), sizeof(*aff));
        for (long i = 0; aff != NULL && !deleted && i < nn; i++)
            if (ks_strmap_put(now, nu[i], (void *)nu[i]) != KS_OK)
                x->dirty = 1;
        for (long i = 0; aff != NULL && i < on + nn; i++) {
            const char *u = i < on ? ou[i] : nu[i - on];
            if (ks_strmap_get(seen, u) != NULL || ks_strmap_put(seen, u, (void *)u) != KS_OK)
                continue;
            snprintf(aff[naff].user, sizeof(aff[naff].user), "%s", u);
            aff[naff].now = ks_strmap_get(now, u) != NULL;
            naff++;
        }
        ks_strmap_destroy(seen);
        ks_strmap_destroy(now);
        free(ou);
        free(nu);
    }
    if (ne != NULL)
        now_item = ne->item;
    if (ev->type == KS_REFLECT_DELETED) {
        index_remove(x, key);
        entry_free(ne);
    } else if (ne != NULL) {
        if (old != NULL && strcmp(old->rv, ne->rv) == 0)
            entry_free(ne);
        else
            index_insert(x, key, ne);
    } else {
        x->dirty = 1;   /* out of memory: start over at the next lookup */
    }
    pthread_mutex_unlock(&ix_mu);
    for (size_t i = 0; fn != NULL && i < naff; i++)
        fn(rt, aff[i].user, aff[i].now ? &now_item : NULL, arg);
    free(aff);
}

static int item_cmp(const void *a, const void *b)
{
    const iamx_item *x = a, *y = b;
    int c = strcmp(x->ns, y->ns);
    return c ? c : strcmp(x->name, y->name);
}

long iamx_index_user(rec_runtime *rt, iamx_idx idx, const char *user, iamx_item **items)
{
    ix_index *x = &ix[idx];
    iamx_item *out = NULL;
    ix_ulist *l;
    long n = 0;

    pthread_mutex_lock(&ix_mu);
    if (!index_ready_locked(rt, idx)) {
        pthread_mutex_unlock(&ix_mu);
        return -1;
    }
    l = ks_strmap_get(x->by_user, user);
    if (l != NULL && l->n > 0) {
        out = calloc(l->n, sizeof(*out));
        if (out == NULL) {
            pthread_mutex_unlock(&ix_mu);
            return -1;
        }
        for (size_t i = 0; i < l->n; i++) {
            ix_entry *e = ks_strmap_get(x->entries, l->keys[i]);
            if (e == NULL)
                continue;
            out[n] = e->item;
            out[n].listed = entry_lists(e, user);
            out[n].labelled = e->label_user != NULL && strcmp(e->label_user, user) == 0;
            n++;
        }
    }
    pthread_mutex_unlock(&ix_mu);
    if (n > 1)
        qsort(out, (size_t)n, sizeof(*out), item_cmp);
    if (n == 0) {
        free(out);
        out = NULL;
    }
    *items = out;
    return n;
}

typedef struct {
    const char *ref;
    affected *aff;
    size_t n, cap;
} ref_ctx;

static int collect_ref(const char *key, void *value, void *arg)
{
    ref_ctx *c = arg;
    ix_entry *e = value;
    const char **users = NULL;
    long n;

    if (strcmp(e->item.ref, c->ref) != 0)
        return 0;
    n = entry_users(e, &users);
    for (long i = 0; i < n; i++) {
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 16;
            affected *na = realloc(c->aff, cap * sizeof(*na));
            if (na == NULL)
                break;
            c->aff = na;
            c->cap = cap;
        }
        snprintf(c->aff[c->n].user, sizeof(c->aff[c->n].user), "%s", users[i]);
        c->aff[c->n].now = 1;
        c->n++;
    }
    free(users);
    return 0;
}

void iamx_index_ref_users(rec_runtime *rt, iamx_idx idx, const char *ref, iamx_user_fn fn,
                          void *arg)
{
    ref_ctx c = {.ref = ref};

    pthread_mutex_lock(&ix_mu);
    if (index_ready_locked(rt, idx))
        ks_strmap_each(ix[idx].entries, collect_ref, &c);
    pthread_mutex_unlock(&ix_mu);
    for (size_t i = 0; i < c.n; i++)
        fn(rt, c.aff[i].user, NULL, arg);
    free(c.aff);
}
