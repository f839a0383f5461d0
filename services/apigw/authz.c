/* authz.c: the gateway's authorization stage (gw.h; docs/gateway-auth.md).
 *
 *   1. a public path (/oauth/..., /.well-known/..., /version, /healthz,
 *      /livez, /readyz) goes on at once;
 *   2. the decision cache (lib/ttlcache): the key is every attribute iam's
 *      decision reads (user, groups, verb, API group, resource,
 *      subresource, name, namespace, workspace, cluster, scope; the path of
 *      a non-resource request), the TTL is the one iam gives
 *      (AuthzResponse.cache_ttl_ms, capped);
 *   3. a miss asks ks.iam.authz without blocking: the request is suspended
 *      and continues from the reply.
 * ALLOW goes on; DENY (and NO_OPINION) answers 403 with Kubernetes' message,
 * which kubectl prints; no responders answers 503, no answer in time 504.
 *
 * Staleness. The cache is emptied (ks_ttlcache_clear, O(1)) the moment the
 * gateway's mirror reports a change that can alter a decision: users (their
 * groups or state), roles, bindings, role templates, groups, workspaces,
 * namespaces (their workspace label). An answer asked for before such a
 * change is never stored (the cache's epochs). iam applies the same change
 * from its own watch of the bucket, possibly a little later than the
 * gateway; so an answer asked for within AUTHZ_SETTLE_MS of the last change
 * is used but not stored. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "codec.h"
#include "gw.h"
#include "kscore/v1/iam.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "mirror_cache.h"
#include "requestinfo.h"
#include "ttlcache.h"

#define AUTHZ_SUBJECT "ks.iam.authz"
#define AUTHZ_CACHE_CAPACITY 100000
#define AUTHZ_CACHE_SHARDS 16
#define AUTHZ_KEY_MAX 4096             /* bytes of a cache key; longer: not cached */
#define AUTHZ_TTL_MAX_MS 10000         /* cap on iam's cache_ttl_ms */
#define AUTHZ_SETTLE_MS 250            /* after a policy change, answers are not cached */
#define AUTHZ_MAX_REPLY (64u * 1024u)

#define DECISION_ALLOW 'A'
#define DECISION_DENY 'D'

static ks_metric *m_hit, *m_miss, *m_clear, *m_public, *m_allow, *m_deny;
static ks_metric *m_err_unavailable, *m_err_timeout, *m_err_reply, *m_rtt;

typedef struct {
    _Atomic int refs;              /* 1 for the gateway + 1 per request at iam */
    ks_ttlcache *cache;            /* NULL: no mirror, so no way to know when to empty it */
    ks_mirror_cache *mirror;
    int handler_id;
    int has_handler;
    _Atomic int64_t last_change_ms;
    ks_bus *bus;
    int timeout_ms;
} gw_authz;

/* A request waiting on ks.iam.authz. The reply callback touches only this,
 * r, the cache (kept alive by z->refs) and the static metric handles: never
 * the mirror, which may be gone by then. */
