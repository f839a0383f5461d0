/* dispatch.c: the last stage (docs/gateway.md, "Dispatch").
 *
 *   /clusters/<c>/... with c other than host      404
 *   /healthz, /livez, /readyz                     answered here
 *   /oauth/token                                  TokenRequest on ks.iam.token
 *   /oauth/...                                    ApiRequest on iam's API subject
 *   /kapis/<group>/<version>/..., /kapi/<v>/...   ApiRequest on the subject
 *                                                 discovery.c resolves
 *   /api, /apis, /version, /openapi/...           gw_proxy_start_request
 *   anything else                                 404
 *
 * Every NATS request is asynchronous (ks_bus_request_async) with the time
 * left before the request's deadline: the worker thread suspends the
 * connection and the answer resumes it from the bus's reply thread. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "codec.h"
#include "api.h"
#include "discovery.h"
#include "audit.h"
#include "gw.h"
#include "jwt.h"
#include "kscore/v1/api.pb-c.h"
#include "kscore/v1/iam.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "mirror_cache.h"
#include "requestinfo.h"
#include "subject.h"

#define TOKEN_SUBJECT "ks.iam.token"
#define IAM_GROUP "iam.kubesphere.io"
#define IAM_VERSION "v1beta1"
#define TOKEN_FORM_MAX (64u * 1024u)  /* a token request's body */
#define FORM_VALUE_MAX (KS_JWT_MAX_TOKEN + 1)
#define MAX_SOURCE_IPS 8
#define MAX_PATH_SEGMENTS 64
#define EXTRA_JTI "kscore.io/token-jti"

typedef struct {
    gw *g;
    gw_discovery *disc;
} dispatch_state;

/* One NATS request in flight. */
typedef enum { CALL_TOKEN = 0, CALL_API } call_kind;

typedef struct {
    gw_request *r;
    call_kind kind;
    int64_t start_us;
    char what[320];     /* for messages: "iam.kubesphere.io/v1beta1" */
} call_ctx;

static ks_metric *m_rtt[2];
static ks_metric *m_err[2][5];
enum { ERR_NO_RESPONDERS = 0, ERR_TIMEOUT, ERR_UNAVAILABLE, ERR_BAD_REPLY, ERR_TOO_LARGE };
static const char *const call_names[] = {"token", "api"};
static const char *const err_names[] = {"no_responders", "timeout", "unavailable", "bad_reply",
                                        "too_large"};

static int64_t dispatch_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void upstream_error(call_kind k, int e)
{
    ks_metric_inc(m_err[k][e]);
}

static int nats_timeout_ms(gw_request *r)
{
    int64_t left = gw_ms_left(r);

    /* no deadline (a watch): the service's answer still must come in time */
    if (left < 0 || left > 3600000)
        left = r->g->cfg->request_timeout_ms;
    return (int)left;
}

/* ---- the local endpoints ---- */

static void local_health(gw_request *r, const char *path)
{
    char why[256] = "";
    int ready = 1;

    if (strcmp(r->method, "GET") != 0 && strcmp(r->method, "HEAD") != 0) {
        gw_add_header(r, "Allow", "GET, HEAD");
        gw_respond_status(r, 405, "MethodNotAllowed", "%s answers GET and HEAD", path);
        return;
    }
    if (strcmp(path, "/readyz") == 0) {
        ks_mirror_cache *mc = r->g->svc ? ks_service_mirror(r->g->svc) : NULL;
        if (r->g->bus == NULL || !ks_bus_is_connected(r->g->bus)) {
            ready = 0;
            snprintf(why, sizeof(why), "not connected to NATS");
        } else if (mc != NULL && !ks_mirror_cache_ready(mc, why, sizeof(why))) {
            ready = 0;
        }
    }
    gw_add_header(r, "Cache-Control", "no-store");
    if (ready) {
        gw_respond(r, 200, "text/plain; charset=utf-8", "ok", 2);
    } else {
        char body[300];
        int n = snprintf(body, sizeof(body), "not ready: %s", why);
        gw_respond(r, 503, "text/plain; charset=utf-8", body,
                   (size_t)(n < (int)sizeof(body) ? n : (int)sizeof(body) - 1));
    }
}

