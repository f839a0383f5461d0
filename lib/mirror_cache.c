/* mirror_cache.c: the read side of the mirror. See mirror_cache.h for the
 * contract and docs/mirror-read-side.md for the design. */
#include "mirror_cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "codec.h"
#include "kscore/v1/mirror.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "subject.h"

/* Bytes of one unescaped key part (group, resource, namespace, name). The
 * longest Kubernetes name is 253 bytes; a key token is at most 1023 bytes
 * (ks_subject_object_key_parse), which unescapes to fewer. */
#define MC_PART_MAX 1024
#define MC_RESOURCE_MAX (2 * MC_PART_MAX)
#define MC_RETRY_MIN_MS 250
#define MC_RETRY_MAX_MS 5000
#define MC_LOG_FIRST_ERRORS 10 /* then one line per 1000 decode errors */

/* ------------------------------------------------------------------------ */
/* A small chained hash map from byte strings to pointers.                   */

typedef struct mc_ent {
    struct mc_ent *next;
    uint64_t hash;
    void *val;
    size_t klen;
    char key[]; /* klen bytes, then a NUL */
} mc_ent;

typedef struct {
    mc_ent **slots;
    size_t nslots; /* 0 or a power of two */
    size_t n;
} mc_map;

static uint64_t mc_seed;
static pthread_once_t mc_seed_once = PTHREAD_ONCE_INIT;

static void mc_seed_init(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
        s = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&s;
    mc_seed = s;
}

/* FNV-1a over a seeded basis, then a splitmix64 finish: keys come from the
 * bus, so the seed keeps crafted collisions impractical. */
