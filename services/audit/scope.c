/* scope.c: the caller's visible namespaces and workspaces (scope.h). */
#include "scope.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "kscore/v1/iam.pb-c.h"
#include "log.h"

#define NBUCKETS 4096
#define AUTHZ_SUBJECT "ks.iam.authz"
#define AUTHZ_WINDOW 512          /* questions in flight at once */
#define AUTHZ_MAX_REPLY (64u * 1024u)

typedef struct entry {
    struct entry *next;
    uint64_t hash;
    int64_t expires_ms;
    int allowed;
    size_t klen;
    char key[];
} entry;

struct aud_scope {
    aud_decide_fn fn;
    void *arg;
    int64_t ttl_ms;
    pthread_mutex_t mu;
    entry *buckets[NBUCKETS];
    size_t count;
    atomic_ullong hits, asked;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

ks_status aud_scope_create(aud_decide_fn fn, void *arg, int64_t ttl_ms, aud_scope **out)
{
    aud_scope *sc;

    if (fn == NULL || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "aud_scope_create: NULL argument");
    sc = calloc(1, sizeof(*sc));
    if (sc == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "scope");
    sc->fn = fn;
    sc->arg = arg;
    sc->ttl_ms = ttl_ms;
    pthread_mutex_init(&sc->mu, NULL);
    *out = sc;
    return KS_OK;
}

static void flush_locked(aud_scope *sc)
{
    for (size_t i = 0; i < NBUCKETS; i++) {
        entry *e = sc->buckets[i];
        while (e != NULL) {
            entry *next = e->next;
            free(e);
            e = next;
        }
        sc->buckets[i] = NULL;
    }
    sc->count = 0;
}

void aud_scope_destroy(aud_scope *sc)
{
    if (sc == NULL)
        return;
    flush_locked(sc);
    pthread_mutex_destroy(&sc->mu);
    free(sc);
}

uint64_t aud_scope_cache_hits(aud_scope *sc)
{
    return atomic_load(&sc->hits);
}

uint64_t aud_scope_asked(aud_scope *sc)
{
    return atomic_load(&sc->asked);
}

/* The cache key: user, groups (a decision depends on both), scope, name;
 * fields separated by bytes that never occur in them. malloc'd. */
static char *make_key(const Kscore__V1__UserInfo *u, const aud_authz_ask *a, size_t *len)
{
    const char *user = u && u->username ? u->username : "";
    const char *name = a->name ? a->name : "";
    size_t n = strlen(user) + strlen(name) + 8;
    char *k, *p;

    for (size_t i = 0; u != NULL && i < u->n_groups; i++)
        n += strlen(u->groups[i] ? u->groups[i] : "") + 1;
    k = malloc(n);
    if (k == NULL)
        return NULL;
    p = k;
    memcpy(p, user, strlen(user));
    p += strlen(user);
    *p++ = '\x1f';
    for (size_t i = 0; u != NULL && i < u->n_groups; i++) {
        const char *g = u->groups[i] ? u->groups[i] : "";
        memcpy(p, g, strlen(g));
        p += strlen(g);
        *p++ = '\x1e';
    }
    *p++ = '\x1f';
    *p++ = (char)('0' + a->scope);
    *p++ = '\x1f';
    memcpy(p, name, strlen(name));
    p += strlen(name);
    *len = (size_t)(p - k);
    return k;
}

static uint64_t fnv(const char *k, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 1099511628211ULL;
    return h;
}

/* 1/0: cached answer; -1: not cached. */
static int cache_get(aud_scope *sc, const char *k, size_t n, uint64_t h, int64_t now)
{
    int v = -1;
    entry **pp;

    pthread_mutex_lock(&sc->mu);
    for (pp = &sc->buckets[h % NBUCKETS]; *pp != NULL; pp = &(*pp)->next) {
        entry *e = *pp;
        if (e->hash != h || e->klen != n || memcmp(e->key, k, n) != 0)
            continue;
        if (e->expires_ms > now) {
            v = e->allowed;
        } else {
            *pp = e->next;
            free(e);
            sc->count--;
        }
        break;
    }
    pthread_mutex_unlock(&sc->mu);
    return v;
}

static void cache_put(aud_scope *sc, const char *k, size_t n, uint64_t h, int allowed,
                      int64_t expires)
{
    entry *e = malloc(sizeof(*e) + n), **pp;

    if (e == NULL)
        return;    /* not caching is always correct */
    e->hash = h;
    e->klen = n;
    e->allowed = allowed;
    e->expires_ms = expires;
    memcpy(e->key, k, n);
    pthread_mutex_lock(&sc->mu);
    for (pp = &sc->buckets[h % NBUCKETS]; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->hash == h && (*pp)->klen == n && memcmp((*pp)->key, k, n) == 0) {
            entry *old = *pp;
            *pp = old->next;
            free(old);
            sc->count--;
            break;
        }
    if (sc->count >= AUD_SCOPE_CACHE_MAX)
        flush_locked(sc);
    e->next = sc->buckets[h % NBUCKETS];
    sc->buckets[h % NBUCKETS] = e;
    sc->count++;
    pthread_mutex_unlock(&sc->mu);
}

/* Answer asks[0..n) from the cache, asking the decider for the rest. */
static ks_status decide(aud_scope *sc, const Kscore__V1__UserInfo *user, const aud_authz_ask *asks,
                        size_t n, int *allowed)
{
    char **keys = calloc(n ? n : 1, sizeof(*keys));
    size_t *klens = calloc(n ? n : 1, sizeof(*klens));
    size_t *miss = calloc(n ? n : 1, sizeof(*miss));
    aud_authz_ask *mask = calloc(n ? n : 1, sizeof(*mask));
    int *mallowed = calloc(n ? n : 1, sizeof(*mallowed));
    int64_t *mttl = calloc(n ? n : 1, sizeof(*mttl));
    int64_t now = mono_ms();
    size_t nmiss = 0;
    ks_status st = KS_OK;

    if (keys == NULL || klens == NULL || miss == NULL || mask == NULL || mallowed == NULL ||
        mttl == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "scope");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        int v = -1;
        if (sc->ttl_ms > 0) {
            keys[i] = make_key(user, &asks[i], &klens[i]);
            if (keys[i] == NULL) {
                st = KS_FAIL(KS_ERR_NOMEM, "scope");
                goto out;
            }
            v = cache_get(sc, keys[i], klens[i], fnv(keys[i], klens[i]), now);
        }
        if (v >= 0) {
            allowed[i] = v;
            atomic_fetch_add(&sc->hits, 1);
        } else {
            mask[nmiss] = asks[i];
            miss[nmiss++] = i;
        }
    }
    if (nmiss == 0)
        goto out;
    atomic_fetch_add(&sc->asked, nmiss);
    if ((st = sc->fn(sc->arg, user, mask, nmiss, mallowed, mttl)))
        goto out;
    now = mono_ms();
    for (size_t j = 0; j < nmiss; j++) {
        size_t i = miss[j];
        int64_t ttl = sc->ttl_ms;
        allowed[i] = mallowed[j] != 0;
        if (mttl[j] > 0 && mttl[j] < ttl)
            ttl = mttl[j];
        if (keys[i] != NULL && ttl > 0)
            cache_put(sc, keys[i], klens[i], fnv(keys[i], klens[i]), allowed[i], now + ttl);
    }
out:
    for (size_t i = 0; keys != NULL && i < n; i++)
        free(keys[i]);
    free(keys);
    free(klens);
    free(miss);
    free(mask);
    free(mallowed);
    free(mttl);
    return st;
}

