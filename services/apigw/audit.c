/* audit.c: one AuditEvent per request (audit.h). */
#include "audit.h"

#include <ctype.h>
#include <errno.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "audit_policy.h"
#include "audit_publish.h"
#include "audit_redact.h"
#include "kscore/v1/audit.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "requestinfo.h"
#include "subject.h"

#define MAX_SOURCE_IPS 8
#define MAX_IMPERSONATED_GROUPS 16

typedef enum { MODE_OFF, MODE_ASYNC, MODE_STRICT } audit_mode;

typedef struct {
    gw *g;
    audit_mode mode;
    gw_audit_policy *policy;
    gw_audit_pub *pub;
    char *spool_dir;         /* <audit-spool-dir>/<http-addr> */
    size_t body_max;
    ks_metric *m_none, *m_strict_refused, *m_strict_failed;
} gw_audit;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- the event ---- */

/* Everything an event points to while it is packed. */
typedef struct {
    Kscore__V1__AuditEvent ev;
    Kscore__V1__UserInfo user, imp;
    Kscore__V1__ObjectReference ref;
    Kscore__V1__Status status;
    char *groups[GW_MAX_GROUPS];
    char *imp_groups[MAX_IMPERSONATED_GROUPS];
    char *ips[MAX_SOURCE_IPS];
    char ipbuf[MAX_SOURCE_IPS][GW_SOURCE_IP_MAX];
    char verb[32];
    char reason[128];
    char *message;           /* owned */
    char *uri;               /* owned (redacted) */
    char *req_body, *resp_body; /* owned (redacted) */
    Kscore__V1__AuditEvent__AnnotationsEntry ann[2];
    Kscore__V1__AuditEvent__AnnotationsEntry *annp[2];
} event_buf;

static void event_buf_free(event_buf *e)
{
    free(e->message);
    free(e->uri);
    free(e->req_body);
    free(e->resp_body);
}

/* Split a comma-separated header (X-Forwarded-For) into e->ips after the
 * ones already there, trimming spaces and skipping duplicates. */
static void add_ips(event_buf *e, const char *list)
{
    while (list != NULL && *list && e->ev.n_source_ips < MAX_SOURCE_IPS) {
        const char *end = strchr(list, ',');
        size_t n = end ? (size_t)(end - list) : strlen(list);
        const char *s = list;
        int dup = 0;
        while (n > 0 && isspace((unsigned char)*s)) {
            s++;
            n--;
        }
        while (n > 0 && isspace((unsigned char)s[n - 1]))
            n--;
        if (n > 0 && n < GW_SOURCE_IP_MAX) {
            char *slot = e->ipbuf[e->ev.n_source_ips];
            memcpy(slot, s, n);
            slot[n] = '\0';
            for (size_t i = 0; i < e->ev.n_source_ips && !dup; i++)
                dup = strcmp(e->ips[i], slot) == 0;
            if (!dup)
                e->ips[e->ev.n_source_ips++] = slot;
        }
        list = end ? end + 1 : NULL;
    }
}

/* reason and message of a Status answer; "Success"/"Failure" otherwise. */
static void response_status(event_buf *e, int code, const char *ct, const char *body, size_t len)
{
    kscore__v1__status__init(&e->status);
    e->status.code = code;
    e->status.status = code >= 200 && code < 400 ? "Success" : "Failure";
    e->status.reason = "";
    e->status.message = "";
    if (code < 400 || body == NULL || len == 0 || ct == NULL || strstr(ct, "json") == NULL)
        return;
    {
        json_t *j = json_loadb(body, len, 0, NULL);
        const char *kind = json_string_value(json_object_get(j, "kind"));
        if (kind != NULL && strcmp(kind, "Status") == 0) {
            const char *reason = json_string_value(json_object_get(j, "reason"));
            const char *msg = json_string_value(json_object_get(j, "message"));
            snprintf(e->reason, sizeof(e->reason), "%s", reason ? reason : "");
            e->status.reason = e->reason;
            /* a validation error can echo the rejected value */
            if (msg != NULL && gw_redact_value_is_secret(msg, strlen(msg)))
                msg = "[REDACTED]";
            if (msg != NULL && (e->message = strdup(msg)) != NULL)
                e->status.message = e->message;
        }
        json_decref(j);
    }
}