/* ---- the kube-apiserver proxy placeholder ---- */

/* PLACEHOLDER until proxy.c lands: its author deletes this definition (and
 * this comment) and defines gw_proxy_start_request in proxy.c. */
__attribute__((weak)) void gw_proxy_start_request(gw_request *r)
{
    gw_respond_status(r, 501, "NotImplemented", "proxy not built yet");
}

/* ---- a failed NATS request ---- */

static void answer_bus_error(gw_request *r, call_kind kind, ks_status st, const char *what)
{
    if (kind == CALL_TOKEN) {
        /* the token endpoint speaks RFC 6749 errors, never a Status */
        const char *desc = st == KS_ERR_TIMEOUT ? "the identity service did not answer in time"
                                                : "the identity service is not available";
        json_t *o = json_pack("{s:s, s:s}", "error", "temporarily_unavailable",
                              "error_description", desc);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        gw_add_header(r, "Cache-Control", "no-store");
        if (st != KS_ERR_TIMEOUT)
            gw_add_header(r, "Retry-After", "1");
        gw_respond(r, st == KS_ERR_TIMEOUT ? 504 : 503, "application/json", s ? s : "",
                   s ? strlen(s) : 0);
        free(s);
        return;
    }
    switch (st) {
    case KS_ERR_NO_RESPONDERS:
        gw_respond_status(r, 503, "ServiceUnavailable", "no service serves %s", what);
        break;
    case KS_ERR_TIMEOUT:
        gw_respond_status(r, 504, "Timeout", "%s did not answer within the request's deadline",
                          what);
        break;
    case KS_ERR_TOO_LARGE:
        gw_respond_status(r, 413, "RequestEntityTooLarge",
                          "the request is too large to forward to %s", what);
        break;
    default:
        gw_add_header(r, "Retry-After", "1");
        gw_respond_status(r, 503, "ServiceUnavailable", "%s cannot be reached (NATS is away)",
                          what);
        break;
    }
}

static int error_kind(ks_status st)
{
    switch (st) {
    case KS_ERR_NO_RESPONDERS: return ERR_NO_RESPONDERS;
    case KS_ERR_TIMEOUT: return ERR_TIMEOUT;
    case KS_ERR_TOO_LARGE: return ERR_TOO_LARGE;
    default: return ERR_UNAVAILABLE;
    }
}

/* ---- /oauth/token ---- */

static const char *const token_keys[] = {"grant_type", "username",  "password",
                                         "refresh_token", "client_id", "client_secret"};
#define NTOKEN_KEYS (sizeof(token_keys) / sizeof(token_keys[0]))

static void token_error(gw_request *r, int code, const char *error, const char *desc)
{
    json_t *o = json_pack("{s:s, s:s}", "error", error, "error_description", desc);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    gw_add_header(r, "Cache-Control", "no-store");
    gw_add_header(r, "Pragma", "no-cache");
    gw_respond(r, code, "application/json", s ? s : "", s ? strlen(s) : 0);
    free(s);
}

/* Free a form value buffer (FORM_VALUE_MAX bytes), zeroed first: it may
 * hold a password. */
static void wipe(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, FORM_VALUE_MAX);
        free(s);
    }
}

/* Split an application/x-www-form-urlencoded body into the token fields
 * (decoded, owned). Returns NULL, or the error_description of an
 * invalid_request. Unknown keys are ignored; a known key twice is an error
 * (RFC 6749 3.2). */