static uint64_t mc_hash(const char *k, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ mc_seed;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

static mc_ent *map_find(const mc_map *m, const char *k, size_t n)
{
    uint64_t h;
    if (m->nslots == 0)
        return NULL;
    h = mc_hash(k, n);
    for (mc_ent *e = m->slots[h & (m->nslots - 1)]; e; e = e->next)
        if (e->hash == h && e->klen == n && memcmp(e->key, k, n) == 0)
            return e;
    return NULL;
}

static void *map_get(const mc_map *m, const char *k, size_t n)
{
    mc_ent *e = map_find(m, k, n);
    return e ? e->val : NULL;
}

static int map_grow(mc_map *m)
{
    size_t nn = m->nslots ? m->nslots * 2 : 8;
    mc_ent **s = calloc(nn, sizeof(*s));
    if (s == NULL)
        return -1;
    for (size_t i = 0; i < m->nslots; i++) {
        mc_ent *e = m->slots[i], *next;
        for (; e; e = next) {
            next = e->next;
            e->next = s[e->hash & (nn - 1)];
            s[e->hash & (nn - 1)] = e;
        }
    }
    free(m->slots);
    m->slots = s;
    m->nslots = nn;
    return 0;
}

/* Insert a key that is not in the map. -1 on OOM (map unchanged). */
static int map_add(mc_map *m, const char *k, size_t n, void *val)
{
    mc_ent *e;
    if (m->n >= m->nslots && map_grow(m) != 0 && m->nslots == 0)
        return -1; /* a failed grow of a non-empty map only costs speed */
    e = malloc(sizeof(*e) + n + 1);
    if (e == NULL)
        return -1;
    e->hash = mc_hash(k, n);
    e->val = val;
    e->klen = n;
    memcpy(e->key, k, n);
    e->key[n] = '\0';
    e->next = m->slots[e->hash & (m->nslots - 1)];
    m->slots[e->hash & (m->nslots - 1)] = e;
    m->n++;
    return 0;
}

/* Remove a key; returns its value or NULL. */
static void *map_del(mc_map *m, const char *k, size_t n)
{
    uint64_t h;
    mc_ent **pp;
    if (m->nslots == 0)
        return NULL;
    h = mc_hash(k, n);
    for (pp = &m->slots[h & (m->nslots - 1)]; *pp; pp = &(*pp)->next) {
        mc_ent *e = *pp;
        if (e->hash == h && e->klen == n && memcmp(e->key, k, n) == 0) {
            void *v = e->val;
            *pp = e->next;
            free(e);
            m->n--;
            return v;
        }
    }
    return NULL;
}

static void map_clear(mc_map *m, void (*free_val)(void *))
{
    for (size_t i = 0; i < m->nslots; i++) {
        mc_ent *e = m->slots[i], *next;
        for (; e; e = next) {
            next = e->next;
            if (free_val)
                free_val(e->val);
            free(e);
        }
    }
    free(m->slots);
    memset(m, 0, sizeof(*m));
}

#define MAP_FOREACH(m, e)                                   \
    for (size_t e##_i = 0; e##_i < (m)->nslots; e##_i++)    \
        for (mc_ent *e = (m)->slots[e##_i]; e; e = e->next)

/* ------------------------------------------------------------------------ */
/* The index.                                                               */

struct mc_res;

typedef struct mc_obj {
    struct mc_res *res;
    json_t *object;
    uint64_t revision;
    int64_t observed_ms;
    size_t nslen, namelen;
    const char *ns, *name, *uid, *rv; /* into data */
    char data[]; /* ns \0 name \0 uid \0 rv \0; "ns\0name" is the identity key */
} mc_obj;

typedef struct mc_res {
    char *name;      /* "<group>/<resource>" */
    mc_map by_ns;    /* namespace -> mc_map* (name -> mc_obj*) */
    mc_map by_label; /* "key\0value" -> mc_map* (identity -> mc_obj*) */
    size_t count;
    ks_metric *m_objects, *m_updates;
} mc_res;

typedef struct mc_watch {
    struct ks_mirror_cache *cache;
    char keys[MC_RESOURCE_MAX * 3 + 8];
    ks_bus_kv_watcher *w;
    int marker; /* its end-of-initial-values marker arrived */
} mc_watch;

typedef struct {
    ks_mirror_change_fn fn;
    void *arg;
    char *resource; /* NULL: all */
    uint64_t since; /* dispatch_seq when added: not called for that dispatch */
} mc_handler;

enum { MC_STATE_OPENING = 0, MC_STATE_LOADING, MC_STATE_SYNCED };

struct ks_mirror_cache {
    char *bucket;
    char **filter; /* NULL-terminated, or NULL for all */
    size_t nfilter;
    ks_bus *bus;   /* NULL for a local cache */
    ks_bus_kv *kv;
    mc_watch *watches; /* nfilter of them, or one for all keys */
    size_t nwatches;

    pthread_mutex_t mu; /* state below, the retry thread, synced waits */
    pthread_cond_t cond;
    int stopping;
    int retrying;
    pthread_t retry_thread;
    atomic_int state;

    pthread_rwlock_t lock; /* the index */
    mc_map resources;      /* name -> mc_res* */
    _Atomic uint64_t generation;
    _Atomic uint64_t decode_errors;
    _Atomic uint64_t last_revision; /* highest KV revision applied */

    pthread_mutex_t cb_mu; /* recursive; taken before `lock`: every index change with
                              its handler calls, and the handler table */
    mc_handler handlers[KS_MIRROR_MAX_HANDLERS];
    uint64_t dispatch_seq; /* under cb_mu */

    ks_metric *m_decode_errors, *m_lag, *m_synced;
};

static const double lag_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25,  0.5,    1,     2.5,  5,    10,   30, 60};

static int64_t now_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void obj_free(mc_obj *o)
{
    if (o == NULL)
        return;
    json_decref(o->object);
    free(o);
}

static void nsmap_free(void *p)
{
    mc_map *m = p;
    map_clear(m, (void (*)(void *))obj_free);
    free(m);
}

static void set_free(void *p)
{
    mc_map *m = p;
    map_clear(m, NULL);
    free(m);
}

static void res_free(void *p)
{
    mc_res *r = p;
    map_clear(&r->by_label, set_free);
    map_clear(&r->by_ns, nsmap_free);
    free(r->name);
    free(r);
}

static ks_metric *res_metric(const ks_mirror_cache *c, const char *res, int objects)
{
    char labels[KS_METRICS_LABELS_MAX] = "";
    if (ks_metrics_label_append(labels, sizeof(labels), "bucket", c->bucket) != KS_OK ||
        ks_metrics_label_append(labels, sizeof(labels), "resource", res) != KS_OK)
        labels[0] = '\0';
    if (objects)
        return ks_metrics_gauge("ks_mirror_objects", "objects in the mirror read-side index",
                                labels);
    return ks_metrics_counter("ks_mirror_updates_total",
                              "changes applied to the mirror read-side index", labels);
}

/* Under the write lock. */
static mc_res *res_get_or_add(ks_mirror_cache *c, const char *name)
{
    size_t n = strlen(name);
    mc_res *r = map_get(&c->resources, name, n);
    if (r)
        return r;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->name = strdup(name);
    if (r->name == NULL || map_add(&c->resources, name, n, r) != 0) {
        free(r->name);
        free(r);
        return NULL;
    }
    r->m_objects = res_metric(c, name, 1);
    r->m_updates = res_metric(c, name, 0);
    return r;
}

/* "a\0b" in stack (cap bytes) or on the heap; NULL on OOM. */
static char *join2(const char *a, size_t al, const char *b, size_t bl, char *stack, size_t cap,
                   size_t *len)
{
    char *p = al + bl + 1 <= cap ? stack : malloc(al + bl + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, a, al);
    p[al] = '\0';
    memcpy(p + al + 1, b, bl);
    *len = al + 1 + bl;
    return p;
}

static const json_t *obj_labels(const json_t *object)
{
    const json_t *l = json_object_get(json_object_get(object, "metadata"), "labels");
    return json_is_object(l) ? l : NULL;
}

/* Under the write lock: drop o from every label set of its resource,
 * without allocating (empty sets are left for the next change to reuse). */
static void labels_purge(mc_res *r, mc_obj *o)
{
    MAP_FOREACH(&r->by_label, e)
        map_del(e->val, o->data, o->nslen + 1 + o->namelen);
}

/* Under the write lock: drop o from the label sets of its resource. */
static void labels_remove(mc_res *r, mc_obj *o)
{
    const json_t *labels = obj_labels(o->object);
    const char *k;
    json_t *v;

    json_object_foreach((json_t *)labels, k, v) {
        char stack[512], *lk;
        size_t lklen;
        mc_map *set;
        if (!json_is_string(v))
            continue;
        lk = join2(k, strlen(k), json_string_value(v), json_string_length(v), stack,
                   sizeof(stack), &lklen);
        if (lk == NULL) {
            labels_purge(r, o); /* OOM: no set may keep a pointer to o */
            return;
        }
        set = map_get(&r->by_label, lk, lklen);
        if (set) {
            map_del(set, o->data, o->nslen + 1 + o->namelen);
            if (set->n == 0)
                set_free(map_del(&r->by_label, lk, lklen));
        }
        if (lk != stack)
            free(lk);
    }
}

/* Under the write lock: add o to the label sets of its resource. */
static void labels_add(mc_res *r, mc_obj *o)
{
    const json_t *labels = obj_labels(o->object);
    const char *k;
    json_t *v;

    json_object_foreach((json_t *)labels, k, v) {
        char stack[512], *lk;
        size_t lklen;
        mc_map *set;
        if (!json_is_string(v))
            continue;
        lk = join2(k, strlen(k), json_string_value(v), json_string_length(v), stack,
                   sizeof(stack), &lklen);
        if (lk == NULL)
            goto oom;
        set = map_get(&r->by_label, lk, lklen);
        if (set == NULL) {
            set = calloc(1, sizeof(*set));
            if (set == NULL || map_add(&r->by_label, lk, lklen, set) != 0) {
                free(set);
                set = NULL;
            }
        }
        if (set == NULL || map_add(set, o->data, o->nslen + 1 + o->namelen, o) != 0) {
            if (set && set->n == 0)
                set_free(map_del(&r->by_label, lk, lklen));
            if (lk != stack)
                free(lk);
            goto oom;
        }
        if (lk != stack)
            free(lk);
    }
    return;
oom:
    ks_error("mirror: out of memory indexing the labels of %s %s/%s", r->name, o->ns, o->name);
}

/* ------------------------------------------------------------------------ */
/* Applying entries.                                                        */

static void decode_error(ks_mirror_cache *c, const char *key, const char *why)
{
    uint64_t n = atomic_fetch_add(&c->decode_errors, 1) + 1;
    ks_metric_inc(c->m_decode_errors);
    if (n <= MC_LOG_FIRST_ERRORS || n % 1000 == 0)
        ks_warn("mirror %s: skipped the value of key \"%.300s\": %s (%llu skipped so far)",
                c->bucket, key, why, (unsigned long long)n);
}

static int in_filter(const ks_mirror_cache *c, const char *resource)
{
    if (c->filter == NULL)
        return 1;
    for (size_t i = 0; i < c->nfilter; i++)
        if (strcmp(c->filter[i], resource) == 0)
            return 1;
    return 0;
}

/* With cb_mu held (apply_entry). */
static void dispatch(ks_mirror_cache *c, ks_mirror_change type, const char *resource,
                     const char *ns, const char *name, const json_t *old_obj,
                     const json_t *new_obj)
{
    uint64_t seq = ++c->dispatch_seq;

    /* By index over a fixed table: a handler may add or remove handlers. One
     * added during this dispatch has replayed the current state already. */
    for (size_t i = 0; i < KS_MIRROR_MAX_HANDLERS; i++) {
        mc_handler *h = &c->handlers[i];
        if (h->fn == NULL || h->since == seq ||
            (h->resource && strcmp(h->resource, resource) != 0))
            continue;
        h->fn(type, resource, ns, name, old_obj, new_obj, h->arg);
    }
}

static void after_change(ks_mirror_cache *c, mc_res *r, size_t count, int64_t observed_ms)
{
    ks_metric_set(r->m_objects, (double)count);
    ks_metric_inc(r->m_updates);
    if (observed_ms > 0 && atomic_load(&c->state) == MC_STATE_SYNCED) {
        int64_t lag = now_unix_ms() - observed_ms;
        ks_metric_observe(c->m_lag, lag > 0 ? (double)lag / 1000.0 : 0.0);
    }
}

static void remove_object(ks_mirror_cache *c, const char *resource, const char *ns,
                          const char *name)
{
    size_t nslen = strlen(ns), namelen = strlen(name), count;
    mc_res *r;
    mc_map *nsmap;
    mc_obj *old;

    pthread_rwlock_wrlock(&c->lock);
    r = map_get(&c->resources, resource, strlen(resource));
    nsmap = r ? map_get(&r->by_ns, ns, nslen) : NULL;
    old = nsmap ? map_get(nsmap, name, namelen) : NULL;
    if (old == NULL) {
        pthread_rwlock_unlock(&c->lock);
        return;
    }
    map_del(nsmap, name, namelen);
    if (nsmap->n == 0)
        nsmap_free(map_del(&r->by_ns, ns, nslen));
    labels_remove(r, old);
    count = --r->count;
    atomic_fetch_add(&c->generation, 1);
    pthread_rwlock_unlock(&c->lock);

    after_change(c, r, count, 0);
    dispatch(c, KS_MIRROR_DELETED, r->name, ns, name, old->object, NULL);
    obj_free(old);
}

/* Takes o. */
static void upsert_object(ks_mirror_cache *c, const char *resource, mc_obj *o)
{
    ks_mirror_change type = KS_MIRROR_ADDED;
    mc_res *r;
    mc_map *nsmap;
    mc_ent *slot;
    mc_obj *old = NULL;
    json_t *cur;
    size_t count;
    char ns[MC_PART_MAX], name[MC_PART_MAX];

    pthread_rwlock_wrlock(&c->lock);
    r = res_get_or_add(c, resource);
    if (r == NULL)
        goto oom;
    nsmap = map_get(&r->by_ns, o->ns, o->nslen);
    if (nsmap == NULL) {
        nsmap = calloc(1, sizeof(*nsmap));
        if (nsmap == NULL || map_add(&r->by_ns, o->ns, o->nslen, nsmap) != 0) {
            free(nsmap);
            goto oom;
        }
    }
    slot = map_find(nsmap, o->name, o->namelen);
    if (slot) {
        old = slot->val;
        /* Revisions are not compared: they restart when the bucket is
         * recreated. The watch delivers in stream order anyway, and a replay
         * (a watch restarted) carries the same uid and resourceVersion. */
        if (old->rv[0] != '\0' && strcmp(old->rv, o->rv) == 0 && strcmp(old->uid, o->uid) == 0) {
            old->revision = o->revision; /* re-put of the same version */
            old->observed_ms = o->observed_ms;
            pthread_rwlock_unlock(&c->lock);
            obj_free(o);
            return;
        }
        labels_remove(r, old);
        slot->val = o;
        type = KS_MIRROR_MODIFIED;
    } else {
        if (map_add(nsmap, o->name, o->namelen, o) != 0) {
            if (nsmap->n == 0)
                nsmap_free(map_del(&r->by_ns, o->ns, o->nslen));
            goto oom;
        }
        r->count++;
    }
    o->res = r;
    labels_add(r, o);
    count = r->count;
    atomic_fetch_add(&c->generation, 1);
    /* What the handlers see must outlive a concurrent replacement of o. */
    cur = json_incref(o->object);
    memcpy(ns, o->ns, o->nslen + 1);
    memcpy(name, o->name, o->namelen + 1);
    pthread_rwlock_unlock(&c->lock);

    after_change(c, r, count, o->observed_ms);
    dispatch(c, type, r->name, ns, name, old ? old->object : NULL, cur);
    json_decref(cur);
    obj_free(old);
    return;
oom:
    pthread_rwlock_unlock(&c->lock);
    ks_error("mirror %s: out of memory indexing %s %s/%s; the object is missing", c->bucket,
             resource, o->ns, o->name);
    obj_free(o);
}

static const char *meta_string(const json_t *object, const char *field)
{
    const char *s = json_string_value(json_object_get(json_object_get(object, "metadata"), field));
    return s ? s : "";
}

/* Decode a put value into a new index object (or *deleted = 1 for an
 * ObjectEvent of type DELETED). NULL with *why set on failure. */
static mc_obj *decode(const ks_bus_kv_entry *e, const char *resource, const char *ns,
                      const char *name, int *deleted, const char **why)
{
    Kscore__V1__ObjectEvent *ev = NULL;
    json_t *object = NULL;
    json_error_t jerr;
    mc_obj *o = NULL;
    const char *uid, *rv;
    size_t nslen, namelen, uidlen, rvlen;
    char *p;

    *deleted = 0;
    if (e->len > KS_MIRROR_MAX_VALUE) {
        *why = "value larger than KS_MIRROR_MAX_VALUE";
        goto out;
    }
    if (ks_codec_unpack(&kscore__v1__object_event__descriptor, e->value, e->len,
                        KS_MIRROR_MAX_VALUE, (ProtobufCMessage **)&ev) != KS_OK) {
        *why = "not a kscore.v1.ObjectEvent";
        goto out;
    }
    if ((ev->resource[0] && strcmp(ev->resource, resource) != 0) ||
        (ev->namespace_[0] && strcmp(ev->namespace_, ns) != 0) ||
        (ev->name[0] && strcmp(ev->name, name) != 0)) {
        *why = "ObjectEvent resource, namespace or name differs from the key";
        goto out;
    }
    if (ev->type == KSCORE__V1__OBJECT_EVENT__TYPE__TYPE_DELETED) {
        *deleted = 1;
        goto out;
    }
    /* No JSON_ALLOW_NUL: strings never hold a NUL, which the label keys use. */
    object = json_loadb((const char *)ev->object.data, ev->object.len, 0, &jerr);
    if (!json_is_object(object)) {
        *why = object ? "object is not a JSON object" : "object is not valid JSON";
        goto out;
    }
    uid = ev->uid[0] ? ev->uid : meta_string(object, "uid");
    rv = ev->resource_version[0] ? ev->resource_version : meta_string(object, "resourceVersion");
    nslen = strlen(ns);
    namelen = strlen(name);
    uidlen = strlen(uid);
    rvlen = strlen(rv);
    o = malloc(sizeof(*o) + nslen + namelen + uidlen + rvlen + 4);
    if (o == NULL) {
        *why = "out of memory";
        goto out;
    }
    o->res = NULL;
    o->object = object;
    object = NULL;
    o->revision = e->revision;
    o->observed_ms = ev->observed_unix_ms;
    o->nslen = nslen;
    o->namelen = namelen;
    p = o->data;
    memcpy(p, ns, nslen + 1);
    o->ns = p;
    p += nslen + 1;
    memcpy(p, name, namelen + 1);
    o->name = p;
    p += namelen + 1;
    memcpy(p, uid, uidlen + 1);
    o->uid = p;
    p += uidlen + 1;
    memcpy(p, rv, rvlen + 1);
    o->rv = p;
out:
    json_decref(object);
    ks_codec_free((ProtobufCMessage *)ev);
    return o;
}

static void apply_entry(ks_mirror_cache *c, const ks_bus_kv_entry *e)
{
    char group[MC_PART_MAX], res[MC_PART_MAX], ns[MC_PART_MAX], name[MC_PART_MAX];
    char resource[MC_RESOURCE_MAX];
    const char *why = NULL;
    int deleted = 0;
    mc_obj *o;

    if (e->key == NULL ||
        ks_subject_object_key_parse(e->key, group, res, ns, name, MC_PART_MAX) != KS_OK ||
        name[0] == '\0' || res[0] == '\0') {
        decode_error(c, e->key ? e->key : "(null)", "key is not <group>.<resource>.<ns>.<name>");
        return;
    }
    if (snprintf(resource, sizeof(resource), "%s/%s", group, res) >= (int)sizeof(resource)) {
        decode_error(c, e->key, "resource name too long");
        return;
    }
    if (!in_filter(c, resource))
        return;
    o = e->op == KS_BUS_KV_PUT ? decode(e, resource, ns, name, &deleted, &why) : NULL;
    if (e->op == KS_BUS_KV_PUT && o == NULL && !deleted) {
        decode_error(c, e->key, why ? why : "undecodable");
        return;
    }
    /* Every change of the index happens with cb_mu held, from the update to
     * the last handler call: changes are dispatched in the order they were
     * applied, and add_handler (which takes cb_mu) sees a frozen index. */
    pthread_mutex_lock(&c->cb_mu);
    if (o)
        upsert_object(c, resource, o);
    else
        remove_object(c, resource, ns, name);
    pthread_mutex_unlock(&c->cb_mu);
}

/* Record that every entry up to revision has been applied (after its
 * handlers ran), for ks_mirror_cache_barrier. Entries outside the filter
 * count too: the barrier compares with the whole bucket's last revision. */
static void note_revision(ks_mirror_cache *c, uint64_t revision)
{
    uint64_t cur = atomic_load(&c->last_revision);
    while (revision > cur && !atomic_compare_exchange_weak(&c->last_revision, &cur, revision))
        ;
}

static void set_synced(ks_mirror_cache *c)
{
    pthread_mutex_lock(&c->mu);
    if (atomic_load(&c->state) != MC_STATE_SYNCED) {
        atomic_store(&c->state, MC_STATE_SYNCED);
        ks_metric_set(c->m_synced, 1);
        ks_info("mirror %s: initial values loaded (%zu objects)", c->bucket,
                ks_mirror_cache_count(c, NULL, NULL));
    }
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
}

static void on_watch_entry(const ks_bus_kv_entry *entry, void *arg)
{
    mc_watch *w = arg;
    ks_mirror_cache *c = w->cache;
    int all = 1;

    if (entry != NULL) {
        apply_entry(c, entry);
        note_revision(c, entry->revision);
        return;
    }
    pthread_mutex_lock(&c->mu);
    w->marker = 1;
    for (size_t i = 0; i < c->nwatches; i++)
        all = all && c->watches[i].marker;
    pthread_mutex_unlock(&c->mu);
    if (all)
        set_synced(c);
}

void ks_mirror_cache_apply(ks_mirror_cache *cache, const ks_bus_kv_entry *entry)
{
    if (cache == NULL)
        return;
    if (entry == NULL) {
        set_synced(cache);
        return;
    }
    apply_entry(cache, entry);
    note_revision(cache, entry->revision);
}

uint64_t ks_mirror_cache_revision(ks_mirror_cache *cache)
{
    return atomic_load(&cache->last_revision);
}

ks_status ks_mirror_cache_barrier(ks_mirror_cache *cache, int timeout_ms)
{
    struct timespec start, now, pause = {0, 500 * 1000};
    uint64_t target = 0;
    ks_status st;

    clock_gettime(CLOCK_MONOTONIC, &start);
    ks_bus_kv *kv = NULL;

    pthread_mutex_lock(&cache->mu);
    /* kv is stable once the state left OPENING (set under mu after kv), and
     * lives until the cache is destroyed: the round trip needs no lock */
    if (atomic_load(&cache->state) != MC_STATE_OPENING)
        kv = cache->kv;
    pthread_mutex_unlock(&cache->mu);
    st = kv != NULL ? ks_bus_kv_last_revision(kv, timeout_ms, &target)
                    : KS_FAIL(KS_ERR_UNAVAILABLE, "the mirror bucket is not open");
    if (st)
        return st;
    /* The watch usually delivers within a millisecond (DESIGN.md §11). */
    while (atomic_load(&cache->last_revision) < target) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 >=
            timeout_ms)
            return KS_FAIL(KS_ERR_TIMEOUT, "the mirror is behind revision %llu",
                           (unsigned long long)target);
        nanosleep(&pause, NULL);
    }
    return KS_OK;
}

/* ------------------------------------------------------------------------ */
/* Life cycle.                                                              */

static int valid_resource(const char *r)
{
    const char *slash = strchr(r, '/');
    return slash != NULL && strchr(slash + 1, '/') == NULL && slash[1] != '\0' &&
           strlen(r) < MC_RESOURCE_MAX;
}

static int valid_bucket(const char *b)
{
    if (*b == '\0' || strlen(b) > 255)
        return 0;
    for (; *b; b++)
        if (!((*b >= 'a' && *b <= 'z') || (*b >= 'A' && *b <= 'Z') || (*b >= '0' && *b <= '9') ||
              *b == '_' || *b == '-'))
            return 0;
    return 1;
}

static void stop_watches(ks_mirror_cache *c)
{
    for (size_t i = 0; i < c->nwatches; i++) {
        ks_bus_kv_watch_stop(c->watches[i].w);
        c->watches[i].w = NULL;
    }
    ks_bus_kv_close(c->kv);
    c->kv = NULL;
}

/* Open the bucket and start every watch; on failure nothing is left open. */
static ks_status open_and_watch(ks_mirror_cache *c)
{
    ks_bus_kv_cfg cfg = {.bucket = c->bucket, .history = 1};
    ks_status st;

    st = ks_bus_kv_open(c->bus, &cfg, 1, &c->kv);
    if (st)
        goto out;
    for (size_t i = 0; i < c->nwatches; i++) {
        c->watches[i].marker = 0;
        st = ks_bus_kv_watch(c->kv, c->watches[i].keys, on_watch_entry, &c->watches[i],
                             &c->watches[i].w);
        if (st)
            goto out;
    }
    pthread_mutex_lock(&c->mu);
    if (atomic_load(&c->state) == MC_STATE_OPENING)
        atomic_store(&c->state, MC_STATE_LOADING);
    pthread_mutex_unlock(&c->mu);
    st = KS_OK;
out:
    if (st)
        stop_watches(c);
    return st;
}

static void *retry_main(void *arg)
{
    ks_mirror_cache *c = arg;
    int wait_ms = MC_RETRY_MIN_MS;

    for (;;) {
        struct timespec dl;
        ks_status st;

        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += wait_ms / 1000;
        dl.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&c->mu);
        while (!c->stopping && pthread_cond_timedwait(&c->cond, &c->mu, &dl) != ETIMEDOUT)
            ;
        if (c->stopping) {
            pthread_mutex_unlock(&c->mu);
            return NULL;
        }
        pthread_mutex_unlock(&c->mu);
        /* While disconnected a JetStream call would only block for its
         * whole wait (5 s), delaying destroy; try once connected. */
        if (!ks_bus_is_connected(c->bus))
            continue;
        st = open_and_watch(c);
        if (st == KS_OK) {
            ks_info("mirror %s: bucket open, watching", c->bucket);
            return NULL;
        }
        ks_warn("mirror %s: cannot open or watch the bucket yet: %s; retrying", c->bucket,
                ks_status_last());
        wait_ms = wait_ms * 2 > MC_RETRY_MAX_MS ? MC_RETRY_MAX_MS : wait_ms * 2;
    }
}