static void annotate(event_buf *e, const char *key, const char *value)
{
    size_t i = e->ev.n_annotations;

    if (i >= 2)
        return;
    kscore__v1__audit_event__annotations_entry__init(&e->ann[i]);
    e->ann[i].key = (char *)key;
    e->ann[i].value = (char *)value;
    e->annp[i] = &e->ann[i];
    e->ev.annotations = e->annp;
    e->ev.n_annotations = i + 1;
}

/* A body for the event at level >= Request, or an annotation saying why not. */
static void body_field(gw_audit *a, event_buf *e, const char *ct, const char *body, size_t len,
                       char **out, ProtobufCBinaryData *field, const char *ann_key)
{
    size_t olen = 0;
    int truncated = 0;

    if (body == NULL || len == 0)
        return;
    if (gw_redact_body(ct, body, len, a->body_max, out, &olen, &truncated) != KS_OK ||
        *out == NULL) {
        annotate(e, ann_key, truncated ? "omitted: larger than KS_AUDIT_BODY_MAX"
                                       : "omitted: neither JSON nor a form");
        return;
    }
    field->data = (uint8_t *)*out;
    field->len = olen;
}

/* Fill e from r. The strings point into r and e. */
static gw_audit_level build(gw_audit *a, gw_request *r, const char *resp_body, size_t resp_len,
                            event_buf *e)
{
    const ks_requestinfo *ri = r->info;
    gw_audit_attrs at = {0};
    gw_audit_level level;
    const char *groups[GW_MAX_GROUPS];
    /* refused before the chain ran: nobody was authenticated, not even as
     * anonymous */
    const char *user = r->username[0] ? r->username
                       : (r->started && !r->authenticated) ? "system:anonymous"
                                                           : "";

    memset(e, 0, sizeof(*e));
    kscore__v1__audit_event__init(&e->ev);
    kscore__v1__user_info__init(&e->user);
    kscore__v1__user_info__init(&e->imp);
    kscore__v1__object_reference__init(&e->ref);

    if (ri != NULL) {
        snprintf(e->verb, sizeof(e->verb), "%s", ri->verb);
    } else {
        size_t i;
        for (i = 0; r->method[i] && i + 1 < sizeof(e->verb); i++)
            e->verb[i] = (char)tolower((unsigned char)r->method[i]);
        e->verb[i] = '\0';
    }
    for (size_t i = 0; i < r->ngroups && i < GW_MAX_GROUPS; i++)
        groups[i] = r->groups[i];
    at.user = user;
    at.groups = groups;
    at.ngroups = r->ngroups < GW_MAX_GROUPS ? r->ngroups : GW_MAX_GROUPS;
    at.verb = e->verb;
    at.is_resource_request = ri != NULL && ri->is_resource_request;
    at.api_group = ri ? ri->api_group : "";
    at.resource = ri ? ri->resource : "";
    at.subresource = ri ? ri->subresource : "";
    at.namespace_ = ri ? ri->namespace : "";
    at.path = ri ? ri->path : r->url;
    level = gw_audit_policy_level(a->policy, &at);
    if (level == GW_AUDIT_NONE)
        return level;

    e->ev.audit_id = r->audit_id;
    e->ev.level = (char *)gw_audit_level_name(level);
    e->ev.stage = "ResponseComplete";
    {
        size_t ul = strlen(r->url), ql = strlen(r->raw_query);
        char *raw = malloc(ul + ql + 2);
        if (raw != NULL) {
            memcpy(raw, r->url, ul);
            if (ql > 0) {
                raw[ul] = '?';
                memcpy(raw + ul + 1, r->raw_query, ql + 1);
            } else {
                raw[ul] = '\0';
            }
            e->uri = gw_redact_uri(raw);
            free(raw);
        }
    }
    e->ev.request_uri = e->uri ? e->uri : (char *)r->url;
    e->ev.verb = e->verb;
    e->user.username = (char *)user;
    e->user.uid = r->uid;
    for (size_t i = 0; i < at.ngroups; i++)
        e->groups[i] = r->groups[i];
    e->user.groups = e->groups;
    e->user.n_groups = at.ngroups;
    e->ev.user = &e->user;
    {
        const char *iu = gw_header(r, "Impersonate-User");
        if (iu != NULL && iu[0]) {
            e->imp.username = (char *)iu;
            for (size_t i = 0; i < r->nheaders && e->imp.n_groups < MAX_IMPERSONATED_GROUPS; i++)
                if (strcasecmp(r->headers[i].name, "Impersonate-Group") == 0)
                    e->imp_groups[e->imp.n_groups++] = (char *)r->headers[i].value;
            e->imp.groups = e->imp_groups;
            e->ev.impersonated_user = &e->imp;
        }
    }
    /* Kubernetes' order: X-Forwarded-For, X-Real-Ip, then the peer */
    e->ev.source_ips = e->ips;
    add_ips(e, gw_header(r, "X-Forwarded-For"));
    add_ips(e, gw_header(r, "X-Real-Ip"));
    add_ips(e, r->source_ip);
    {
        const char *ua = gw_header(r, "User-Agent");
        e->ev.user_agent = (char *)(ua ? ua : "");
    }
    if (ri != NULL) {
        e->ref.resource = (char *)ri->resource;
        e->ref.namespace_ = (char *)ri->namespace;
        e->ref.name = (char *)ri->name;
        e->ref.api_group = (char *)ri->api_group;
        e->ref.api_version = (char *)ri->api_version;
        e->ref.subresource = (char *)ri->subresource;
        e->ev.workspace = (char *)ri->workspace;
        e->ev.cluster = (char *)ri->cluster;
    }
    e->ev.object_ref = &e->ref;
    response_status(e, r->code, r->content_type, resp_body, resp_len);
    e->ev.response_status = &e->status;
    e->ev.request_received_unix_us = r->received_us;
    e->ev.stage_unix_us = now_us();
    if (ri != NULL && ri->is_resource_request && ri->api_group[0] == '\0' &&
        strcmp(ri->resource, "secrets") == 0) {
        /* a patch of a Secret carries no kind to tell its data by: keep none */
        if (level >= GW_AUDIT_REQUEST)
            annotate(e, "kscore.io/request-object", "omitted: a Secret");
        if (level >= GW_AUDIT_REQUEST_RESPONSE)
            annotate(e, "kscore.io/response-object", "omitted: a Secret");
        return level;
    }
    if (level >= GW_AUDIT_REQUEST && r->audit_body_kept) {
        if (r->audit_body != NULL) {
            e->ev.request_object.data = (uint8_t *)r->audit_body;
            e->ev.request_object.len = r->audit_body_len;
        } else {
            annotate(e, "kscore.io/request-object", "omitted: not recordable");
        }
    } else if (level >= GW_AUDIT_REQUEST && !r->body_too_large)
        body_field(a, e, gw_header(r, "Content-Type"), r->body, r->body_len, &e->req_body,
                   &e->ev.request_object, "kscore.io/request-object");
    if (level >= GW_AUDIT_REQUEST_RESPONSE)
        body_field(a, e, r->content_type, resp_body, resp_len, &e->resp_body,
                   &e->ev.response_object, "kscore.io/response-object");
    return level;
}

