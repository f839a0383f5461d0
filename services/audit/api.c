/* api.c: GET .../auditing/events on NATS (audit.h, docs/audit.md). */
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "audit.h"
#include "log.h"
#include "metrics.h"
#include "query.h"

#define MAX_CANDIDATES 100000

typedef struct {
    aud_service *a;
    aud_store *rd;      /* this endpoint's own read connection */
} worker;

struct aud_api {
    worker *workers;
    size_t nworkers;
    atomic_int closing;
};

/* The endpoints live until the micro service is destroyed, after the
 * service's stop hook: what they use stays allocated (and reachable) until
 * the process ends. */
static aud_api the_api;

static ks_metric *m_seconds[3], *m_codes[3][4];

static const char *const op_names[3] = {"query", "statistics", "histogram"};

static void metrics_init(void)
{
    static const char *const classes[4] = {"2xx", "4xx", "5xx", "other"};
    char labels[96];

    for (int op = 0; op < 3; op++) {
        snprintf(labels, sizeof(labels), "operation=\"%s\"", op_names[op]);
        m_seconds[op] = ks_metrics_histogram("ks_audit_query_seconds",
                                             "time to answer an auditing query", labels, NULL, 0);
        for (int c = 0; c < 4; c++) {
            snprintf(labels, sizeof(labels), "operation=\"%s\",code=\"%s\"", op_names[op],
                     classes[c]);
            m_codes[op][c] = ks_metrics_counter("ks_audit_queries_total", "auditing queries answered",
                                                labels);
        }
    }
}

/* ---- the namespaces and workspaces that exist, from the mirror ---- */

typedef struct {
    aud_scope_entry *v;
    size_t n, cap;
    int oom;
} entries;

static int64_t parse_rfc3339_us(const char *s)
{
    struct tm tm = {0};
    const char *end;

    if (s == NULL || (end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)) == NULL)
        return 0;
    return (int64_t)timegm(&tm) * 1000000;
}

static int visit(const ks_mirror_item *item, void *arg)
{
    entries *e = arg;
    const json_t *md = json_object_get(item->object, "metadata");
    const char *created = json_string_value(json_object_get(md, "creationTimestamp"));
    char *name;

    if (e->n == MAX_CANDIDATES)
        return 1;
    if (e->n == e->cap) {
        size_t nc = e->cap ? 2 * e->cap : 64;
        aud_scope_entry *p = realloc(e->v, nc * sizeof(*p));
        if (p == NULL) {
            e->oom = 1;
            return 1;
        }
        e->v = p;
        e->cap = nc;
    }
    name = strdup(item->name);
    if (name == NULL) {
        e->oom = 1;
        return 1;
    }
    e->v[e->n++] = (aud_scope_entry){name, parse_rfc3339_us(created)};
    return 0;
}

static void entries_free(entries *e)
{
    for (size_t i = 0; i < e->n; i++)
        free((char *)e->v[i].name);
    free(e->v);
    memset(e, 0, sizeof(*e));
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const aud_scope_entry *)a)->name, ((const aud_scope_entry *)b)->name);
}

/* Workspaces exist as WorkspaceTemplates and Workspaces: one entry per
 * name, the earliest creation. */
static void dedupe(entries *e)
{
    size_t o = 0;

    if (e->n == 0)
        return;
    qsort(e->v, e->n, sizeof(*e->v), by_name);
    for (size_t i = 1; i < e->n; i++) {
        if (strcmp(e->v[i].name, e->v[o].name) == 0) {
            if (e->v[i].since_us < e->v[o].since_us)
                e->v[o].since_us = e->v[i].since_us;
            free((char *)e->v[i].name);
        } else {
            e->v[++o] = e->v[i];
        }
    }
    e->n = o + 1;
}

/* ---- the handler ---- */