static ks_status cache_new(const char *bucket, const char *const *resources,
                           ks_mirror_cache **out)
{
    char labels[KS_METRICS_LABELS_MAX] = "";
    pthread_rwlockattr_t rwa;
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;
    ks_mirror_cache *c;
    size_t n = 0;

    pthread_once(&mc_seed_once, mc_seed_init);
    if (bucket == NULL)
        bucket = KS_MIRROR_BUCKET;
    if (!valid_bucket(bucket))
        return KS_FAIL(KS_ERR_INVALID, "bad bucket name \"%.100s\"", bucket);
    if (resources) {
        for (; resources[n]; n++)
            if (!valid_resource(resources[n]))
                return KS_FAIL(KS_ERR_INVALID,
                               "bad resource \"%.200s\": want \"<group>/<resource>\"",
                               resources[n]);
        if (n == 0)
            return KS_FAIL(KS_ERR_INVALID, "empty resource list (use NULL for all)");
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "mirror cache");
    c->bucket = strdup(bucket);
    c->watches = calloc(n ? n : 1, sizeof(*c->watches));
    if (resources)
        c->filter = calloc(n + 1, sizeof(*c->filter));
    if (c->bucket == NULL || c->watches == NULL || (resources && c->filter == NULL))
        goto oom;
    for (size_t i = 0; i < n; i++) {
        int dup = 0;
        for (size_t j = 0; j < c->nfilter; j++)
            dup = dup || strcmp(c->filter[j], resources[i]) == 0;
        if (dup)
            continue;
        c->filter[c->nfilter] = strdup(resources[i]);
        if (c->filter[c->nfilter] == NULL)
            goto oom;
        c->nfilter++;
    }
    c->nwatches = resources ? c->nfilter : 1;
    for (size_t i = 0; i < c->nwatches; i++) {
        mc_watch *w = &c->watches[i];
        w->cache = c;
        if (resources) {
            char group[MC_RESOURCE_MAX];
            const char *slash = strchr(c->filter[i], '/');
            size_t gl = (size_t)(slash - c->filter[i]), kl;
            memcpy(group, c->filter[i], gl);
            group[gl] = '\0';
            if (ks_subject_escape_group(group, w->keys, sizeof(w->keys)) != KS_OK)
                goto toolong;
            kl = strlen(w->keys);
            if (kl + 1 >= sizeof(w->keys))
                goto toolong;
            w->keys[kl++] = '.';
            if (ks_subject_escape_token(slash + 1, w->keys + kl, sizeof(w->keys) - kl) != KS_OK)
                goto toolong;
            kl += strlen(w->keys + kl);
            if (kl + 3 >= sizeof(w->keys))
                goto toolong;
            memcpy(w->keys + kl, ".>", 3);
        } else {
            memcpy(w->keys, ">", 2);
        }
    }

    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_rwlockattr_init(&rwa);
    /* Writer-preferring: thousands of lookups a second must not starve the
     * watch thread. Hence the rule that visitors never re-enter the cache. */
    pthread_rwlockattr_setkind_np(&rwa, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&c->lock, &rwa);
    pthread_rwlockattr_destroy(&rwa);
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&c->cb_mu, &ma);
    pthread_mutexattr_destroy(&ma);

    if (ks_metrics_label_append(labels, sizeof(labels), "bucket", c->bucket) != KS_OK)
        labels[0] = '\0';
    c->m_decode_errors = ks_metrics_counter(
        "ks_mirror_decode_errors_total", "mirror values skipped because they could not be decoded",
        labels);
    c->m_lag = ks_metrics_histogram("ks_mirror_lag_seconds",
                                    "time from a watcher observing a change to the read side "
                                    "indexing it (ObjectEvent.observed_unix_ms)",
                                    labels, lag_bounds, sizeof(lag_bounds) / sizeof(lag_bounds[0]));
    c->m_synced = ks_metrics_gauge("ks_mirror_synced",
                                   "1 once the mirror's initial values are loaded", labels);
    *out = c;
    return KS_OK;
