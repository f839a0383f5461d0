/* server.c: the gateway's HTTP side on libmicrohttpd (epoll, a pool of
 * worker threads, suspend/resume). See gw.h for the chain and
 * docs/gateway.md for the limits.
 *
 * A request's life:
 *   uri_log        the request line is in: r is created with the raw path
 *                  and query (MHD hands the access handler a decoded path,
 *                  which would hide "%2e%2e" and "%2F" from requestinfo.c)
 *   1st call       headers are in: copy them, check the limits that need no
 *                  body (431, 400 body on GET, 413 by Content-Length, 503
 *                  over the connection cap or while stopping, 408 slow
 *                  headers); a refusal is queued at once and closes the
 *                  connection. Otherwise nothing is queued: an answer queued
 *                  in the first call loses keep-alive (DESIGN.md §11).
 *   body calls     append to r->body up to max-body
 *   last call      run the chain; suspend unless it answered already
 *   resumed call   queue the answer
 *   completed      metrics; drop the HTTP side's reference
 *
 * Ownership: r has two references while the chain runs, the HTTP side's
 * (dropped in on_completed) and the chain's (dropped when a stage answers,
 * or when gw_next finds the request already answered). Whoever drops the
 * last frees r, so a stage answering late, from a NATS thread, after the
 * server gave up on the request (deadline, shutdown), touches nothing freed.
 * The answer fields are written only under r->mu while the state is RUNNING;
 * the first answer wins. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "addr.h"
#include "audit.h"
#include "gw.h"
#include "log.h"
#include "metrics.h"
#include "requestinfo.h"
#include "uuid.h"

const gw_stage_fn gw_stages[] = {
    gw_stage_requestinfo,
    gw_stage_authn,
    gw_stage_authz,
    gw_stage_audit_gate,
    gw_stage_dispatch,
};
const size_t gw_nstages = sizeof(gw_stages) / sizeof(gw_stages[0]);

/* libmicrohttpd's per-connection pool holds the request line, the headers
 * and the read buffer. Headers up to GW_MAX_HEADERS_BYTES get our 431 with a
 * Status body; beyond what the pool holds, libmicrohttpd answers 431 itself
 * (without X-Request-Id). */
#define GW_CONN_MEMORY (48u * 1024u)
#define GW_SWEEP_MS 50         /* deadline checks */
#define GW_DRAIN_MS 1000       /* how long stop waits for requests in flight */
#define GW_TLS_FILE_MAX (1024 * 1024)

/* The number of code/verb/resource series kept apart; more become "other". */
#define GW_METRIC_SLOTS 1024
#define GW_KNOWN_RESOURCES 128

typedef struct {
    char key[160];
    ks_metric *m;
} metric_slot;

static struct {
    gw *g;
    pthread_mutex_t wmu;          /* the waiting list; taken before any r->mu */
    gw_request *waiting;
    size_t nwaiting;              /* suspended requests */
    atomic_int stopping;
    atomic_long connections;
    pthread_t sweeper;
    int sweeper_running;
    pthread_mutex_t smu;          /* sweeper sleep */
    pthread_cond_t scond;
    char *tls_cert, *tls_key;

    pthread_mutex_t mmu;          /* metric slots and known resources */
    metric_slot slots[GW_METRIC_SLOTS];
    char known[GW_KNOWN_RESOURCES][64];
    size_t nknown;

    ks_metric *m_in_flight;
    ks_metric *m_latency;
    ks_metric *m_connections;
    ks_metric *m_other;           /* requests_total{...="other"} overflow */
} S = {
    .wmu = PTHREAD_MUTEX_INITIALIZER,
    .smu = PTHREAD_MUTEX_INITIALIZER,
    .scond = PTHREAD_COND_INITIALIZER,
    .mmu = PTHREAD_MUTEX_INITIALIZER,
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void limit_hit(const char *limit)
{
    char labels[64] = "";

    (void)ks_metrics_label_append(labels, sizeof(labels), "limit", limit);
    ks_metric_inc(ks_metrics_counter("ks_gateway_limit_rejections_total",
                                     "requests refused by a limit of the HTTP server", labels));
}

/* ---- request id, headers ---- */

/* A client's X-Request-Id is kept when it is well-formed: 1-63 bytes of
 * [A-Za-z0-9._-]; otherwise a UUIDv7 is made. */
static void set_request_id(gw_request *r, const char *given)
{
    size_t n = given ? strlen(given) : 0;
    int ok = n > 0 && n < sizeof(r->request_id);

    for (size_t i = 0; ok && i < n; i++) {
        char c = given[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '-' || c == '_' || c == '.';
    }
    if (ok)
        memcpy(r->request_id, given, n + 1);
    else if (ks_uuid_v7(r->request_id) != KS_OK)
        snprintf(r->request_id, sizeof(r->request_id), "%lld", (long long)now_us());
}

typedef struct {
    gw_request *r;
    size_t n, bytes;   /* pass 1: count and size */
    char *p;           /* pass 2: where the next copy goes */
} header_scan;

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    header_scan *h = cls;

    h->n++;
    h->bytes += strlen(key) + (value ? strlen(value) : 0) + 2;
    return MHD_YES;
}

static enum MHD_Result copy_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    header_scan *h = cls;
    gw_request *r = h->r;
    size_t kl = strlen(key), vl = value ? strlen(value) : 0;

    if (r->nheaders == h->n)
        return MHD_NO;
    memcpy(h->p, key, kl + 1);
    r->headers[r->nheaders].name = h->p;
    h->p += kl + 1;
    if (value)
        memcpy(h->p, value, vl);
    h->p[vl] = '\0';
    r->headers[r->nheaders].value = h->p;
    h->p += vl + 1;
    r->nheaders++;
    return MHD_YES;
}