static int code_class(int code)
{
    return code >= 200 && code < 300 ? 0 : code >= 400 && code < 500 ? 1 : code >= 500 ? 2 : 3;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void status_from(ks_api_response *resp, ks_status st, const char *err)
{
    switch (st) {
    case KS_ERR_INVALID:
        ks_api_status(resp, 400, "BadRequest", "%s", err);
        break;
    case KS_ERR_TIMEOUT:
        ks_api_status(resp, 504, "Timeout", "%s", ks_status_last());
        break;
    case KS_ERR_UNAVAILABLE:
    case KS_ERR_NO_RESPONDERS:
    case KS_ERR_CLOSED:
        ks_api_status(resp, 503, "ServiceUnavailable", "%s", ks_status_last());
        break;
    default:
        ks_api_status(resp, 500, "InternalError", "%s", ks_status_last());
        break;
    }
}

static void on_events(ks_api_call *call, ks_api_response *resp, void *arg)
{
    worker *w = arg;
    aud_service *a = w->a;
    const Kscore__V1__UserInfo *user = call->req->user;
    struct timespec t0, t1;
    aud_query q = {0};
    aud_visibility vis = {0};
    entries ns = {0}, ws = {0};
    json_t *answer = NULL;
    int64_t now = aud_monotonic_ms(), deadline = now + a->cfg->query_timeout_ms;
    char err[512] = "";
    int parsed = 0, op = 0;
    ks_status st;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (atomic_load(&the_api.closing)) {
        ks_api_status(resp, 503, "ServiceUnavailable", "the audit service is stopping");
        goto out;
    }
    if (call->req->deadline_unix_ms > 0) {
        int64_t left = call->req->deadline_unix_ms - wall_ms();
        if (now + left < deadline)
            deadline = now + (left > 0 ? left : 0);
    }
    if ((st = aud_query_parse(call->req->raw_query, &q, err, sizeof(err)))) {
        status_from(resp, st, err);
        goto out;
    }
    parsed = 1;
    op = (int)q.op;
    /* the cluster question first: it settles it for platform admins, who
     * then need no list of namespaces */
    if ((st = aud_scope_resolve(a->scope, user, &q, NULL, 0, NULL, 0, &vis))) {
        status_from(resp, st, err);
        goto out;
    }
    if (!vis.all) {
        aud_visibility_free(&vis);
        if (a->mirror != NULL) {
            ks_mirror_cache_foreach(a->mirror, "/namespaces", NULL, visit, &ns);
            ks_mirror_cache_foreach(a->mirror, "tenant.kubesphere.io/workspaces", NULL, visit, &ws);
            ks_mirror_cache_foreach(a->mirror, "tenant.kubesphere.io/workspacetemplates", NULL,
                                    visit, &ws);
        }
        if (ns.oom || ws.oom) {
            ks_api_status(resp, 500, "InternalError", "out of memory");
            goto out;
        }
        dedupe(&ws);
        if ((st = aud_scope_resolve(a->scope, user, &q, ns.v, ns.n, ws.v, ws.n, &vis))) {
            status_from(resp, st, err);
            goto out;
        }
    }
    if ((st = aud_query_run(aud_store_db(w->rd), &q, &vis, deadline, &answer, err, sizeof(err)))) {
        if (st == KS_ERR_TIMEOUT)
            ks_api_status(resp, 504, "Timeout",
                          "the query did not finish within its deadline: narrow the time range or "
                          "add filters");
        else
            status_from(resp, st, err);
        goto out;
    }
    ks_api_json(resp, 200, answer);
out:
    if (resp->code >= 500)
        ks_warn("audit: query %s answered %d: %s", call->req->raw_query ? call->req->raw_query : "",
                resp->code, ks_status_last());
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (parsed)
        ks_metric_observe(m_seconds[op], (double)(t1.tv_sec - t0.tv_sec) +
                                             (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    ks_metric_inc(m_codes[op][code_class(resp->code)]);
    json_decref(answer);
    aud_visibility_free(&vis);
    entries_free(&ns);
    entries_free(&ws);
    aud_query_clear(&q);
}

static const ks_api_route routes[] = {
    {"GET", "/kapis/tenant.kubesphere.io/v1alpha2/auditing/events", on_events},
    {"GET", "/kapis/auditing.kubesphere.io/v1alpha1/events", on_events},
};

static int on_request(ks_bus *bus, ks_bus_msg *msg, void *arg, char *err, size_t errcap)
{
    return ks_api_serve(bus, msg, routes, sizeof(routes) / sizeof(routes[0]), arg, err, errcap);
}

ks_status aud_api_start(aud_service *a, aud_api **out)
{
    static const char *const subjects[2] = {AUD_SUBJECT_TENANT, AUD_SUBJECT_AUDITING};
    aud_store_opts ro = {0};
    aud_api *api = &the_api;
    size_t per = a->cfg->api_workers > 0 ? (size_t)a->cfg->api_workers : 2;
    ks_status st = KS_OK;

    metrics_init();
    if (api->workers != NULL)
        return KS_FAIL(KS_ERR_INVALID, "the audit API is already started");
    if ((api->workers = calloc(2 * per, sizeof(*api->workers))) == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "api");
    for (size_t i = 0; i < 2 * per; i++) {
        char name[48];
        worker *w = &api->workers[i];

        w->a = a;
        if ((st = aud_store_open(a->cfg->db_path, AUD_STORE_READ, &ro, &w->rd)))
            goto out;
        api->nworkers++;
        snprintf(name, sizeof(name), "events-%s-%zu", i < per ? "tenant" : "auditing", i % per);
        if ((st = ks_micro_add_endpoint(ks_service_micro(a->svc), name, subjects[i / per],
                                        AUD_QUEUE, on_request, w)))
            goto out;
    }
    ks_info("audit: serving queries on %s and %s (%zu endpoints each)", subjects[0], subjects[1],
            per);
    *out = api;
out:
    if (st)
        aud_api_stop(api);
    return st;
}

void aud_api_stop(aud_api *api)
{
    if (api == NULL)
        return;
    /* the endpoints stop with the micro service (ks_service_stop), after
     * this; until then they answer 503, and their read connections stay
     * open until the process ends */
    atomic_store(&api->closing, 1);
}