typedef struct {
    gw_authz *z;
    gw_request *r;
    uint64_t epoch;                /* of the cache when the question left */
    struct timespec t0;
    size_t klen;                   /* 0: the answer is not to be cached */
    unsigned char key[];
} authz_wait;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double since_s(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static void authz_release(gw_authz *z)
{
    if (z == NULL || atomic_fetch_sub(&z->refs, 1) != 1)
        return;
    ks_ttlcache_destroy(z->cache);
    free(z);
}

/* ---- public paths ---- */

/* path begins with prefix as whole segments: "/oauth" matches "/oauth" and
 * "/oauth/token", not "/oauthx". */
static int under(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(path, prefix, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

int gw_auth_path_is_public(const char *path)
{
    static const char *const exact[] = {"/version", "/healthz", "/livez", "/readyz"};

    if (path == NULL || path[0] != '/')
        return 0;
    /* Never public when a segment is empty, "." or "..": the request info
     * stage refuses such paths, this is the second lock on the door. */
    for (const char *s = path + 1;; ) {
        const char *e = strchr(s, '/');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if ((n == 0 && e != NULL) || (n == 1 && s[0] == '.') ||
            (n == 2 && s[0] == '.' && s[1] == '.'))
            return 0;
        if (e == NULL)
            break;
        s = e + 1;
    }
    for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++)
        if (strcmp(path, exact[i]) == 0)
            return 1;
    return under(path, "/oauth") || under(path, "/.well-known");
}

/* ---- the cache key ---- */

typedef struct {
    unsigned char *buf;
    size_t len, cap;
    int overflow;
} keybuf;

/* One field: 2 bytes of length, then the bytes. Unambiguous for any bytes. */
static void key_add(keybuf *k, const char *s)
{
    size_t n = s ? strlen(s) : 0;

    if (k->overflow || n > 0xffff || k->len + 2 + n > k->cap) {
        k->overflow = 1;
        return;
    }
    k->buf[k->len++] = (unsigned char)(n >> 8);
    k->buf[k->len++] = (unsigned char)(n & 0xff);
    memcpy(k->buf + k->len, s, n);
    k->len += n;
}

/* The key of r's decision into out; returns its length, 0 when too long. */
static size_t build_key(gw_request *r, const ks_requestinfo *ri, unsigned char *out, size_t cap)
{
    keybuf k = {out, 0, cap, 0};
    char count[16];

    key_add(&k, r->username);
    snprintf(count, sizeof(count), "%zu", r->ngroups);
    key_add(&k, count);
    for (size_t i = 0; i < r->ngroups; i++)
        key_add(&k, r->groups[i]);
    key_add(&k, ri->is_resource_request ? "R" : "N");
    key_add(&k, ri->verb);
    if (ri->is_resource_request) {
        key_add(&k, ri->api_group);
        key_add(&k, ri->resource);
        key_add(&k, ri->subresource);
        key_add(&k, ri->name);
        key_add(&k, ri->namespace);
        key_add(&k, ri->workspace);
        key_add(&k, ri->cluster);
        key_add(&k, ri->resource_scope);
    } else {
        key_add(&k, ri->path);
    }
    return k.overflow ? 0 : k.len;
}

/* ---- answers ---- */

/* 403 in Kubernetes' words (apiserver's forbiddenMessage and
 * apierrors.NewForbidden), which kubectl prints as is:
 *   users.iam.kubesphere.io "alice" is forbidden: User "bob" cannot get
 *   resource "users" in API group "iam.kubesphere.io" at the cluster scope
 * with "in the namespace ..." or, a KubeSphere scope, "in the workspace ...". */
static void forbid(gw_request *r, const char *why)
{
    const ks_requestinfo *ri = r->info;
    char target[600], where[400], res[300];
    const char *verb = ri->verb[0] ? ri->verb : "access";

    ks_metric_inc(m_deny);
    if (!ri->is_resource_request) {
        gw_respond_status(r, 403, "Forbidden", "forbidden: User \"%s\" cannot %s path \"%s\"%s%s",
                          r->username, verb, ri->path, why ? ": " : "", why ? why : "");
        return;
    }
    if (ri->subresource[0] != '\0')
        snprintf(res, sizeof(res), "%s/%s", ri->resource, ri->subresource);
    else
        snprintf(res, sizeof(res), "%s", ri->resource);
    if (ri->api_group[0] != '\0')
        snprintf(target, sizeof(target), "%s.%s", ri->resource, ri->api_group);
    else
        snprintf(target, sizeof(target), "%s", ri->resource);
    if (ri->namespace[0] != '\0')
        snprintf(where, sizeof(where), "in the namespace \"%s\"", ri->namespace);
    else if (ri->workspace[0] != '\0')
        snprintf(where, sizeof(where), "in the workspace \"%s\"", ri->workspace);
    else
        snprintf(where, sizeof(where), "at the cluster scope");
    if (ri->name[0] != '\0')
        gw_respond_status(r, 403, "Forbidden",
                          "%s \"%s\" is forbidden: User \"%s\" cannot %s resource \"%s\" in API "
                          "group \"%s\" %s%s%s",
                          target, ri->name, r->username, verb, res, ri->api_group, where,
                          why ? ": " : "", why ? why : "");
    else
        gw_respond_status(r, 403, "Forbidden",
                          "%s is forbidden: User \"%s\" cannot %s resource \"%s\" in API group "
                          "\"%s\" %s%s%s",
                          target, r->username, verb, res, ri->api_group, where, why ? ": " : "",
                          why ? why : "");
}

static void allow(gw_request *r)
{
    ks_metric_inc(m_allow);
    gw_next(r);
}

static int abandoned(gw_request *r)
{
    int gone;

    pthread_mutex_lock(&r->mu);
    gone = r->abandoned;
    pthread_mutex_unlock(&r->mu);
    return gone;
}

static void on_authz_reply(ks_status st, ks_bus_msg *reply, void *arg)
{
    authz_wait *w = arg;
    gw_authz *z = w->z;
    gw_request *r = w->r;
    Kscore__V1__AuthzResponse *resp = NULL;
    int allowed;
    int64_t ttl;
    char why[512];

    ks_metric_observe(m_rtt, since_s(&w->t0));
    if (st == KS_OK) {
        st = ks_codec_unpack(&kscore__v1__authz_response__descriptor, ks_bus_msg_data(reply),
                             ks_bus_msg_len(reply), AUTHZ_MAX_REPLY,
                             (ProtobufCMessage **)&resp);
        ks_bus_msg_destroy(reply);
        if (st) {
            ks_metric_inc(m_err_reply);
            ks_warn("authz: request %s: unreadable answer from %s: %s", r->request_id,
                    AUTHZ_SUBJECT, ks_status_last());
            st = KS_ERR_PROTOCOL;
        }
    }
    if (st != KS_OK) {
        authz_release(z);
        free(w);
        if (abandoned(r)) {
            gw_respond_status(r, 499, "ClientClosedRequest", "the client closed the connection");
        } else if (st == KS_ERR_TIMEOUT) {
            ks_metric_inc(m_err_timeout);
            gw_respond_status(r, 504, "Timeout",
                              "the authorization service (iam) did not answer in time");
        } else if (st == KS_ERR_PROTOCOL) {
            gw_respond_status(r, 502, "InternalError",
                              "the authorization service (iam) answered something unreadable");
        } else {
            ks_metric_inc(m_err_unavailable);
            gw_respond_status(r, 503, "ServiceUnavailable",
                              "the authorization service (iam) is not available");
        }
        return;
    }
    allowed = resp->decision == KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_ALLOW;
    ttl = resp->cache_ttl_ms > AUTHZ_TTL_MAX_MS ? AUTHZ_TTL_MAX_MS : resp->cache_ttl_ms;
    /* cache_ttl_ms 0 means "not a decision on the policy" (iam still
     * loading, a bad request): then iam's reason is worth showing. */
    why[0] = '\0';
    if (!allowed && ttl <= 0 && resp->reason != NULL && resp->reason[0] != '\0')
        snprintf(why, sizeof(why), "%s", resp->reason);
    else if (!allowed && resp->reason != NULL)
        ks_debug("authz: request %s denied: %s", r->request_id, resp->reason);
    ks_codec_free(&resp->base);
    if (w->klen > 0 && ttl > 0) {
        unsigned char v = allowed ? DECISION_ALLOW : DECISION_DENY;
        (void)ks_ttlcache_put(z->cache, w->key, w->klen, &v, 1, ttl, w->epoch);
    }
    authz_release(z);
    free(w);
    if (abandoned(r)) {
        gw_respond_status(r, 499, "ClientClosedRequest", "the client closed the connection");
        return;
    }
    if (allowed)
        allow(r);
    else
        forbid(r, why[0] ? why : NULL);
}

/* The NATS deadline of a request: the service's request timeout, or less
 * when the request's own deadline is nearer. */
static int nats_timeout(gw_request *r, int configured)
{
    int64_t left = gw_ms_left(r);
    return left > 0 && left < configured ? (int)left : configured;
}

static void ask_iam(gw_authz *z, gw_request *r, const ks_requestinfo *ri,
                    const unsigned char *key, size_t klen)
{
    Kscore__V1__AuthzRequest req = KSCORE__V1__AUTHZ_REQUEST__INIT;
    Kscore__V1__UserInfo user = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__RequestInfo info;
    char *groups[GW_MAX_GROUPS];
    uint8_t *buf = NULL;
    size_t len = 0;
    authz_wait *w;
    ks_status st;

    for (size_t i = 0; i < r->ngroups && i < GW_MAX_GROUPS; i++)
        groups[i] = r->groups[i];
    user.username = r->username;
    user.uid = r->uid;
    user.groups = groups;
    user.n_groups = r->ngroups;
    ks_requestinfo_to_proto(ri, &info);
    req.user = &user;
    req.info = &info;
    w = malloc(sizeof(*w) + klen);
    if (w == NULL || ks_codec_pack(&req.base, &buf, &len) != KS_OK) {
        free(w);
        gw_respond_status(r, 500, "InternalError", "cannot build the authorization request");
        return;
    }
    w->z = z;
    w->r = r;
    /* The epoch before the question: a change that lands while it is in
     * flight makes the answer unstorable. Right after a change (iam may not
     * have applied it yet), or while the mirror is loading, the answer is
     * used but not stored. */
    w->epoch = z->cache != NULL ? ks_ttlcache_epoch(z->cache) : 0;
    w->klen = z->cache != NULL && ks_mirror_cache_synced(z->mirror) &&
                      mono_ms() - atomic_load(&z->last_change_ms) >= AUTHZ_SETTLE_MS
                  ? klen
                  : 0;
    if (w->klen > 0)
        memcpy(w->key, key, klen);
    clock_gettime(CLOCK_MONOTONIC, &w->t0);
    atomic_fetch_add(&z->refs, 1);
    st = ks_bus_request_async(z->bus, AUTHZ_SUBJECT, buf, len, nats_timeout(r, z->timeout_ms),
                              on_authz_reply, w);
    free(buf);
    if (st != KS_OK) {
        authz_release(z);
        free(w);
        ks_metric_inc(m_err_unavailable);
        gw_respond_status(r, 503, "ServiceUnavailable",
                          "the authorization service (iam) is not available");
    }
}

/* ---- the stage ---- */

void gw_stage_authz(gw_request *r)
{
    gw_authz *z = r->g->authz;
    const ks_requestinfo *ri = r->info;
    unsigned char key[AUTHZ_KEY_MAX];
    size_t klen = 0;
    unsigned char v;

    if (gw_auth_path_is_public(ri != NULL ? ri->path : r->url)) {
        ks_metric_inc(m_public);
        gw_next(r);
        return;
    }
    if (ri == NULL) {
        gw_respond_status(r, 500, "InternalError", "the request was not parsed");
        return;
    }
    if (z->cache != NULL) {
        klen = build_key(r, ri, key, sizeof(key));
        if (klen > 0 && ks_ttlcache_get(z->cache, key, klen, &v, 1, NULL)) {
            ks_metric_inc(m_hit);
            if (v == DECISION_ALLOW)
                allow(r);
            else
                forbid(r, NULL);
            return;
        }
        ks_metric_inc(m_miss);
    }
    ask_iam(z, r, ri, key, klen);
}

/* ---- emptying the cache ---- */

static const char *str_at(const json_t *o, const char *a, const char *b)
{
    return json_string_value(json_object_get(json_object_get(o, a), b));
}

static int same_json(const json_t *a, const json_t *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return json_equal((json_t *)a, (json_t *)b);
}

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static const json_t *labels_of(const json_t *o)
{
    return json_object_get(json_object_get(o, "metadata"), "labels");
}

/* 1 when a change of this resource can alter a decision. */
static int relevant(ks_mirror_change type, const char *resource, const json_t *old_obj,
                    const json_t *new_obj)
{
    if (strncmp(resource, "iam.kubesphere.io/", 18) == 0) {
        const char *res = resource + 18;
        if (strcmp(res, "loginrecords") == 0)
            return 0; /* one per login: never a policy input */
        if (strcmp(res, "users") == 0 && type == KS_MIRROR_MODIFIED)
            /* Logins update the status; only the groups, the state and the
             * labels matter (spec holds the groups; the rest is cheap to
             * over-report). */
            return !same_json(json_object_get(old_obj, "spec"), json_object_get(new_obj, "spec")) ||
                   !same_str(str_at(old_obj, "status", "state"),
                             str_at(new_obj, "status", "state")) ||
                   !same_json(labels_of(old_obj), labels_of(new_obj));
        return 1; /* roles, bindings, role templates, groups, group bindings */
    }
    if (strcmp(resource, "tenant.kubesphere.io/workspaces") == 0 ||
        strcmp(resource, "tenant.kubesphere.io/workspacetemplates") == 0 ||
        strncmp(resource, "rbac.authorization.k8s.io/", 26) == 0)
        return 1;
    if (strcmp(resource, "/namespaces") == 0)
        /* The workspace label places a namespace in a workspace. */
        return type != KS_MIRROR_MODIFIED || !same_json(labels_of(old_obj), labels_of(new_obj));
    return 0;
}

static void on_mirror_change(ks_mirror_change type, const char *resource, const char *ns,
                             const char *name, const json_t *old_obj, const json_t *new_obj,
                             void *arg)
{
    gw_authz *z = arg;

    if (!relevant(type, resource, old_obj, new_obj))
        return;
    atomic_store(&z->last_change_ms, mono_ms());
    ks_ttlcache_clear(z->cache);
    ks_metric_inc(m_clear);
}

/* ---- start and stop ---- */

static void register_metrics(void)
{
    static const double rtt_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                        0.025,  0.05,    0.1,    0.25,  0.5,    1,     5};

    m_hit = ks_metrics_counter("ks_gateway_authz_cache_hits_total",
                               "authorization decisions answered by the cache", NULL);
    m_miss = ks_metrics_counter("ks_gateway_authz_cache_misses_total",
                                "authorization decisions asked of iam (cache misses)", NULL);
    m_clear = ks_metrics_counter("ks_gateway_authz_cache_clears_total",
                                 "times the decision cache was emptied by a policy change", NULL);
    m_public = ks_metrics_counter("ks_gateway_authz_decisions_total",
                                  "authorization outcomes", "decision=\"public\"");
    m_allow = ks_metrics_counter("ks_gateway_authz_decisions_total", NULL, "decision=\"allow\"");
    m_deny = ks_metrics_counter("ks_gateway_authz_decisions_total", NULL, "decision=\"deny\"");
    m_err_unavailable = ks_metrics_counter("ks_gateway_authz_errors_total",
                                           "ks.iam.authz requests without a decision",
                                           "kind=\"unavailable\"");
    m_err_timeout = ks_metrics_counter("ks_gateway_authz_errors_total", NULL, "kind=\"timeout\"");
    m_err_reply = ks_metrics_counter("ks_gateway_authz_errors_total", NULL, "kind=\"bad_reply\"");
    m_rtt = ks_metrics_histogram("ks_gateway_authz_request_seconds",
                                 "round trip of ks.iam.authz requests", NULL, rtt_bounds,
                                 sizeof(rtt_bounds) / sizeof(rtt_bounds[0]));
}

ks_status gw_authz_start(gw *g)
{
    gw_authz *z = calloc(1, sizeof(*z));
    ks_ttlcache_opts o = {.capacity = AUTHZ_CACHE_CAPACITY,
                          .shards = AUTHZ_CACHE_SHARDS,
                          .max_key = AUTHZ_KEY_MAX,
                          .max_value = 1,
                          .max_ttl_ms = AUTHZ_TTL_MAX_MS};
    ks_status st;

    if (z == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "authz");
    atomic_init(&z->refs, 1);
    z->bus = g->bus;
    z->mirror = ks_service_mirror(g->svc);
    z->timeout_ms = (int)g->cfg->common.request_timeout_ms;
    register_metrics();
    if (z->mirror == NULL) {
        ks_warn("authz: no mirror, so no way to see policy changes: decisions are not cached");
    } else {
        st = ks_ttlcache_create(&o, &z->cache);
        if (st == KS_OK)
            st = ks_mirror_cache_add_handler(z->mirror, NULL, on_mirror_change, z,
                                             &z->handler_id);
        if (st) {
            authz_release(z);
            return st;
        }
        z->has_handler = 1;
    }
    g->authz = z;
    return KS_OK;
}

void gw_authz_stop(gw *g)
{
    gw_authz *z = g->authz;

    if (z == NULL)
        return;
    g->authz = NULL;
    if (z->has_handler)
        ks_mirror_cache_remove_handler(z->mirror, z->handler_id);
    authz_release(z);
}