/* Copy every header into r. Returns 0, or the HTTP code of a refusal
 * (431 over the cap, 400 for a header that must not repeat) with why set. */
static int snapshot_headers(gw_request *r, const char **why)
{
    static const char *const single[] = {"Host", "Content-Length", "Content-Type",
                                         "Authorization", "Transfer-Encoding", "X-Request-Id"};
    header_scan h = {.r = r};

    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, count_header, &h);
    /* name: value\r\n, as on the wire */
    if (h.bytes + 2 * h.n > GW_MAX_HEADERS_BYTES) {
        *why = "request headers exceed 16 KiB";
        return 431;
    }
    r->hdr_buf = malloc(h.bytes + 1);
    r->headers = calloc(h.n + 1, sizeof(*r->headers));
    if (r->hdr_buf == NULL || r->headers == NULL) {
        *why = "out of memory";
        return 503;
    }
    h.p = r->hdr_buf;
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, copy_header, &h);
    for (size_t i = 0; i < sizeof(single) / sizeof(single[0]); i++) {
        int seen = 0;
        for (size_t j = 0; j < r->nheaders; j++)
            seen += strcasecmp(r->headers[j].name, single[i]) == 0;
        if (seen > 1) {
            *why = single[i];
            return 400;
        }
    }
    return 0;
}

const char *gw_header(gw_request *r, const char *name)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

static void peer_address(gw_request *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;

    r->source_ip[0] = '\0';
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, r->source_ip,
                  sizeof(r->source_ip));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, r->source_ip,
                  sizeof(r->source_ip));
}

/* ---- deadlines ---- */

int64_t gw_ms_left(gw_request *r)
{
    int64_t left, deadline;

    pthread_mutex_lock(&r->mu);
    deadline = r->deadline_mono_us;
    pthread_mutex_unlock(&r->mu);
    if (deadline == 0)
        return -1;
    left = (deadline - mono_us()) / 1000;
    return left < 1 ? 1 : left;
}

int64_t gw_deadline_unix_ms(gw_request *r)
{
    int64_t deadline;

    pthread_mutex_lock(&r->mu);
    deadline = r->deadline_mono_us;
    pthread_mutex_unlock(&r->mu);
    if (deadline == 0)
        return 0;
    return (r->received_us + (deadline - r->received_mono_us)) / 1000;
}

void gw_clear_deadline(gw_request *r)
{
    pthread_mutex_lock(&r->mu);
    r->deadline_mono_us = 0;
    pthread_mutex_unlock(&r->mu);
}

/* ---- life cycle ---- */

static void request_free_early(gw_request *r)
{
    pthread_mutex_destroy(&r->mu);
    free((char *)r->url);
    free(r->raw_query);
    free(r);
}