toolong:
    for (size_t i = 0; i < c->nfilter; i++)
        free(c->filter[i]);
    free(c->filter);
    free(c->watches);
    free(c->bucket);
    free(c);
    return KS_FAIL(KS_ERR_INVALID, "resource name too long for a key filter");
oom:
    for (size_t i = 0; c->filter && i < c->nfilter; i++)
        free(c->filter[i]);
    free(c->filter);
    free(c->watches);
    free(c->bucket);
    free(c);
    return KS_FAIL(KS_ERR_NOMEM, "mirror cache");
}

ks_status ks_mirror_cache_create_local(const char *bucket, const char *const *resources,
                                       ks_mirror_cache **out)
{
    ks_mirror_cache *c = NULL;
    ks_status st = cache_new(bucket, resources, &c);
    if (st)
        return st;
    atomic_store(&c->state, MC_STATE_LOADING);
    *out = c;
    return KS_OK;
}

ks_status ks_mirror_cache_create(ks_bus *bus, const char *bucket, const char *const *resources,
                                 ks_mirror_cache **out)
{
    ks_mirror_cache *c = NULL;
    ks_status st;

    if (bus == NULL)
        return KS_FAIL(KS_ERR_INVALID, "mirror cache without a bus");
    st = cache_new(bucket, resources, &c);
    if (st)
        return st;
    c->bus = bus;
    if (ks_bus_is_connected(bus))
        st = open_and_watch(c);
    else
        st = KS_FAIL(KS_ERR_UNAVAILABLE, "not connected to NATS");
    if (st == KS_ERR_INVALID || st == KS_ERR_NOMEM) {
        ks_mirror_cache_destroy(c);
        return st;
    }
    if (st) {
        ks_warn("mirror %s: cannot open or watch the bucket yet: %s; retrying in the background",
                c->bucket, ks_status_last());
        if (pthread_create(&c->retry_thread, NULL, retry_main, c) != 0) {
            ks_mirror_cache_destroy(c);
            return KS_FAIL(KS_ERR_INTERNAL, "cannot start the mirror retry thread");
        }
        c->retrying = 1;
    }
    *out = c;
    return KS_OK;
}