/* Pack and submit. done(arg, acked) is called exactly once when given. */
static void submit(gw_audit *a, gw_request *r, const char *resp_body, size_t resp_len,
                   gw_audit_done_fn done, void *arg)
{
    event_buf e;
    char subject[1024];
    uint8_t stackbuf[4096], *buf = stackbuf;
    size_t len;
    const ks_requestinfo *ri = r->info;

    if (build(a, r, resp_body, resp_len, &e) == GW_AUDIT_NONE) {
        ks_metric_inc(a->m_none);
        event_buf_free(&e);
        if (done)
            done(arg, 1); /* the policy records nothing: nothing to wait for */
        return;
    }
    if (ks_subject_audit(ri ? ri->workspace : "", ri ? ri->namespace : "",
                         ri ? ri->resource : "", e.verb, subject, sizeof(subject)) != KS_OK)
        /* names too long for a subject: the event still goes, under "_" */
        (void)ks_subject_audit("", "", "", "_", subject, sizeof(subject));
    len = kscore__v1__audit_event__get_packed_size(&e.ev);
    if (len > sizeof(stackbuf) && (buf = malloc(len)) == NULL) {
        event_buf_free(&e);
        gw_audit_pub_lost(a->pub, r->audit_id, done, arg);
        return;
    }
    kscore__v1__audit_event__pack(&e.ev, buf);
    gw_audit_pub_submit(a->pub, subject, r->audit_id, buf, len, done, arg);
    if (buf != stackbuf)
        free(buf);
    event_buf_free(&e);
}