static gw_request *request_new(gw *g, struct MHD_Connection *conn, const char *uri)
{
    gw_request *r = calloc(1, sizeof(*r));
    const char *q;
    size_t plen;

    if (r == NULL)
        return NULL;
    q = strchr(uri, '?');
    plen = q ? (size_t)(q - uri) : strlen(uri);
    r->url = strndup(uri, plen);
    r->raw_query = strdup(q ? q + 1 : "");
    if (r->url == NULL || r->raw_query == NULL) {
        free((char *)r->url);
        free(r->raw_query);
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    r->g = g;
    r->conn = conn;
    r->refs = 1;
    r->received_us = now_us();
    r->received_mono_us = mono_us();
    if (ks_uuid_v7(r->audit_id) != KS_OK) {
        request_free_early(r);
        return NULL;
    }
    return r;
}

static void unlink_waiting(gw_request *r);

static void request_free(gw_request *r)
{
    unlink_waiting(r);
    if (r->stream != NULL)
        MHD_destroy_response(r->stream);
    free((char *)r->url);
    free(r->raw_query);
    free(r->body);
    free(r->resp_body);
    free(r->held_body);
    free(r->audit_body);
    if (r->held_stream != NULL)
        MHD_destroy_response(r->held_stream);
    free(r->hdr_buf);
    free(r->headers);
    for (size_t i = 0; i < r->nresp_headers; i++) {
        free(r->resp_headers[i][0]);
        free(r->resp_headers[i][1]);
    }
    free(r->info);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Drop one reference (the caller holds r->mu, which this releases). */
static void unref_unlock(gw_request *r)
{
    int left = --r->refs;

    pthread_mutex_unlock(&r->mu);
    if (left == 0)
        request_free(r);
}

static void clear_resp_headers(gw_request *r)
{
    for (size_t i = 0; i < r->nresp_headers; i++) {
        free(r->resp_headers[i][0]);
        free(r->resp_headers[i][1]);
    }
    r->nresp_headers = 0;
}

static void add_header_locked(gw_request *r, const char *name, const char *value)
{
    char *n, *v;

    if (r->nresp_headers == GW_MAX_RESP_HEADERS)
        return;
    n = strdup(name);
    v = strdup(value);
    if (n == NULL || v == NULL) {
        free(n);
        free(v);
        return;
    }
    r->resp_headers[r->nresp_headers][0] = n;
    r->resp_headers[r->nresp_headers][1] = v;
    r->nresp_headers++;
}

void gw_add_header(gw_request *r, const char *name, const char *value)
{
    pthread_mutex_lock(&r->mu);
    if (r->state == GW_RUNNING)
        add_header_locked(r, name, value);
    pthread_mutex_unlock(&r->mu);
}

static char *status_json(int code, const char *reason, const char *msg, size_t *len)
{
    json_t *o = json_pack("{s:s, s:s, s:{}, s:s, s:s, s:s, s:i}", "kind", "Status", "apiVersion",
                          "v1", "metadata", "status", code < 400 ? "Success" : "Failure",
                          "message", msg, "reason", reason, "code", code);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;

    json_decref(o);
    *len = s ? strlen(s) : 0;
    return s;
}

/* Install an answer made by the server itself (a limit, the deadline, the
 * shutdown) and resume the connection. Caller holds r->mu; state RUNNING. */
static void answer_locked(gw_request *r, int code, const char *reason, const char *msg,
                          int retry_after_s)
{
    size_t len;

    clear_resp_headers(r);
    free(r->resp_body);
    r->resp_body = status_json(code, reason, msg, &len);
    r->resp_len = r->resp_body ? len : 0;
    r->code = code;
    snprintf(r->content_type, sizeof(r->content_type), "application/json");
    if (retry_after_s > 0) {
        char v[16];
        snprintf(v, sizeof(v), "%d", retry_after_s);
        add_header_locked(r, "Retry-After", v);
    }
    r->state = GW_DONE;
    if (r->suspended && r->conn != NULL) {
        r->suspended = 0;
        MHD_resume_connection(r->conn);
    }
}

/* The chain's end: install the answer (unless the server answered first),
 * resume, drop the chain's reference. Takes ownership of body and stream. */
static void install(gw_request *r, int code, const char *content_type, char *body, size_t len,
                    struct MHD_Response *stream)
{
    int gone;

    pthread_mutex_lock(&r->mu);
    if (!r->in_chain) {
        /* a stage answered twice: a bug, but never a double free */
        pthread_mutex_unlock(&r->mu);
        ks_error("request %s answered twice (code %d)", r->request_id, code);
        free(body);
        if (stream)
            MHD_destroy_response(stream);
        return;
    }
    r->in_chain = 0;
    if (r->state == GW_RUNNING) {
        r->code = code;
        snprintf(r->content_type, sizeof(r->content_type), "%s",
                 content_type ? content_type : "application/json");
        free(r->resp_body);
        r->resp_body = body;
        r->resp_len = body ? len : 0;
        r->stream = stream;
        r->state = GW_DONE;
        if (r->suspended && r->conn != NULL) {
            r->suspended = 0;
            MHD_resume_connection(r->conn);
        }
    } else {
        free(body);
        if (stream)
            MHD_destroy_response(stream);
    }
    /* the client went away: nobody queues this answer, record it here */
    gone = r->conn == NULL && r->state == GW_DONE;
    if (gone) {
        r->refs++;
        pthread_mutex_unlock(&r->mu);
        gw_audit_record(r, r->resp_body, r->resp_len);
        pthread_mutex_lock(&r->mu);
        r->refs--;
    }
    unref_unlock(r);
}

/* Strict mode: the held answer goes out once its event is acknowledged, a
 * 503 instead when it cannot be (the event itself is spooled and stored
 * later, with the real outcome). */
static void held_done(gw_request *r, int acked)
{
    char *body = r->held_body;
    struct MHD_Response *stream = r->held_stream;

    r->held_body = NULL;
    r->held_stream = NULL;
    if (acked) {
        install(r, r->held_code, r->held_ct, body, r->held_len, stream);
        return;
    }
    free(body);
    if (stream)
        MHD_destroy_response(stream);
    pthread_mutex_lock(&r->mu);
    clear_resp_headers(r);
    add_header_locked(r, "Retry-After", "5");
    pthread_mutex_unlock(&r->mu);
    {
        size_t blen;
        char *b = status_json(503, "ServiceUnavailable",
                              "the audit event of this request could not be recorded "
                              "(KS_AUDIT_MODE=strict); the request may have been carried out",
                              &blen);
        install(r, 503, "application/json", b, b ? blen : 0, NULL);
    }
}

static void finish(gw_request *r, int code, const char *content_type, char *body, size_t len,
                   struct MHD_Response *stream)
{
    int hold;

    pthread_mutex_lock(&r->mu);
    hold = r->in_chain && r->state == GW_RUNNING && !r->audited && gw_audit_is_strict(r->g);
    if (hold) {
        /* the event describes this answer: set what it reads */
        r->code = code;
        snprintf(r->content_type, sizeof(r->content_type), "%s",
                 content_type ? content_type : "application/json");
        r->held_code = code;
        snprintf(r->held_ct, sizeof(r->held_ct), "%s", r->content_type);
        r->held_body = body;
        r->held_len = body ? len : 0;
        r->held_stream = stream;
    }
    pthread_mutex_unlock(&r->mu);
    if (!hold) {
        install(r, code, content_type, body, len, stream);
        return;
    }
    gw_audit_record_acked(r, r->held_body, r->held_len, held_done);
}

void gw_respond(gw_request *r, int code, const char *content_type, const void *body, size_t len)
{
    char *copy = malloc(len > 0 ? len : 1);

    if (copy == NULL) {
        len = 0;
        code = 503;
    } else if (len > 0) {
        memcpy(copy, body, len);
    }
    finish(r, code, content_type, copy, len, NULL);
}

void gw_respond_status(gw_request *r, int code, const char *reason, const char *fmt, ...)
{
    char msg[1024];
    char *s;
    size_t len;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    s = status_json(code, reason, msg, &len);
    finish(r, code, "application/json", s, len, NULL);
}

void gw_respond_stream(gw_request *r, int code, struct MHD_Response *resp)
{
    finish(r, code, NULL, NULL, 0, resp);
}

void gw_next(gw_request *r)
{
    size_t i;

    pthread_mutex_lock(&r->mu);
    if (r->state == GW_DONE) {
        /* the server answered already (deadline, shutdown): stop here */
        r->in_chain = 0;
        unref_unlock(r);
        return;
    }
    pthread_mutex_unlock(&r->mu);
    /* stage is only touched by the thread that runs the chain */
    i = (size_t)r->stage++;
    if (i >= gw_nstages) {
        gw_respond_status(r, 500, "InternalError", "no stage answered the request");
        return;
    }
    gw_stages[i](r);
}

/* ---- queueing answers ---- */

static enum MHD_Result queue_answer(gw_request *r)
{
    struct MHD_Response *resp = r->stream;
    enum MHD_Result ret;

    gw_audit_record(r, r->resp_body, r->resp_len);
    if (resp == NULL) {
        resp = MHD_create_response_from_buffer(r->resp_len, r->resp_body ? r->resp_body : "",
                                               r->resp_body ? MHD_RESPMEM_MUST_FREE
                                                            : MHD_RESPMEM_PERSISTENT);
        if (resp == NULL)
            return MHD_NO;
        r->resp_body = NULL; /* libmicrohttpd frees it */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    }
    r->stream = NULL;
    MHD_add_response_header(resp, "X-Request-Id", r->request_id);
    MHD_add_response_header(resp, "Audit-ID", r->audit_id);
    for (size_t i = 0; i < r->nresp_headers; i++)
        MHD_add_response_header(resp, r->resp_headers[i][0], r->resp_headers[i][1]);
    if (r->close_conn)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    ret = MHD_queue_response(r->conn, (unsigned)r->code, resp);
    MHD_destroy_response(resp);
    r->queued = 1;
    return ret;
}

/* A refusal before the chain: answered in this very call, with
 * Connection: close (the body, if any, is not read). */
static enum MHD_Result refuse(gw_request *r, int code, const char *reason, const char *msg,
                              int retry_after_s, const char *limit)
{
    pthread_mutex_lock(&r->mu);
    answer_locked(r, code, reason, msg, retry_after_s);
    pthread_mutex_unlock(&r->mu);
    r->close_conn = 1;
    if (limit)
        limit_hit(limit);
    return queue_answer(r);
}

static int is_method(const gw_request *r, const char *m)
{
    return strcmp(r->method, m) == 0;
}

static int target_has_nul(const gw_request *r, const char *version);

/* The first call: headers are in, the body is not. Returns -1 to go on, or
 * the MHD result of a refusal queued here. */
static int first_call(gw *g, gw_request *r, const char *method, const char *version)
{
    const union MHD_ConnectionInfo *ci;
    const char *why = NULL, *cl, *te;
    int code;
    char msg[160];

    code = snapshot_headers(r, &why);
    set_request_id(r, code == 0 ? gw_header(r, "X-Request-Id") : NULL);
    peer_address(r);
    if (code == 431)
        return refuse(r, 431, "RequestHeaderFieldsTooLarge", why, 0, "headers");
    if (code == 400) {
        snprintf(msg, sizeof(msg), "the header %s appears more than once", why);
        return refuse(r, 400, "BadRequest", msg, 0, "duplicate_header");
    }
    if (code)
        return refuse(r, 503, "ServiceUnavailable", why, 1, NULL);
    /* libmicrohttpd reads the request line as a C string: a raw NUL in it
     * cuts the line short, and the version goes missing. */
    if (version == NULL ||
        (strcmp(version, MHD_HTTP_VERSION_1_1) != 0 && strcmp(version, MHD_HTTP_VERSION_1_0) != 0))
        return refuse(r, 400, "BadRequest", "malformed request line (a NUL byte, or not HTTP/1.x)",
                      0, NULL);
    if (target_has_nul(r, version))
        return refuse(r, 400, "BadRequest", "a NUL byte in the request target", 0, NULL);
    if (strlen(method) >= sizeof(r->method))
        return refuse(r, 400, "BadRequest", "the method is too long", 0, NULL);
    memcpy(r->method, method, strlen(method) + 1);
    if (atomic_load(&S.stopping))
        return refuse(r, 503, "ServiceUnavailable", "the gateway is shutting down", 1, NULL);
    ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (ci != NULL && ci->socket_context != NULL)
        return refuse(r, 503, "ServiceUnavailable", "too many connections", 1, "connections");
    if (mono_us() - r->received_mono_us > g->cfg->idle_timeout_ms * 1000)
        return refuse(r, 408, "Timeout", "the request headers came too slowly", 0, "idle");
    cl = gw_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    te = gw_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if ((is_method(r, "GET") || is_method(r, "HEAD")) &&
        (te != NULL || (cl != NULL && strcmp(cl, "0") != 0)))
        return refuse(r, 400, "BadRequest", "a GET or HEAD request must not have a body", 0,
                      "body_on_get");
    if (cl != NULL) {
        char *end;
        unsigned long long n;
        errno = 0;
        n = strtoull(cl, &end, 10);
        if (errno != 0 || end == cl || *end != '\0' || cl[0] == '-' || cl[0] == '+')
            return refuse(r, 400, "BadRequest", "the Content-Length is not a number", 0, NULL);
        if (n > (unsigned long long)g->cfg->max_body) {
            snprintf(msg, sizeof(msg), "the request body exceeds %lld bytes", g->cfg->max_body);
            return refuse(r, 413, "RequestEntityTooLarge", msg, 0, "body");
        }
    }
    return -1;
}

/* The request is in: run the chain, then suspend unless it answered. */
static enum MHD_Result start_chain(gw *g, gw_request *r, struct MHD_Connection *conn)
{
    int done;

    r->started = 1;
    pthread_mutex_lock(&r->mu);
    r->refs++;
    r->in_chain = 1;
    r->deadline_mono_us = r->received_mono_us + g->cfg->request_timeout_ms * 1000;
    pthread_mutex_unlock(&r->mu);
    gw_next(r);

    pthread_mutex_lock(&r->mu);
    done = r->state == GW_DONE;
    pthread_mutex_unlock(&r->mu);
    if (done)
        return queue_answer(r);
    /* The waiting list is locked first (the sweeper's order), then r. */
    pthread_mutex_lock(&S.wmu);
    pthread_mutex_lock(&r->mu);
    if (r->state == GW_RUNNING && atomic_load(&S.stopping))
        answer_locked(r, 503, "ServiceUnavailable", "the gateway is shutting down", 1);
    done = r->state == GW_DONE;
    if (!done) {
        r->suspended = 1;
        MHD_suspend_connection(conn);
        r->wprev = NULL;
        r->wnext = S.waiting;
        if (S.waiting)
            S.waiting->wprev = r;
        S.waiting = r;
        r->waiting = 1;
        S.nwaiting++;
    }
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_unlock(&S.wmu);
    return done ? queue_answer(r) : MHD_YES;
}

static void unlink_waiting(gw_request *r)
{
    pthread_mutex_lock(&S.wmu);
    if (r->waiting) {
        if (r->wprev)
            r->wprev->wnext = r->wnext;
        else
            S.waiting = r->wnext;
        if (r->wnext)
            r->wnext->wprev = r->wprev;
        r->waiting = 0;
        S.nwaiting--;
    }
    pthread_mutex_unlock(&S.wmu);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    gw *g = cls;
    gw_request *r = *con_cls;
    int done;

    if (r == NULL) /* the URI callback always runs first; out of memory there */
        return MHD_NO;
    if (r->queued) { /* refused in the first call: drop what still comes */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (!r->counted) {
        int ret;
        r->counted = 1;
        ks_metric_inc(S.m_in_flight);
        ret = first_call(g, r, method, version);
        return ret < 0 ? MHD_YES : (enum MHD_Result)ret;
    }
    if (!r->started && *upload_data_size > 0) {
        size_t n = *upload_data_size;
        if (!r->body_too_large && r->body_len + n <= (size_t)g->cfg->max_body) {
            char *nb = realloc(r->body, r->body_len + n + 1);
            if (nb == NULL)
                return MHD_NO;
            memcpy(nb + r->body_len, upload_data, n);
            r->body = nb;
            r->body_len += n;
            r->body[r->body_len] = '\0';
        } else {
            /* A chunked body over the cap: libmicrohttpd cannot answer in
             * the middle of an upload, so read and drop it (up to a bound,
             * then close) and answer 413 at its end. */
            r->body_too_large = 1;
            r->body_len += n;
            if (r->body_len > (size_t)g->cfg->max_body * 4 + 1024 * 1024)
                return MHD_NO;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&r->mu);
    done = r->state == GW_DONE;
    pthread_mutex_unlock(&r->mu);
    if (done) {
        unlink_waiting(r);
        return queue_answer(r);
    }
    if (!r->started) {
        char msg[128];
        if (r->body_too_large) {
            snprintf(msg, sizeof(msg), "the request body exceeds %lld bytes", g->cfg->max_body);
            return refuse(r, 413, "RequestEntityTooLarge", msg, 0, "body");
        }
        if (mono_us() - r->received_mono_us > g->cfg->idle_timeout_ms * 1000)
            return refuse(r, 408, "Timeout", "the request body came too slowly", 0, "idle");
        return start_chain(g, r, conn);
    }
    return MHD_YES; /* resumed before the answer was set: cannot happen */
}

/* ---- metrics of a finished request ---- */

static const char *bounded_verb(const char *verb)
{
    static const char *const verbs[] = {"get", "list", "watch", "create", "update", "patch",
                                        "delete", "deletecollection", "proxy", "post", "put",
                                        "head", "options"};
    for (size_t i = 0; verb && i < sizeof(verbs) / sizeof(verbs[0]); i++)
        if (strcmp(verb, verbs[i]) == 0)
            return verbs[i];
    return "other";
}

/* A resource keeps its own label once a request on it succeeded (so it
 * exists), up to GW_KNOWN_RESOURCES of them; the rest are "other". */
static const char *bounded_resource(const char *res, int code, char *buf, size_t cap)
{
    const char *out = "other";

    if (res == NULL || res[0] == '\0')
        return "";
    if (strlen(res) >= sizeof(S.known[0]))
        return out;
    pthread_mutex_lock(&S.mmu);
    for (size_t i = 0; i < S.nknown; i++)
        if (strcmp(S.known[i], res) == 0) {
            out = res;
            break;
        }
    if (out != res && code >= 200 && code < 300 && S.nknown < GW_KNOWN_RESOURCES) {
        snprintf(S.known[S.nknown++], sizeof(S.known[0]), "%s", res);
        out = res;
    }
    pthread_mutex_unlock(&S.mmu);
    if (out == res) {
        snprintf(buf, cap, "%s", res);
        return buf;
    }
    return out;
}

static ks_metric *requests_counter(int code, const char *verb, const char *resource)
{
    char key[160], labels[256] = "", codes[16];
    uint64_t h = 1469598103934665603ULL;
    ks_metric *m = NULL;

    snprintf(codes, sizeof(codes), "%d", code);
    snprintf(key, sizeof(key), "%s|%s|%s", codes, verb, resource);
    for (const char *p = key; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    pthread_mutex_lock(&S.mmu);
    for (size_t i = 0; i < GW_METRIC_SLOTS; i++) {
        metric_slot *s = &S.slots[(h + i) % GW_METRIC_SLOTS];
        if (s->m != NULL && strcmp(s->key, key) == 0) {
            m = s->m;
            break;
        }
        if (s->m == NULL) {
            if (i > GW_METRIC_SLOTS / 2)
                break; /* table getting full: count as other */
            (void)ks_metrics_label_append(labels, sizeof(labels), "code", codes);
            (void)ks_metrics_label_append(labels, sizeof(labels), "verb", verb);
            (void)ks_metrics_label_append(labels, sizeof(labels), "resource", resource);
            s->m = ks_metrics_counter("ks_gateway_requests_total",
                                      "requests answered, by code, verb and resource", labels);
            snprintf(s->key, sizeof(s->key), "%s", key);
            m = s->m;
            break;
        }
    }
    pthread_mutex_unlock(&S.mmu);
    return m ? m : S.m_other;
}

static void record(gw_request *r)
{
    const ks_requestinfo *ri = r->info;
    char lower[16], resbuf[64];
    const char *verb, *resource = "";

    if (ri != NULL) {
        verb = bounded_verb(ri->verb);
        resource = ri->is_resource_request ? bounded_resource(ri->resource, r->code, resbuf,
                                                              sizeof(resbuf))
                                           : "";
    } else {
        size_t i;
        for (i = 0; r->method[i] && i + 1 < sizeof(lower); i++)
            lower[i] = (char)(r->method[i] >= 'A' && r->method[i] <= 'Z' ? r->method[i] + 32
                                                                          : r->method[i]);
        lower[i] = '\0';
        verb = bounded_verb(lower);
    }
    if (r->code > 0)
        ks_metric_inc(requests_counter(r->code, verb, resource));
    if (strcmp(verb, "watch") != 0)
        ks_metric_observe(S.m_latency, (double)(mono_us() - r->received_mono_us) / 1e6);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    gw_request *r = *con_cls;

    if (r == NULL)
        return;
    *con_cls = NULL;
    if (r->counted) {
        ks_metric_dec(S.m_in_flight);
        int unqueued;
        pthread_mutex_lock(&r->mu);
        if (r->state == GW_DONE)
            record(r);
        unqueued = r->state == GW_DONE && !r->queued;
        pthread_mutex_unlock(&r->mu);
        /* an answer that was never queued (the connection ended first) */
        if (unqueued)
            gw_audit_record(r, r->resp_body, r->resp_len);
    }
    unlink_waiting(r);
    pthread_mutex_lock(&r->mu);
    r->conn = NULL;
    r->suspended = 0;
    r->abandoned = r->state != GW_DONE;
    unref_unlock(r);
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    gw_request *r = request_new(cls, conn, uri);

    if (r != NULL) {
        r->uri_at = uri;
        r->uri_len = strlen(uri);
    }
    return r;
}

/* libmicrohttpd reads the request line into its buffer and hands out
 * pointers into it: the target, then a NUL where the space was, then the
 * version. A raw NUL inside the target makes the C string we got shorter
 * than the target, so the bytes between its end and the version are not
 * just the separator. (When the version is not in that buffer, which
 * libmicrohttpd 0.9.75 never does, nothing can be told and the check
 * passes.) */
static int target_has_nul(const gw_request *r, const char *version)
{
    const char *end = r->uri_at + r->uri_len;

    if (r->uri_at == NULL || version <= end || version - end > 64)
        return 0;
    for (const char *p = end; p < version; p++)
        if (*p != '\0' && *p != ' ')
            return 1;
    return 0;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    gw *g = cls;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        long n = atomic_fetch_add(&S.connections, 1) + 1;
        /* over the cap: its requests get 503 with Retry-After */
        *socket_context = n > g->cfg->max_connections ? (void *)1 : NULL;
        ks_metric_inc(S.m_connections);
    } else {
        atomic_fetch_sub(&S.connections, 1);
        ks_metric_dec(S.m_connections);
    }
}

/* ---- the deadline sweeper ---- */

static void *sweeper_main(void *arg)
{
    gw *g = arg;
    char msg[128];

    snprintf(msg, sizeof(msg), "the request did not finish within %lld ms",
             g->cfg->request_timeout_ms);
    pthread_mutex_lock(&S.smu);
    while (S.sweeper_running) {
        struct timespec ts;
        int64_t now;

        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += GW_SWEEP_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&S.scond, &S.smu, &ts);
        if (!S.sweeper_running)
            break;
        pthread_mutex_unlock(&S.smu);
        now = mono_us();
        pthread_mutex_lock(&S.wmu);
        for (gw_request *r = S.waiting; r != NULL; r = r->wnext) {
            pthread_mutex_lock(&r->mu);
            if (r->state == GW_RUNNING && r->suspended && r->deadline_mono_us != 0 &&
                now >= r->deadline_mono_us) {
                answer_locked(r, 504, "Timeout", msg, 0);
                limit_hit("deadline");
            }
            pthread_mutex_unlock(&r->mu);
        }
        pthread_mutex_unlock(&S.wmu);
        pthread_mutex_lock(&S.smu);
    }
    pthread_mutex_unlock(&S.smu);
    return NULL;
}

/* ---- start and stop ---- */

static ks_status read_file(const char *path, char **out)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;

    if (f == NULL)
        return KS_FAIL(KS_ERR_IO, "cannot open %s", path);
    buf = malloc(GW_TLS_FILE_MAX + 1);
    if (buf == NULL) {
        fclose(f);
        return KS_FAIL(KS_ERR_NOMEM, "reading %s", path);
    }
    n = fread(buf, 1, GW_TLS_FILE_MAX + 1, f);
    fclose(f);
    if (n > GW_TLS_FILE_MAX) {
        free(buf);
        return KS_FAIL(KS_ERR_TOO_LARGE, "%s is larger than %d bytes", path, GW_TLS_FILE_MAX);
    }
    buf[n] = '\0';
    *out = buf;
    return KS_OK;
}

ks_status gw_server_start(gw *g)
{
    static const double lat_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,    0.25,  0.5,    1,     2.5,  5,     10, 30};
    char host[KS_ADDR_HOST_MAX + 1];
    struct sockaddr_storage ss;
    socklen_t sslen;
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO |
                     MHD_USE_ITC;
    unsigned slack;
    const union MHD_DaemonInfo *di;
    int port = 0;
    ks_status st;

    memset(&ss, 0, sizeof(ss));
    S.g = g;
    atomic_store(&S.stopping, 0);
    S.m_in_flight =
        ks_metrics_gauge("ks_gateway_requests_in_flight", "requests being served", NULL);
    S.m_latency = ks_metrics_histogram("ks_gateway_request_duration_seconds",
                                       "time from the request line to the answer (watches "
                                       "excluded)",
                                       NULL, lat_bounds, sizeof(lat_bounds) / sizeof(lat_bounds[0]));
    S.m_connections = ks_metrics_gauge("ks_gateway_connections", "open client connections", NULL);
    S.m_other = ks_metrics_counter("ks_gateway_requests_total",
                                   "requests answered, by code, verb and resource",
                                   "code=\"other\",verb=\"other\",resource=\"other\"");

    st = ks_addr_parse(g->cfg->http_addr, host, sizeof(host), &port);
    if (st)
        return st;
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        struct sockaddr_in *sa = (struct sockaddr_in *)&ss;
        sa->sin_family = AF_INET;
        sa->sin_port = htons((uint16_t)port);
        sslen = sizeof(*sa);
    } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&ss;
        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons((uint16_t)port);
        sslen = sizeof(*sa);
        flags |= MHD_USE_IPv6;
    } else {
        return KS_FAIL(KS_ERR_INVALID, "KS_HTTP_ADDR host %s is not an IP address", host);
    }
    (void)sslen;
    if ((g->cfg->tls_cert_file != NULL) != (g->cfg->tls_key_file != NULL))
        return KS_FAIL(KS_ERR_INVALID,
                       "KS_TLS_CERT_FILE and KS_TLS_KEY_FILE must be set together");
    if (g->cfg->tls_cert_file != NULL) {
        if ((st = read_file(g->cfg->tls_cert_file, &S.tls_cert)) ||
            (st = read_file(g->cfg->tls_key_file, &S.tls_key)))
            goto fail;
        flags |= MHD_USE_TLS;
    }
    /* libmicrohttpd refuses (closes) connections beyond its own limit; up to
     * there, ours beyond max-connections get a 503 with Retry-After. */
    slack = (unsigned)(g->cfg->max_connections / 8 + 16);
    if (S.tls_cert != NULL)
        g->daemon = MHD_start_daemon(
            flags, (uint16_t)port, NULL, NULL, on_request, g, MHD_OPTION_SOCK_ADDR,
            (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)g->cfg->workers,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)g->cfg->max_connections + slack,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)((g->cfg->idle_timeout_ms + 999) / 1000),
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)GW_CONN_MEMORY,
            MHD_OPTION_URI_LOG_CALLBACK, on_uri, g, MHD_OPTION_NOTIFY_COMPLETED, on_completed, g,
            MHD_OPTION_NOTIFY_CONNECTION, on_connection, g, MHD_OPTION_HTTPS_MEM_CERT,
            S.tls_cert, MHD_OPTION_HTTPS_MEM_KEY, S.tls_key, MHD_OPTION_END);
    else
        g->daemon = MHD_start_daemon(
            flags, (uint16_t)port, NULL, NULL, on_request, g, MHD_OPTION_SOCK_ADDR,
            (struct sockaddr *)&ss, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)g->cfg->workers,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)g->cfg->max_connections + slack,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)((g->cfg->idle_timeout_ms + 999) / 1000),
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)GW_CONN_MEMORY,
            MHD_OPTION_URI_LOG_CALLBACK, on_uri, g, MHD_OPTION_NOTIFY_COMPLETED, on_completed, g,
            MHD_OPTION_NOTIFY_CONNECTION, on_connection, g, MHD_OPTION_END);
    if (g->daemon == NULL) {
        st = KS_FAIL(KS_ERR_IO, "cannot listen on %s%s", g->cfg->http_addr,
                     S.tls_cert ? " (or the TLS certificate and key are not usable)" : "");
        goto fail;
    }
    S.sweeper_running = 1;
    if (pthread_create(&S.sweeper, NULL, sweeper_main, g) != 0) {
        S.sweeper_running = 0;
        MHD_stop_daemon(g->daemon);
        g->daemon = NULL;
        st = KS_FAIL(KS_ERR_INTERNAL, "cannot start the deadline thread");
        goto fail;
    }
    di = MHD_get_daemon_info(g->daemon, MHD_DAEMON_INFO_BIND_PORT);
    ks_info("gateway listening on %s port %u (%s, %lld workers)", host,
            di ? (unsigned)di->port : (unsigned)port, S.tls_cert ? "https" : "http",
            g->cfg->workers);
    return KS_OK;