void ks_mirror_cache_destroy(ks_mirror_cache *cache)
{
    ks_mirror_cache *c = cache;
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
    if (c->retrying)
        pthread_join(c->retry_thread, NULL);
    stop_watches(c); /* joins the watch threads: no handler runs after this */

    map_clear(&c->resources, res_free);
    for (size_t i = 0; i < KS_MIRROR_MAX_HANDLERS; i++)
        free(c->handlers[i].resource);
    for (size_t i = 0; i < c->nfilter; i++)
        free(c->filter[i]);
    free(c->filter);
    free(c->watches);
    pthread_mutex_destroy(&c->cb_mu);
    pthread_rwlock_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    pthread_mutex_destroy(&c->mu);
    free(c->bucket);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* Readiness.                                                               */

int ks_mirror_cache_synced(ks_mirror_cache *cache)
{
    return cache != NULL && atomic_load(&cache->state) == MC_STATE_SYNCED;
}

ks_status ks_mirror_cache_wait_synced(ks_mirror_cache *cache, int timeout_ms)
{
    struct timespec dl;
    ks_status st = KS_OK;

    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&cache->mu);
    while (atomic_load(&cache->state) != MC_STATE_SYNCED && !cache->stopping) {
        if (pthread_cond_timedwait(&cache->cond, &cache->mu, &dl) == ETIMEDOUT) {
            if (atomic_load(&cache->state) != MC_STATE_SYNCED)
                st = KS_FAIL(KS_ERR_TIMEOUT, "mirror %s not loaded after %d ms", cache->bucket,
                             timeout_ms);
            break;
        }
    }
    if (st == KS_OK && atomic_load(&cache->state) != MC_STATE_SYNCED)
        st = KS_FAIL(KS_ERR_CLOSED, "mirror %s is shutting down", cache->bucket);
    pthread_mutex_unlock(&cache->mu);
    return st;
}