static int ascii_only(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return 0;
    return 1;
}

/* May candidate `name` match the query's filter and search on this field?
 * A filter must contain it; a search must find a term in it (ASCII
 * case-insensitively; a non-ASCII term keeps every candidate). */
static int wanted(const char *name, const aud_list *filter, const aud_list *search)
{
    int ok;

    if (filter->n > 0) {
        ok = 0;
        for (size_t i = 0; i < filter->n && !ok; i++)
            ok = strcmp(name, filter->v[i]) == 0;
        if (!ok)
            return 0;
    }
    if (search->n > 0) {
        ok = 0;
        for (size_t i = 0; i < search->n && !ok; i++)
            ok = !ascii_only(search->v[i]) || strcasestr(name, search->v[i]) != NULL;
        if (!ok)
            return 0;
    }
    return 1;
}

ks_status aud_scope_resolve(aud_scope *sc, const Kscore__V1__UserInfo *user, const aud_query *q,
                            const aud_scope_entry *namespaces, size_t nns,
                            const aud_scope_entry *workspaces, size_t nws, aud_visibility *out)
{
    aud_authz_ask cluster = {AUD_AUTHZ_CLUSTER, NULL};
    aud_visibility v = {0};
    aud_scope_entry *ns = NULL, *ws = NULL;
    aud_authz_ask *asks = NULL;
    int *allowed = NULL, admin = 0;
    size_t na = 0, nn = 0, nw = 0;
    /* a namespace filter or search leaves out every event without a
     * namespace, so then no workspace needs asking */
    int ns_narrowed = q->filter[AUD_F_NAMESPACE].n > 0 || q->search[AUD_S_NAMESPACE].n > 0;
    ks_status st;

    if ((st = decide(sc, user, &cluster, 1, &admin)))
        goto out;
    if (admin) {
        v.all = 1;
        goto done;
    }
    asks = calloc(nns + nws + 1, sizeof(*asks));
    allowed = calloc(nns + nws + 1, sizeof(*allowed));
    ns = calloc(nns + 1, sizeof(*ns));
    ws = calloc(nws + 1, sizeof(*ws));
    if (asks == NULL || allowed == NULL || ns == NULL || ws == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "scope");
        goto out;
    }
    for (size_t i = 0; i < nns; i++)
        if (wanted(namespaces[i].name, &q->filter[AUD_F_NAMESPACE], &q->search[AUD_S_NAMESPACE]))
            asks[na++] = (aud_authz_ask){AUD_AUTHZ_NAMESPACE, namespaces[i].name};
    for (size_t i = 0; i < nws && !ns_narrowed; i++)
        if (wanted(workspaces[i].name, &q->filter[AUD_F_WORKSPACE], &q->search[AUD_S_WORKSPACE]))
            asks[na++] = (aud_authz_ask){AUD_AUTHZ_WORKSPACE, workspaces[i].name};
    if (na > 0 && (st = decide(sc, user, asks, na, allowed)))
        goto out;
    /* asks[] were taken in candidate order: walk both lists again */
    na = 0;
    for (size_t i = 0; i < nns; i++)
        if (wanted(namespaces[i].name, &q->filter[AUD_F_NAMESPACE], &q->search[AUD_S_NAMESPACE]) &&
            allowed[na++])
            ns[nn++] = namespaces[i];
    for (size_t i = 0; i < nws && !ns_narrowed; i++)
        if (wanted(workspaces[i].name, &q->filter[AUD_F_WORKSPACE], &q->search[AUD_S_WORKSPACE]) &&
            allowed[na++])
            ws[nw++] = workspaces[i];
    v.ns = ns;
    v.nns = nn;
    v.ws = ws;
    v.nws = nw;
    ns = ws = NULL;