fail:
    free(S.tls_cert);
    free(S.tls_key);
    S.tls_cert = S.tls_key = NULL;
    return st;
}

static size_t suspended_count(void)
{
    size_t n = 0;

    pthread_mutex_lock(&S.wmu);
    for (gw_request *r = S.waiting; r != NULL; r = r->wnext) {
        pthread_mutex_lock(&r->mu);
        n += r->suspended;
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_unlock(&S.wmu);
    return n;
}

void gw_server_stop(gw *g)
{
    struct timespec pause = {0, 10 * 1000 * 1000};
    MHD_socket ls;

    if (g == NULL || g->daemon == NULL)
        return;
    /* No new connections, and new requests on open ones get 503. */
    atomic_store(&S.stopping, 1);
    ls = MHD_quiesce_daemon(g->daemon);
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    /* Requests in flight finish while NATS is still up... */
    for (int i = 0; i < GW_DRAIN_MS / 10 && suspended_count() > 0; i++)
        nanosleep(&pause, NULL);
    /* ...or get a 503 now: libmicrohttpd must not stop with suspended
     * connections. A stage that answers later finds the request answered. */
    pthread_mutex_lock(&S.wmu);
    for (gw_request *r = S.waiting; r != NULL; r = r->wnext) {
        pthread_mutex_lock(&r->mu);
        if (r->state == GW_RUNNING && r->suspended)
            answer_locked(r, 503, "ServiceUnavailable", "the gateway is shutting down", 1);
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_unlock(&S.wmu);
    /* let the workers take them up (each resumed request leaves the list) */
    for (int i = 0; i < 50; i++) {
        size_t n;
        pthread_mutex_lock(&S.wmu);
        n = S.nwaiting;
        pthread_mutex_unlock(&S.wmu);
        if (n == 0)
            break;
        nanosleep(&pause, NULL);
    }
    if (S.sweeper_running) {
        pthread_mutex_lock(&S.smu);
        S.sweeper_running = 0;
        pthread_cond_broadcast(&S.scond);
        pthread_mutex_unlock(&S.smu);
        pthread_join(S.sweeper, NULL);
    }
    MHD_stop_daemon(g->daemon);
    g->daemon = NULL;
    free(S.tls_cert);
    free(S.tls_key);
    S.tls_cert = S.tls_key = NULL;
}