int ks_mirror_cache_ready(void *arg, char *why, size_t whycap)
{
    ks_mirror_cache *c = arg;
    int state = c ? atomic_load(&c->state) : MC_STATE_OPENING;

    if (state == MC_STATE_SYNCED)
        return 1;
    if (why && whycap > 0)
        snprintf(why, whycap, "mirror %s: %s", c ? c->bucket : "?",
                 state == MC_STATE_OPENING ? "bucket not open yet" : "initial values not loaded");
    return 0;
}

uint64_t ks_mirror_cache_generation(ks_mirror_cache *cache)
{
    return atomic_load(&cache->generation);
}

uint64_t ks_mirror_cache_decode_errors(ks_mirror_cache *cache)
{
    return atomic_load(&cache->decode_errors);
}

/* ------------------------------------------------------------------------ */
/* Lookups.                                                                 */

/* Under the read lock. */
static mc_res *res_find(ks_mirror_cache *c, const char *resource)
{
    return resource ? map_get(&c->resources, resource, strlen(resource)) : NULL;
}

ks_status ks_mirror_cache_get(ks_mirror_cache *cache, const char *resource, const char *ns,
                              const char *name, json_t **object, uint64_t *revision)
{
    ks_status st;
    mc_res *r;
    mc_map *nsmap;
    mc_obj *o;

    if (ns == NULL)
        ns = "";
    if (name == NULL)
        return KS_FAIL(KS_ERR_INVALID, "get without a name");
    pthread_rwlock_rdlock(&cache->lock);
    r = res_find(cache, resource);
    nsmap = r ? map_get(&r->by_ns, ns, strlen(ns)) : NULL;
    o = nsmap ? map_get(nsmap, name, strlen(name)) : NULL;
    if (o == NULL) {
        st = KS_FAIL(KS_ERR_NOT_FOUND, "%s %s/%s", resource ? resource : "(null)", ns, name);
    } else {
        *object = json_incref(o->object);
        if (revision)
            *revision = o->revision;
        st = KS_OK;
    }
    pthread_rwlock_unlock(&cache->lock);
    return st;
}