done:
    *out = v;
    st = KS_OK;
out:
    free(asks);
    free(allowed);
    free(ns);
    free(ws);
    return st;
}

void aud_visibility_free(aud_visibility *v)
{
    if (v == NULL)
        return;
    free((void *)v->ns);
    free((void *)v->ws);
    memset(v, 0, sizeof(*v));
}

/* ---- the decider that asks iam ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    size_t remaining;
    ks_status first_error;
    int *allowed;
    int64_t *ttl;
} batch;

typedef struct {
    batch *b;
    size_t i;
} slot;

static void on_reply(ks_status st, ks_bus_msg *reply, void *arg)
{
    slot *s = arg;
    batch *b = s->b;
    Kscore__V1__AuthzResponse *r = NULL;
    ks_status err = st;

    if (st == KS_OK) {
        err = ks_codec_unpack(&kscore__v1__authz_response__descriptor, ks_bus_msg_data(reply),
                              ks_bus_msg_len(reply), AUTHZ_MAX_REPLY, (ProtobufCMessage **)&r);
        if (err == KS_OK) {
            b->allowed[s->i] = r->decision == KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_ALLOW;
            b->ttl[s->i] = r->cache_ttl_ms;
        } else {
            err = KS_FAIL(KS_ERR_PROTOCOL, "iam answered something that is not an AuthzResponse");
        }
        ks_codec_free(r ? &r->base : NULL);
        ks_bus_msg_destroy(reply);
    }
    pthread_mutex_lock(&b->mu);
    if (err != KS_OK && b->first_error == KS_OK)
        b->first_error = err;
    b->remaining--;
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->mu);
}

/* Pack the AuthzRequest of one question. */
static ks_status pack_ask(const Kscore__V1__UserInfo *user, const aud_authz_ask *a, uint8_t **buf,
                          size_t *len)
{
    static const char *const scopes[] = {"Cluster", "Workspace", "Namespace"};
    Kscore__V1__AuthzRequest req = KSCORE__V1__AUTHZ_REQUEST__INIT;
    Kscore__V1__RequestInfo info = KSCORE__V1__REQUEST_INFO__INIT;
    Kscore__V1__UserInfo anon = KSCORE__V1__USER_INFO__INIT;
    char path[600];

    info.is_resource_request = 1;
    info.is_kube_request = 1;
    info.verb = "list";
    info.api_prefix = "api";
    info.api_group = "";
    info.api_version = "v1";
    info.resource = "events";
    info.resource_scope = (char *)scopes[a->scope];
    if (a->scope == AUD_AUTHZ_NAMESPACE) {
        info.namespace_ = (char *)a->name;
        snprintf(path, sizeof(path), "/api/v1/namespaces/%.253s/events", a->name);
    } else if (a->scope == AUD_AUTHZ_WORKSPACE) {
        info.workspace = (char *)a->name;
        snprintf(path, sizeof(path), "/kapis/tenant.kubesphere.io/v1alpha2/workspaces/%.253s/events",
                 a->name);
    } else {
        snprintf(path, sizeof(path), "/api/v1/events");
    }
    info.path = path;
    anon.username = "system:anonymous";
    req.user = (Kscore__V1__UserInfo *)(user != NULL ? user : &anon);
    req.info = &info;
    return ks_codec_pack(&req.base, buf, len);
}