static const char *parse_token_form(const char *body, size_t len, char *vals[NTOKEN_KEYS])
{
    size_t i = 0;

    while (i < len) {
        size_t end = i, klen;
        const char *eq;
        char key[32];
        size_t k;

        while (end < len && body[end] != '&')
            end++;
        eq = memchr(body + i, '=', end - i);
        klen = eq ? (size_t)(eq - (body + i)) : end - i;
        if (klen > 0 && klen < sizeof(key) &&
            ks_api_unescape(body + i, klen, 1, key, sizeof(key)) == KS_OK) {
            for (k = 0; k < NTOKEN_KEYS && strcmp(key, token_keys[k]) != 0; k++)
                ;
            if (k < NTOKEN_KEYS) {
                size_t vlen = eq ? (size_t)(body + end - eq - 1) : 0;
                if (vals[k] != NULL)
                    return "a parameter appears more than once";
                vals[k] = malloc(FORM_VALUE_MAX);
                if (vals[k] == NULL)
                    return "out of memory";
                vals[k][0] = '\0';
                if (ks_api_unescape(eq ? eq + 1 : "", vlen, 1, vals[k], FORM_VALUE_MAX) !=
                    KS_OK)
                    return "a parameter is not correctly encoded or too long";
            }
        }
        i = end + 1;
    }
    return NULL;
}

static void on_token_reply(ks_status st, ks_bus_msg *reply, void *arg)
{
    call_ctx *c = arg;
    gw_request *r = c->r;
    Kscore__V1__TokenResponse *tr = NULL;
    json_t *o = NULL;
    char *s;
    int code;

    ks_metric_observe(m_rtt[CALL_TOKEN], (double)(dispatch_mono_us() - c->start_us) / 1e6);
    if (st != KS_OK) {
        upstream_error(CALL_TOKEN, error_kind(st));
        answer_bus_error(r, CALL_TOKEN, st, c->what);
        goto out;
    }
    if (KS_UNPACK(kscore__v1__token_response, ks_bus_msg_data(reply), ks_bus_msg_len(reply),
                  &tr) != KS_OK) {
        upstream_error(CALL_TOKEN, ERR_BAD_REPLY);
        token_error(r, 502, "server_error", "the identity service answered something unreadable");
        goto out;
    }
    code = tr->http_code;
    if ((code == 0 || code == 200) && tr->access_token && tr->access_token[0] &&
        (tr->error == NULL || tr->error[0] == '\0')) {
        o = json_pack("{s:s, s:s, s:s, s:I}", "access_token", tr->access_token, "token_type",
                      tr->token_type && tr->token_type[0] ? tr->token_type : "Bearer",
                      "refresh_token", tr->refresh_token ? tr->refresh_token : "", "expires_in",
                      (json_int_t)tr->expires_in);
        s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        gw_add_header(r, "Cache-Control", "no-store");
        gw_add_header(r, "Pragma", "no-cache");
        gw_respond(r, s ? 200 : 503, "application/json", s ? s : "", s ? strlen(s) : 0);
        if (s != NULL)
            explicit_bzero(s, strlen(s));
        free(s);
    } else {
        if (code < 400 || code > 599)
            code = 400;
        if (tr->retry_after_s > 0) {
            char v[16];
            snprintf(v, sizeof(v), "%d", tr->retry_after_s);
            gw_add_header(r, "Retry-After", v);
        }
        token_error(r, code, tr->error && tr->error[0] ? tr->error : "invalid_request",
                    tr->error_description ? tr->error_description : "");
    }
out:
    json_decref(o);
    ks_codec_free((ProtobufCMessage *)tr);
    ks_bus_msg_destroy(reply);
    free(c);
}