static int obj_cmp(const void *a, const void *b)
{
    const mc_obj *x = *(mc_obj *const *)a, *y = *(mc_obj *const *)b;
    int d = strcmp(x->ns, y->ns);
    return d ? d : strcmp(x->name, y->name);
}

/* Under the read lock: a sorted JSON array of objs (incref'd). */
static ks_status to_array(mc_obj **objs, size_t n, json_t **items)
{
    json_t *arr = json_array();
    if (arr == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "list");
    if (n > 1)
        qsort(objs, n, sizeof(*objs), obj_cmp);
    for (size_t i = 0; i < n; i++) {
        if (json_array_append(arr, objs[i]->object) != 0) {
            json_decref(arr);
            return KS_FAIL(KS_ERR_NOMEM, "list");
        }
    }
    *items = arr;
    return KS_OK;
}

static size_t collect_ns(mc_map *nsmap, mc_obj **objs, size_t at)
{
    MAP_FOREACH(nsmap, e)
        objs[at++] = e->val;
    return at;
}

ks_status ks_mirror_cache_list(ks_mirror_cache *cache, const char *resource, const char *ns,
                               json_t **items)
{
    mc_obj **objs = NULL;
    size_t n = 0, cap;
    ks_status st;
    mc_res *r;

    pthread_rwlock_rdlock(&cache->lock);
    r = res_find(cache, resource);
    if (r) {
        mc_map *nsmap = ns ? map_get(&r->by_ns, ns, strlen(ns)) : NULL;
        cap = ns ? (nsmap ? nsmap->n : 0) : r->count;
        objs = malloc((cap ? cap : 1) * sizeof(*objs));
        if (objs == NULL) {
            st = KS_FAIL(KS_ERR_NOMEM, "list");
            goto out;
        }
        if (nsmap) {
            n = collect_ns(nsmap, objs, 0);
        } else if (ns == NULL) {
            MAP_FOREACH(&r->by_ns, e)
                n = collect_ns(e->val, objs, n);
        }
    }
    st = to_array(objs, n, items);
out:
    pthread_rwlock_unlock(&cache->lock);
    free(objs);
    return st;
}

/* Under the read lock: the label set, or NULL. */
static mc_map *label_set(mc_res *r, const char *key, const char *value)
{
    char stack[512], *lk;
    size_t lklen;
    mc_map *set;

    if (r == NULL || key == NULL || value == NULL)
        return NULL;
    lk = join2(key, strlen(key), value, strlen(value), stack, sizeof(stack), &lklen);
    if (lk == NULL)
        return NULL;
    set = map_get(&r->by_label, lk, lklen);
    if (lk != stack)
        free(lk);
    return set;
}