ks_status aud_decide_nats(void *arg, const Kscore__V1__UserInfo *user, const aud_authz_ask *asks,
                          size_t n, int *allowed, int64_t *ttl_ms)
{
    aud_nats_decider *d = arg;
    batch b = {.allowed = allowed, .ttl = ttl_ms};
    slot *slots = calloc(n ? n : 1, sizeof(*slots));
    ks_status st = KS_OK;

    if (slots == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "authz");
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cond, NULL);
    for (size_t start = 0; start < n && st == KS_OK; start += AUTHZ_WINDOW) {
        size_t end = start + AUTHZ_WINDOW < n ? start + AUTHZ_WINDOW : n;
        for (size_t i = start; i < end; i++) {
            uint8_t *buf = NULL;
            size_t len = 0;
            allowed[i] = 0;
            ttl_ms[i] = 0;
            slots[i] = (slot){&b, i};
            if ((st = pack_ask(user, &asks[i], &buf, &len)))
                break;
            pthread_mutex_lock(&b.mu);
            b.remaining++;
            pthread_mutex_unlock(&b.mu);
            st = ks_bus_request_async(d->bus, AUTHZ_SUBJECT, buf, len, d->timeout_ms, on_reply,
                                      &slots[i]);
            free(buf);
            if (st) {
                pthread_mutex_lock(&b.mu);
                b.remaining--;
                pthread_mutex_unlock(&b.mu);
                break;
            }
        }
        /* every callback comes, at the latest at its deadline */
        pthread_mutex_lock(&b.mu);
        while (b.remaining > 0)
            pthread_cond_wait(&b.cond, &b.mu);
        if (st == KS_OK)
            st = b.first_error;
        pthread_mutex_unlock(&b.mu);
    }
    pthread_mutex_destroy(&b.mu);
    pthread_cond_destroy(&b.cond);
    free(slots);
    if (st == KS_ERR_NO_RESPONDERS || st == KS_ERR_CLOSED)
        return KS_FAIL(KS_ERR_UNAVAILABLE, "the authorization service (iam) is not available");
    if (st == KS_ERR_TIMEOUT)
        return KS_FAIL(KS_ERR_TIMEOUT, "the authorization service (iam) did not answer in time");
    return st;
}