static void dispatch_token(gw_request *r)
{
    Kscore__V1__TokenRequest tq = KSCORE__V1__TOKEN_REQUEST__INIT;
    char *vals[NTOKEN_KEYS] = {0};
    const char *ct = gw_header(r, "Content-Type"), *bad;
    uint8_t *buf = NULL;
    size_t len = 0;
    call_ctx *c = NULL;
    ks_status st;

    if (strcmp(r->method, "POST") != 0) {
        gw_add_header(r, "Allow", "POST");
        gw_respond_status(r, 405, "MethodNotAllowed", "/oauth/token answers POST only");
        return;
    }
    if (ct == NULL || strncasecmp(ct, "application/x-www-form-urlencoded", 33) != 0 ||
        (ct[33] != '\0' && ct[33] != ';' && ct[33] != ' ')) {
        token_error(r, 400, "invalid_request",
                    "the body must be application/x-www-form-urlencoded");
        return;
    }
    if (r->body_len > TOKEN_FORM_MAX) {
        token_error(r, 400, "invalid_request", "the request body is too large");
        return;
    }
    bad = parse_token_form(r->body ? r->body : "", r->body_len, vals);
    if (bad == NULL && (vals[0] == NULL || vals[0][0] == '\0'))
        bad = "grant_type is required";
    if (bad != NULL) {
        token_error(r, 400, "invalid_request", bad);
        goto out;
    }
    tq.grant_type = vals[0];
    tq.username = vals[1] ? vals[1] : "";
    tq.password = vals[2] ? vals[2] : "";
    tq.refresh_token = vals[3] ? vals[3] : "";
    tq.client_id = vals[4] ? vals[4] : "";
    tq.client_secret = vals[5] ? vals[5] : "";
    tq.source_ip = r->source_ip;
    tq.user_agent = (char *)(gw_header(r, "User-Agent") ? gw_header(r, "User-Agent") : "");
    if ((st = ks_codec_pack(&tq.base, &buf, &len)) != KS_OK) {
        token_error(r, 503, "temporarily_unavailable", "out of memory");
        goto out;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        token_error(r, 503, "temporarily_unavailable", "out of memory");
        goto out;
    }
    c->r = r;
    c->kind = CALL_TOKEN;
    c->start_us = dispatch_mono_us();
    snprintf(c->what, sizeof(c->what), "the identity service");
    /* The body held a password or a refresh token: it is not kept past
     * here (so no later stage can log it). */
    if (r->body != NULL) {
        gw_audit_keep_body(r); /* its redacted copy, for the audit event */
        explicit_bzero(r->body, r->body_len);
        r->body_len = 0;
    }
    st = ks_bus_request_async(r->g->bus, TOKEN_SUBJECT, buf, len, nats_timeout_ms(r),
                              on_token_reply, c);
    if (st != KS_OK) {
        upstream_error(CALL_TOKEN, error_kind(st));
        answer_bus_error(r, CALL_TOKEN, st, c->what);
        free(c);
    }
out:
    if (buf != NULL) {
        explicit_bzero(buf, len);
        free(buf);
    }
    for (size_t i = 0; i < NTOKEN_KEYS; i++)
        wipe(vals[i]);
}

/* ---- ApiRequest ---- */

static int hop_by_hop(const char *name)
{
    static const char *const drop[] = {
        "Authorization", "Cookie",  "Proxy-Authorization", "Connection",       "Keep-Alive",
        "TE",            "Trailer", "Transfer-Encoding",   "Upgrade",          "Proxy-Connection",
        "Content-Length", "Expect"};
    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        if (strcasecmp(name, drop[i]) == 0)
            return 1;
    return 0;
}

/* Kubernetes' rule (utilnet.SourceIPs): the X-Forwarded-For entries, then
 * X-Real-Ip, then the peer, each once. Values that are not IP addresses
 * are skipped. */
static size_t source_ips(gw_request *r, char out[][GW_SOURCE_IP_MAX])
{
    size_t n = 0;
    const char *hdrs[2] = {gw_header(r, "X-Forwarded-For"), gw_header(r, "X-Real-Ip")};

    for (int h = 0; h < 2; h++) {
        const char *p = hdrs[h];
        while (p != NULL && *p && n < MAX_SOURCE_IPS - 1) {
            const char *e = strchr(p, ',');
            size_t l = e ? (size_t)(e - p) : strlen(p);
            char ip[GW_SOURCE_IP_MAX];
            unsigned char tmp[16];
            while (l > 0 && (*p == ' ' || *p == '\t')) {
                p++;
                l--;
            }
            while (l > 0 && (p[l - 1] == ' ' || p[l - 1] == '\t'))
                l--;
            if (l > 0 && l < sizeof(ip)) {
                memcpy(ip, p, l);
                ip[l] = '\0';
                if (inet_pton(AF_INET, ip, tmp) == 1 || inet_pton(AF_INET6, ip, tmp) == 1)
                    memcpy(out[n++], ip, l + 1);
            }
            p = e ? e + 1 : NULL;
        }
    }
    if (r->source_ip[0] != '\0' && (n == 0 || strcmp(out[n - 1], r->source_ip) != 0))
        snprintf(out[n++], GW_SOURCE_IP_MAX, "%s", r->source_ip);
    return n;
}