ks_status ks_mirror_cache_list_by_label(ks_mirror_cache *cache, const char *resource,
                                        const char *key, const char *value, json_t **items)
{
    mc_obj **objs = NULL;
    size_t n = 0;
    ks_status st;
    mc_map *set;

    pthread_rwlock_rdlock(&cache->lock);
    set = label_set(res_find(cache, resource), key, value);
    if (set) {
        objs = malloc((set->n ? set->n : 1) * sizeof(*objs));
        if (objs == NULL) {
            st = KS_FAIL(KS_ERR_NOMEM, "list by label");
            goto out;
        }
        n = collect_ns(set, objs, 0);
    }
    st = to_array(objs, n, items);
out:
    pthread_rwlock_unlock(&cache->lock);
    free(objs);
    return st;
}

static int visit(mc_obj *o, ks_mirror_visit_fn fn, void *arg)
{
    ks_mirror_item it = {
        .resource = o->res->name,
        .namespace_ = o->ns,
        .name = o->name,
        .uid = o->uid,
        .resource_version = o->rv,
        .revision = o->revision,
        .observed_unix_ms = o->observed_ms,
        .object = o->object,
    };
    return fn(&it, arg);
}

size_t ks_mirror_cache_foreach(ks_mirror_cache *cache, const char *resource, const char *ns,
                               ks_mirror_visit_fn fn, void *arg)
{
    size_t n = 0;
    mc_res *r;

    pthread_rwlock_rdlock(&cache->lock);
    r = res_find(cache, resource);
    if (r == NULL)
        goto out;
    if (ns) {
        mc_map *nsmap = map_get(&r->by_ns, ns, strlen(ns));
        if (nsmap == NULL)
            goto out;
        MAP_FOREACH(nsmap, e) {
            n++;
            if (visit(e->val, fn, arg) != 0)
                goto out;
        }
        goto out;
    }
    MAP_FOREACH(&r->by_ns, nse) {
        MAP_FOREACH((mc_map *)nse->val, e) {
            n++;
            if (visit(e->val, fn, arg) != 0)
                goto out;
        }
    }
out:
    pthread_rwlock_unlock(&cache->lock);
    return n;
}

size_t ks_mirror_cache_foreach_by_label(ks_mirror_cache *cache, const char *resource,
                                        const char *key, const char *value,
                                        ks_mirror_visit_fn fn, void *arg)
{
    size_t n = 0;
    mc_map *set;

    pthread_rwlock_rdlock(&cache->lock);
    set = label_set(res_find(cache, resource), key, value);
    if (set == NULL)
        goto out;
    MAP_FOREACH(set, e) {
        n++;
        if (visit(e->val, fn, arg) != 0)
            goto out;
    }
out:
    pthread_rwlock_unlock(&cache->lock);
    return n;
}

size_t ks_mirror_cache_count(ks_mirror_cache *cache, const char *resource, const char *ns)
{
    size_t n = 0;

    pthread_rwlock_rdlock(&cache->lock);
    MAP_FOREACH(&cache->resources, re) {
        mc_res *r = re->val;
        if (resource && strcmp(r->name, resource) != 0)
            continue;
        if (ns == NULL) {
            n += r->count;
        } else {
            mc_map *nsmap = map_get(&r->by_ns, ns, strlen(ns));
            n += nsmap ? nsmap->n : 0;
        }
    }
    pthread_rwlock_unlock(&cache->lock);
    return n;
}

/* ------------------------------------------------------------------------ */
/* Change handlers.                                                         */

ks_status ks_mirror_cache_add_handler(ks_mirror_cache *cache, const char *resource,
                                      ks_mirror_change_fn fn, void *arg, int *id)
{
    ks_status st = KS_FAIL(KS_ERR_TOO_LARGE, "more than %d mirror handlers",
                           KS_MIRROR_MAX_HANDLERS);
    char *res = NULL;

    if (fn == NULL)
        return KS_FAIL(KS_ERR_INVALID, "handler without a function");
    if (resource && (res = strdup(resource)) == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "handler");
    pthread_mutex_lock(&cache->cb_mu);
    for (int i = 0; i < KS_MIRROR_MAX_HANDLERS; i++) {
        mc_handler *h = &cache->handlers[i];
        if (h->fn != NULL)
            continue;
        h->fn = fn;
        h->arg = arg;
        h->resource = res;
        res = NULL;
        h->since = cache->dispatch_seq;
        if (id)
            *id = i;
        st = KS_OK;
        /* The slot is taken first: fn may register handlers too. Then replay
         * what is indexed. With cb_mu held no change can happen (every
         * writer holds cb_mu), so the walk needs no read lock, and fn may call
         * the lookups: no writer can be queued on the rwlock. */
        MAP_FOREACH(&cache->resources, re) {
            mc_res *r = re->val;
            if (resource && strcmp(r->name, resource) != 0)
                continue;
            MAP_FOREACH(&r->by_ns, nse) {
                MAP_FOREACH((mc_map *)nse->val, oe) {
                    mc_obj *o = oe->val;
                    fn(KS_MIRROR_ADDED, r->name, o->ns, o->name, NULL, o->object, arg);
                }
            }
        }
        break;
    }
    pthread_mutex_unlock(&cache->cb_mu);
    free(res);
    return st;
}

void ks_mirror_cache_remove_handler(ks_mirror_cache *cache, int id)
{
    char *res = NULL;
    if (id < 0 || id >= KS_MIRROR_MAX_HANDLERS)
        return;
    pthread_mutex_lock(&cache->cb_mu);
    res = cache->handlers[id].resource;
    cache->handlers[id].fn = NULL;
    cache->handlers[id].arg = NULL;
    cache->handlers[id].resource = NULL;
    pthread_mutex_unlock(&cache->cb_mu);
    free(res);
}