/* ---- API ---- */

/* mkdir -p of the spools' parent directory (mode 0700 for what it creates). */
static ks_status make_parents(const char *dir)
{
    char path[4096];
    size_t n = strlen(dir);

    if (n == 0 || n >= sizeof(path))
        return KS_FAIL(KS_ERR_INVALID, "audit spool directory: bad path");
    memcpy(path, dir, n + 1);
    for (char *q = path + 1;; q++) {
        if (*q == '/' || *q == '\0') {
            char c = *q;
            *q = '\0';
            if (mkdir(path, 0700) != 0 && errno != EEXIST)
                return KS_FAIL(KS_ERR_IO, "audit spool directory %s: %s", path, strerror(errno));
            *q = c;
            if (c == '\0')
                break;
        }
    }
    return KS_OK;
}

int gw_audit_is_strict(const gw *g)
{
    const gw_audit *a = g->audit;
    return a != NULL && a->mode == MODE_STRICT;
}

/* Claim r's event: 1 for the first caller. */
static int claim(gw_request *r)
{
    int first;

    pthread_mutex_lock(&r->mu);
    first = !r->audited;
    r->audited = 1;
    pthread_mutex_unlock(&r->mu);
    return first;
}

void gw_audit_record(gw_request *r, const char *resp_body, size_t resp_len)
{
    gw_audit *a = r->g->audit;

    if (a == NULL || a->mode == MODE_OFF || !claim(r))
        return;
    submit(a, r, resp_body, resp_len, NULL, NULL);
}

void gw_audit_keep_body(gw_request *r)
{
    gw_audit *a = r->g->audit;
    size_t len = 0;

    if (a == NULL || a->mode == MODE_OFF || r->audit_body_kept || r->body == NULL)
        return;
    r->audit_body_kept = 1;
    if (gw_redact_body(gw_header(r, "Content-Type"), r->body, r->body_len, a->body_max,
                       &r->audit_body, &len, NULL) != KS_OK)
        r->audit_body = NULL;
    r->audit_body_len = r->audit_body ? len : 0;
}

typedef struct {
    gw_audit *a;
    gw_request *r;
    void (*done)(gw_request *r, int acked);
} strict_wait;

static void strict_done(void *arg, int acked)
{
    strict_wait *w = arg;
    gw_request *r = w->r;
    void (*done)(gw_request *, int) = w->done;

    if (!acked)
        ks_metric_inc(w->a->m_strict_failed);
    free(w);
    done(r, acked);
}

void gw_audit_record_acked(gw_request *r, const char *resp_body, size_t resp_len,
                           void (*done)(gw_request *r, int acked))
{
    gw_audit *a = r->g->audit;
    strict_wait *w;

    if (a == NULL || a->mode == MODE_OFF || !claim(r)) {
        done(r, 1);
        return;
    }
    if ((w = malloc(sizeof(*w))) == NULL) {
        submit(a, r, resp_body, resp_len, NULL, NULL);
        ks_metric_inc(a->m_strict_failed);
        done(r, 0);
        return;
    }
    w->a = a;
    w->r = r;
    w->done = done;
    submit(a, r, resp_body, resp_len, strict_done, w);
}