static void on_api_reply(ks_status st, ks_bus_msg *reply, void *arg)
{
    call_ctx *c = arg;
    gw_request *r = c->r;
    Kscore__V1__ApiResponse *ar = NULL;
    int code;

    ks_metric_observe(m_rtt[CALL_API], (double)(dispatch_mono_us() - c->start_us) / 1e6);
    if (st != KS_OK) {
        upstream_error(CALL_API, error_kind(st));
        answer_bus_error(r, CALL_API, st, c->what);
        goto out;
    }
    if (KS_UNPACK(kscore__v1__api_response, ks_bus_msg_data(reply), ks_bus_msg_len(reply),
                  &ar) != KS_OK) {
        upstream_error(CALL_API, ERR_BAD_REPLY);
        gw_respond_status(r, 502, "InternalError", "%s answered something unreadable", c->what);
        goto out;
    }
    code = ar->code;
    if (code < 200 || code > 599) {
        upstream_error(CALL_API, ERR_BAD_REPLY);
        gw_respond_status(r, 502, "InternalError", "%s answered with HTTP code %d", c->what,
                          code);
        goto out;
    }
    for (size_t i = 0; i < ar->n_headers; i++) {
        const Kscore__V1__Header *h = ar->headers[i];
        if (h->name == NULL || h->name[0] == '\0' || hop_by_hop(h->name) ||
            strcasecmp(h->name, "Content-Type") == 0 || strcasecmp(h->name, "X-Request-Id") == 0)
            continue;
        for (size_t j = 0; j < h->n_values; j++)
            if (h->values[j] != NULL && strpbrk(h->values[j], "\r\n") == NULL &&
                strpbrk(h->name, "\r\n: ") == NULL)
                gw_add_header(r, h->name, h->values[j]);
    }
    gw_respond(r, code,
               ar->content_type && ar->content_type[0] && !strpbrk(ar->content_type, "\r\n")
                   ? ar->content_type
                   : "application/json",
               ar->body.data, ar->body.len);
out:
    ks_codec_free((ProtobufCMessage *)ar);
    ks_bus_msg_destroy(reply);
    free(c);
}