void gw_stage_audit_gate(gw_request *r)
{
    gw_audit *a = r->g->audit;

    if (a != NULL && a->mode == MODE_STRICT && !gw_audit_pub_direct(a->pub)) {
        ks_metric_inc(a->m_strict_refused);
        gw_add_header(r, "Retry-After", "5");
        gw_respond_status(r, 503, "ServiceUnavailable",
                          "audit events cannot be recorded right now, and this gateway runs with "
                          "KS_AUDIT_MODE=strict: the request was not carried out");
        return;
    }
    gw_next(r);
}

ks_status gw_audit_start(gw *g)
{
    const gw_config *c = g->cfg;
    gw_audit *a = calloc(1, sizeof(*a));
    ks_status st;

    if (a == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "audit");
    a->g = g;
    a->mode = strcmp(c->audit_mode, "off") == 0      ? MODE_OFF
              : strcmp(c->audit_mode, "strict") == 0 ? MODE_STRICT
                                                     : MODE_ASYNC;
    a->body_max = (size_t)c->audit_body_max;
    a->m_none = ks_metrics_counter("ks_gateway_audit_events_skipped_total",
                                   "requests the audit policy records at level None", NULL);
    a->m_strict_refused = ks_metrics_counter(
        "ks_gateway_audit_strict_refusals_total",
        "requests refused (503) before acting because audit events could not be recorded", NULL);
    a->m_strict_failed = ks_metrics_counter(
        "ks_gateway_audit_strict_unacknowledged_total",
        "answers replaced by 503 because their audit event was not acknowledged", NULL);
    g->audit = a;
    if (a->mode == MODE_OFF) {
        ks_warn("audit: KS_AUDIT_MODE=off: requests are not recorded");
        return KS_OK;
    }
    if ((st = gw_audit_policy_load(c->audit_policy_file, &a->policy))) {
        gw_audit_stop(g);
        return st;
    }
    /* one spool per listen address, so gateways on one host never share one */
    if ((st = make_parents(c->audit_spool_dir))) {
        gw_audit_stop(g);
        return st;
    }
    {
        size_t n = strlen(c->audit_spool_dir) + strlen(c->http_addr) + 2;
        char *q;
        if ((a->spool_dir = malloc(n)) == NULL) {
            gw_audit_stop(g);
            return KS_FAIL(KS_ERR_NOMEM, "audit");
        }
        snprintf(a->spool_dir, n, "%s/%s", c->audit_spool_dir, c->http_addr);
        for (q = a->spool_dir + strlen(c->audit_spool_dir) + 1; *q; q++)
            if (!isalnum((unsigned char)*q) && *q != '.' && *q != '-')
                *q = '_';
    }
    {
        gw_audit_pub_cfg pc = {
            .nats_url = c->common.nats_url,
            .spool_dir = a->spool_dir,
            .spool_max_bytes = (uint64_t)c->audit_spool_max_bytes,
            .queue_max = (size_t)c->audit_queue,
            .queue_wait_ms = c->audit_queue_wait_ms,
            .window = 512,
            .ack_timeout_ms = (int)c->audit_ack_timeout_ms,
            .retry_ms = c->audit_retry_ms,
            .stream_max_age_ms = c->audit_max_age_ms,
            .stream_max_bytes = c->audit_max_bytes,
            .stream_replicas = (int)c->audit_stream_replicas,
        };
        if ((st = gw_audit_pub_start(&pc, &a->pub))) {
            gw_audit_stop(g);
            return st;
        }
    }
    ks_info("audit: mode %s, policy %s, spool %s", c->audit_mode,
            c->audit_policy_file ? c->audit_policy_file : "(none: everything at Metadata)",
            a->spool_dir);
    return KS_OK;
}

void gw_audit_stop(gw *g)
{
    gw_audit *a = g->audit;

    if (a == NULL)
        return;
    gw_audit_pub_stop(a->pub, 1000);
    gw_audit_policy_free(a->policy);
    free(a->spool_dir);
    free(a);
    g->audit = NULL;
}