/* Send r as an ApiRequest to subject; what names the API in messages. */
static void dispatch_api(gw_request *r, const char *subject, const char *what, int with_jti)
{
    const ks_requestinfo *ri = r->info;
    Kscore__V1__ApiRequest aq = KSCORE__V1__API_REQUEST__INIT;
    Kscore__V1__RequestInfo info;
    Kscore__V1__UserInfo user = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__UserInfo__ExtraEntry jti = KSCORE__V1__USER_INFO__EXTRA_ENTRY__INIT;
    Kscore__V1__UserInfo__ExtraEntry *extras[1] = {&jti};
    char *groups[GW_MAX_GROUPS];
    char ips[MAX_SOURCE_IPS][GW_SOURCE_IP_MAX];
    char *ipp[MAX_SOURCE_IPS];
    Kscore__V1__Header *hdrs = NULL, **hdrp = NULL;
    char **vals = NULL;
    size_t nh = 0, nips;
    uint8_t *buf = NULL;
    size_t len = 0;
    call_ctx *c = NULL;
    ks_status st;

    ks_requestinfo_to_proto(ri, &info);
    aq.request_id = r->request_id;
    aq.method = r->method;
    aq.path = (char *)ri->raw_path;
    aq.raw_query = r->raw_query;
    /* headers grouped by name (case-insensitive), in order */
    hdrs = calloc(r->nheaders + 1, sizeof(*hdrs));
    hdrp = calloc(r->nheaders + 1, sizeof(*hdrp));
    vals = calloc(r->nheaders + 1, sizeof(*vals));
    if (hdrs == NULL || hdrp == NULL || vals == NULL) {
        gw_respond_status(r, 503, "ServiceUnavailable", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        const gw_header_kv *h = &r->headers[i];
        size_t j;
        if (hop_by_hop(h->name))
            continue;
        for (j = 0; j < nh && strcasecmp(hdrs[j].name, h->name) != 0; j++)
            ;
        if (j == nh) {
            kscore__v1__header__init(&hdrs[nh]);
            hdrs[nh].name = (char *)h->name;
            hdrp[nh] = &hdrs[nh];
            nh++;
        }
    }
    /* Each header's values: a second pass places them contiguously. */
    {
        size_t at = 0;
        for (size_t j = 0; j < nh; j++) {
            hdrs[j].values = &vals[at];
            hdrs[j].n_values = 0;
            for (size_t i = 0; i < r->nheaders; i++)
                if (strcasecmp(r->headers[i].name, hdrs[j].name) == 0)
                    vals[at + hdrs[j].n_values++] = (char *)r->headers[i].value;
            at += hdrs[j].n_values;
        }
    }
    aq.headers = hdrp;
    aq.n_headers = nh;
    aq.body.data = (uint8_t *)r->body;
    aq.body.len = r->body_len;
    aq.info = &info;
    user.username = r->username;
    user.uid = r->uid;
    for (size_t i = 0; i < r->ngroups && i < GW_MAX_GROUPS; i++)
        groups[i] = r->groups[i];
    user.groups = groups;
    user.n_groups = r->ngroups < GW_MAX_GROUPS ? r->ngroups : GW_MAX_GROUPS;
    if (with_jti && r->jti[0] != '\0') {
        jti.key = EXTRA_JTI;
        jti.value = r->jti;
        user.extra = extras;
        user.n_extra = 1;
    }
    aq.user = &user;
    nips = source_ips(r, ips);
    for (size_t i = 0; i < nips; i++)
        ipp[i] = ips[i];
    aq.source_ips = ipp;
    aq.n_source_ips = nips;
    aq.deadline_unix_ms = gw_deadline_unix_ms(r);
    if ((st = ks_codec_pack(&aq.base, &buf, &len)) != KS_OK) {
        gw_respond_status(r, 503, "ServiceUnavailable", "out of memory");
        goto out;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        gw_respond_status(r, 503, "ServiceUnavailable", "out of memory");
        goto out;
    }
    c->r = r;
    c->kind = CALL_API;
    c->start_us = dispatch_mono_us();
    snprintf(c->what, sizeof(c->what), "%s", what);
    st = ks_bus_request_async(r->g->bus, subject, buf, len, nats_timeout_ms(r), on_api_reply, c);
    if (st != KS_OK) {
        upstream_error(CALL_API, error_kind(st));
        answer_bus_error(r, CALL_API, st, c->what);
        free(c);
    }
out:
    free(buf);
    free(hdrs);
    free(hdrp);
    free(vals);
}

/* Split a decoded path into segments (pointers into buf, a copy). */
static size_t split(const char *path, char *buf, size_t cap, const char *segs[])
{
    size_t n = 0;
    char *p;

    snprintf(buf, cap, "%s", path);
    p = buf;
    while (*p == '/')
        p++;
    while (*p && n < MAX_PATH_SEGMENTS) {
        char *e = strchr(p, '/');
        segs[n++] = p;
        if (e == NULL)
            break;
        *e = '\0';
        p = e + 1;
        if (*p == '\0')
            break;
    }
    return n;
}

static void dispatch_kapis(dispatch_state *d, gw_request *r, const ks_requestinfo *ri)
{
    char buf[KS_REQUESTINFO_PATH_MAX + 2], subject[GW_DISCOVERY_SUBJECT_MAX], what[320];
    const char *segs[MAX_PATH_SEGMENTS];
    size_t n = split(ri->path, buf, sizeof(buf), segs);
    const char *group, *version;
    size_t first;
    int announced = 0;

    if (strcmp(segs[0], "kapi") == 0) {
        group = "";
        version = n > 1 ? segs[1] : "";
        first = 2;
    } else {
        group = n > 1 ? segs[1] : "";
        version = n > 2 ? segs[2] : "";
        first = 3;
    }
    if (version[0] == '\0') {
        gw_respond_status(r, 404, "NotFound", "name an API group and version: /kapis/<group>/<version>/...");
        return;
    }
    if (gw_discovery_resolve(d->disc, group, version, segs + first, n > first ? n - first : 0,
                             subject, sizeof(subject), &announced) != KS_OK) {
        gw_respond_status(r, 404, "NotFound", "no API serves this group and version");
        return;
    }
    snprintf(what, sizeof(what), "%s%s%s", group, group[0] ? "/" : "", version);
    dispatch_api(r, subject, what, 0);
}

static int has_prefix_segment(const char *path, const char *seg)
{
    size_t n = strlen(seg);
    return path[0] == '/' && strncmp(path + 1, seg, n) == 0 &&
           (path[1 + n] == '\0' || path[1 + n] == '/');
}

void gw_stage_dispatch(gw_request *r)
{
    dispatch_state *d = r->g->dispatch;
    const ks_requestinfo *ri = r->info;
    const char *path;

    if (ri->cluster[0] != '\0' && strcmp(ri->cluster, "host") != 0) {
        gw_respond_status(r, 404, "NotFound", "cluster \"%s\" not found", ri->cluster);
        return;
    }
    path = ri->path;
    if (strcmp(path, "/healthz") == 0 || strcmp(path, "/livez") == 0 ||
        strcmp(path, "/readyz") == 0) {
        local_health(r, path);
        return;
    }
    if (strcmp(path, "/oauth/token") == 0) {
        dispatch_token(r);
        return;
    }
    if (has_prefix_segment(path, "oauth")) {
        char subject[128];
        if (ks_subject_api(IAM_GROUP, IAM_VERSION, subject, sizeof(subject)) != KS_OK) {
            gw_respond_status(r, 500, "InternalError", "cannot name iam's subject");
            return;
        }
        dispatch_api(r, subject, "the identity service", 1);
        return;
    }
    if (has_prefix_segment(path, "kapis") || has_prefix_segment(path, "kapi")) {
        dispatch_kapis(d, r, ri);
        return;
    }
    if (ri->is_kube_request || has_prefix_segment(path, "api") ||
        has_prefix_segment(path, "apis") || strcmp(path, "/version") == 0 ||
        has_prefix_segment(path, "openapi")) {
        gw_proxy_start_request(r);
        return;
    }
    gw_respond_status(r, 404, "NotFound", "no API serves this path");
}

ks_status gw_dispatch_start(gw *g)
{
    static const double rtt_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                        0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5,
                                        5,      10,      30};
    dispatch_state *d = calloc(1, sizeof(*d));
    gw_discovery_opts o = {0};
    ks_status st;

    if (d == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "dispatch");
    for (int k = 0; k < 2; k++) {
        char labels[64] = "";
        (void)ks_metrics_label_append(labels, sizeof(labels), "call", call_names[k]);
        m_rtt[k] = ks_metrics_histogram("ks_gateway_nats_request_duration_seconds",
                                        "round trip of the gateway's NATS requests", labels,
                                        rtt_bounds, sizeof(rtt_bounds) / sizeof(rtt_bounds[0]));
        for (int e = 0; e < 5; e++) {
            char l2[128] = "";
            (void)ks_metrics_label_append(l2, sizeof(l2), "call", call_names[k]);
            (void)ks_metrics_label_append(l2, sizeof(l2), "kind", err_names[e]);
            m_err[k][e] = ks_metrics_counter("ks_gateway_upstream_errors_total",
                                             "NATS requests that got no usable answer", l2);
        }
    }
    d->g = g;
    o.interval_ms = g->cfg->discovery_interval_ms > 0 ? (int)g->cfg->discovery_interval_ms : 0;
    st = gw_discovery_create(g->bus, &o, &d->disc);
    if (st) {
        free(d);
        return st;
    }
    g->dispatch = d;
    return KS_OK;
}

void gw_dispatch_stop(gw *g)
{
    dispatch_state *d = g ? g->dispatch : NULL;

    if (d == NULL)
        return;
    gw_discovery_destroy(d->disc);
    free(d);
    g->dispatch = NULL;
}
