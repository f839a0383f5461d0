/* proxy.c: /api, /apis, /version and /openapi to kube-apiserver
 * (DESIGN.md §3 step 4; docs/gateway-proxy.md).
 *
 * The chain has authenticated and authorized the request when dispatch.c
 * calls gw_proxy_start_request. The proxy then forwards it with the
 * gateway's own credentials (the client's Authorization never leaves), and
 * streams the answer back without buffering it whole.
 *
 * Threads. One transfer thread owns the curl multi handle and runs its
 * socket interface on an epoll set; nobody else touches a transfer's easy
 * handle once it is queued. The other threads talk to it through a queue of
 * transfers with pending work (start, unpause, cancel) and an eventfd:
 *
 *   HTTP worker / NATS thread   gw_proxy_start_request: build the easy
 *                               handle, queue it (never blocks)
 *   transfer thread             response head -> an MHD response from a
 *                               callback -> gw_respond_stream; body bytes
 *                               -> the transfer's buffer, resume the
 *                               connection if its reader is waiting
 *   HTTP worker                 the content reader: hand out buffered
 *                               bytes; none yet -> suspend the connection
 *                               and return 0 (libmicrohttpd's contract)
 *
 * Backpressure: past PX_BUF_HIGH buffered bytes the write callback pauses
 * the transfer; the reader asks for an unpause once it drained to
 * PX_BUF_LOW. A slow client so slows kube-apiserver instead of growing
 * memory.
 *
 * Lifetime of a transfer (px_xfer): reference counted. The transfer
 * thread holds one while the easy handle is in the multi handle, the MHD
 * response one until its free callback, and each queue entry one. The
 * request r is held (its chain reference, gw.h) until the head is
 * answered; after gw_respond_stream the proxy never touches r again, only
 * the connection, and only while it is suspended by the reader (so it
 * cannot be gone: libmicrohttpd neither times out nor closes a suspended
 * connection). */
#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "gw.h"
#include "kscore/v1/iam.pb-c.h"
#include "kube.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "requestinfo.h"

#define PX_BUF_HIGH (256u * 1024u)      /* buffered body bytes before the transfer pauses */
#define PX_BUF_LOW (64u * 1024u)        /* ... and resumes */
#define PX_BLOCK (32u * 1024u)          /* libmicrohttpd's read size hint */
#define PX_MAX_RESP_HEADERS 100         /* upstream response headers (502 beyond) */
#define PX_MAX_RESP_HEADER_BYTES (64u * 1024u)
#define PX_MAX_TRANSFERS 8192           /* in flight, watches included (503 beyond) */
#define PX_CONNECT_TIMEOUT_MS 5000
#define PX_MAX_CONNECTS 256             /* idle upstream connections kept */
#define PX_MAX_IMPERSONATE 16           /* Impersonate-* values in one request (400 beyond) */
#define PX_IMP_VALUE_MAX 256
#define PX_IMP_KEY_MAX 128
#define PX_DRAIN_MS 1000
#define PX_TICK_MS 1000                 /* head deadlines of long-running requests, token file */
#define PX_TOKEN_REFRESH_S KS_KUBE_TOKEN_REFRESH_S
#define PX_AUTHZ_SUBJECT "ks.iam.authz"
#define PX_AUTHZ_MAX_REPLY (64u * 1024u)
#define PX_MAX_EVENTS 64
#define PX_POOL_MAX 64                  /* idle easy handles kept for reuse */

/* pending work of a queued transfer */
#define KICK_ADD 1
#define KICK_UNPAUSE 2
#define KICK_CANCEL 4

/* requests of the transfer thread as a whole */
#define REQ_END_LONG 1    /* end watches and other long-running streams cleanly */
#define REQ_ABORT_ALL 2   /* cut everything */
#define REQ_QUIT 4

typedef struct px_state px_state;
typedef struct px_xfer px_xfer;

struct px_xfer {
    px_state *p;
    atomic_int refs;
    pthread_mutex_t mu;              /* the body fields below */

    /* set up by the thread that starts the request, then the transfer
     * thread's alone */
    gw_request *r;                   /* until the head is answered */
    struct MHD_Connection *conn;
    CURL *h;
    struct curl_slist *hdrs;
    char errbuf[CURL_ERROR_SIZE];
    char request_id[GW_REQUEST_ID_MAX];
    char method[16];
    int long_running;
    int64_t start_mono_us;
    int64_t head_deadline_mono_us;   /* long-running: the head must come by then */
    char *head;                      /* "name\0value\0" pairs of the response head */
    size_t head_len, head_cap, nhead;
    int head_bad;                    /* 1: over the caps, 2: out of memory */
    long long content_length;        /* -1: unknown */
    int head_done;                   /* the whole head is in */
    long code;                       /* its status code */
    int answered;                    /* the head went to gw_respond_stream (or an error) */
    int in_multi;
    px_xfer *prev, *next;            /* the active list */

    /* the queue (under p->qmu) */
    int pending;                     /* KICK_* */
    int queued;
    px_xfer *qnext;

    /* the body (under mu) */
    char *buf;
    size_t off, len, cap;
    int paused;                      /* the write callback paused the transfer */
    int unpause_queued;
    int suspended;                   /* the reader suspended the connection */
    int done;                        /* no more bytes will come */
    int failed;                      /* ... because the transfer broke */
    int gone;                        /* the MHD response was freed */
};

struct px_state {
    gw *g;
    ks_kube_config kc;
    pthread_mutex_t tmu;             /* auth_line */
    char *auth_line;                 /* "Authorization: Bearer ..." or NULL */
    int64_t token_read_mono_s;

    CURLM *multi;
    int epfd, evfd;
    int64_t timer_at_us;             /* curl's timer, monotonic; 0: none */
    pthread_t thread;
    int thread_running;
    px_xfer *active;                 /* in the multi handle (transfer thread) */

    pthread_mutex_t qmu;             /* the queue, requests, generations */
    pthread_cond_t qcond;
    px_xfer *qhead, *qtail;
    int requests;                    /* REQ_* */
    uint64_t gen_asked, gen_done;

    pthread_mutex_t pmu;             /* the pool */
    CURL *pool[PX_POOL_MAX];         /* reset easy handles: an easy handle holds
                                        ~100 KB of buffers, allocated once */
    size_t npool;

    atomic_int stopping;
    atomic_int ntransfers;           /* easy handles in the multi handle or queued to be */
    atomic_int nresponses;           /* MHD responses not yet freed */
    int drained;
};

static ks_metric *m_head_seconds, *m_streams, *m_imp_allow, *m_imp_deny;
static ks_metric *m_err_connect, *m_err_timeout, *m_err_tls, *m_err_broken, *m_err_head,
    *m_err_busy, *m_err_other;

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- the gateway's own credentials ---- */

static void wipe_free(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* A bearer token line from a token (trailing blanks dropped). NULL when the
 * token is empty or holds control characters or blanks. */
static char *auth_line_from(const char *tok, size_t n)
{
    static const char prefix[] = "Authorization: Bearer ";
    char *line;

    while (n > 0 && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' ||
                     tok[n - 1] == '\t'))
        n--;
    if (n == 0)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)tok[i] <= ' ' || tok[i] == 0x7f)
            return NULL;
    line = malloc(sizeof(prefix) + n);
    if (line == NULL)
        return NULL;
    memcpy(line, prefix, sizeof(prefix) - 1);
    memcpy(line + sizeof(prefix) - 1, tok, n);
    line[sizeof(prefix) - 1 + n] = '\0';
    return line;
}

/* Read the token file into a new Authorization line. */
static ks_status token_file_line(const char *path, char **out)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL, *line = NULL;
    size_t n;
    ks_status st = KS_ERR_IO;

    if (f == NULL)
        return KS_FAIL(KS_ERR_IO, "proxy: cannot open the token file %s", path);
    buf = malloc(KS_KUBE_MAX_TOKEN + 1);
    if (buf == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "proxy: token file");
        goto out;
    }
    n = fread(buf, 1, KS_KUBE_MAX_TOKEN + 1, f);
    if (n > KS_KUBE_MAX_TOKEN) {
        st = KS_FAIL(KS_ERR_TOO_LARGE, "proxy: the token file %s is too large", path);
        goto out;
    }
    line = auth_line_from(buf, n);
    if (line == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "proxy: the token file %s is empty or malformed", path);
        goto out;
    }
    *out = line;
    st = KS_OK;
out:
    if (buf != NULL) {
        explicit_bzero(buf, KS_KUBE_MAX_TOKEN + 1);
        free(buf);
    }
    fclose(f);
    return st;
}

/* On the transfer thread: re-read the token file when it is due. */
static void token_refresh(px_state *p)
{
    int64_t now = mono_us() / 1000000;
    char *fresh = NULL;

    if (p->kc.token_file == NULL || now - p->token_read_mono_s < PX_TOKEN_REFRESH_S)
        return;
    p->token_read_mono_s = now;
    if (token_file_line(p->kc.token_file, &fresh) != KS_OK) {
        ks_warn("proxy: keeping the previous kube-apiserver token: %s", ks_status_last());
        return;
    }
    pthread_mutex_lock(&p->tmu);
    wipe_free(p->auth_line);
    p->auth_line = fresh;
    pthread_mutex_unlock(&p->tmu);
}

static CURL *handle_get(px_state *p)
{
    CURL *h = NULL;

    pthread_mutex_lock(&p->pmu);
    if (p->npool > 0)
        h = p->pool[--p->npool];
    pthread_mutex_unlock(&p->pmu);
    return h != NULL ? h : curl_easy_init();
}

/* A handle out of the multi handle goes back, reset (its connection stays
 * in the multi handle's cache). */
static void handle_put(px_state *p, CURL *h)
{
    curl_easy_reset(h);
    pthread_mutex_lock(&p->pmu);
    if (p->npool < PX_POOL_MAX) {
        p->pool[p->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&p->pmu);
    if (h != NULL)
        curl_easy_cleanup(h);
}

static void headers_free(struct curl_slist *hdrs)
{
    for (struct curl_slist *n = hdrs; n != NULL; n = n->next)
        if (strncasecmp(n->data, "Authorization:", 14) == 0)
            explicit_bzero(n->data, strlen(n->data));
    curl_slist_free_all(hdrs);
}

/* ---- transfers: references and the queue ---- */

static void xfer_unref(px_xfer *x)
{
    if (x == NULL || atomic_fetch_sub(&x->refs, 1) != 1)
        return;
    if (x->h != NULL)
        curl_easy_cleanup(x->h);
    headers_free(x->hdrs);
    free(x->head);
    free(x->buf);
    pthread_mutex_destroy(&x->mu);
    free(x);
}

static void wake(px_state *p)
{
    uint64_t one = 1;
    ssize_t n = write(p->evfd, &one, sizeof(one));
    (void)n; /* EAGAIN: the counter is already non-zero, the thread wakes anyway */
}

/* Give the transfer thread work on x. Never blocks beyond the queue lock. */
static void kick(px_xfer *x, int what)
{
    px_state *p = x->p;
    int enqueue;

    pthread_mutex_lock(&p->qmu);
    x->pending |= what;
    enqueue = !x->queued;
    if (enqueue) {
        x->queued = 1;
        atomic_fetch_add(&x->refs, 1);
        x->qnext = NULL;
        if (p->qtail)
            p->qtail->qnext = x;
        else
            p->qhead = x;
        p->qtail = x;
    }
    pthread_mutex_unlock(&p->qmu);
    if (enqueue)
        wake(p);
}

/* Ask the transfer thread for REQ_* and wait until it did it. */
static void ask_thread(px_state *p, int req)
{
    uint64_t gen;

    pthread_mutex_lock(&p->qmu);
    p->requests |= req;
    gen = ++p->gen_asked;
    pthread_mutex_unlock(&p->qmu);
    wake(p);
    pthread_mutex_lock(&p->qmu);
    while (p->thread_running && p->gen_done < gen)
        pthread_cond_wait(&p->qcond, &p->qmu);
    pthread_mutex_unlock(&p->qmu);
}

/* ---- the HTTP side: the content reader ---- */

static ssize_t px_read(void *cls, uint64_t pos, char *out, size_t max)
{
    px_xfer *x = cls;
    size_t avail, n;
    int unpause = 0;
    ssize_t ret;

    (void)pos;
    pthread_mutex_lock(&x->mu);
    avail = x->len - x->off;
    if (avail > 0) {
        n = avail < max ? avail : max;
        memcpy(out, x->buf + x->off, n);
        x->off += n;
        if (x->off == x->len)
            x->off = x->len = 0;
        if (x->paused && !x->unpause_queued && x->len - x->off <= PX_BUF_LOW)
            unpause = x->unpause_queued = 1;
        ret = (ssize_t)n;
    } else if (x->done) {
        ret = x->failed ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        /* Nothing yet: returning 0 makes libmicrohttpd ask again at once,
         * so the connection sleeps until the transfer thread has bytes. */
        if (x->paused && !x->unpause_queued)
            unpause = x->unpause_queued = 1;
        x->suspended = 1;
        MHD_suspend_connection(x->conn);
        ret = 0;
    }
    pthread_mutex_unlock(&x->mu);
    if (unpause)
        kick(x, KICK_UNPAUSE);
    return ret;
}

/* libmicrohttpd is done with the response: the client has it all, went
 * away, or the server dropped the answer (deadline, shutdown). */
static void px_free(void *cls)
{
    px_xfer *x = cls;
    int cancel;

    pthread_mutex_lock(&x->mu);
    x->gone = 1;
    x->suspended = 0;
    cancel = !x->done;
    pthread_mutex_unlock(&x->mu);
    ks_metric_dec(m_streams);
    atomic_fetch_sub(&x->p->nresponses, 1);
    if (cancel)
        kick(x, KICK_CANCEL);
    xfer_unref(x);
}

/* ---- the transfer thread: curl callbacks ---- */

static int hop_by_hop(const char *name, size_t n)
{
    static const char *const drop[] = {"Connection", "Keep-Alive", "Proxy-Connection", "TE",
                                       "Trailer", "Transfer-Encoding", "Upgrade",
                                       "Content-Length", "X-Request-Id",
                                       "Audit-ID" /* kube echoes ours; the gateway sets it */};
    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        if (strlen(drop[i]) == n && strncasecmp(name, drop[i], n) == 0)
            return 1;
    return 0;
}

/* An RFC 9110 field name (a token) and a value without control bytes
 * (HTAB allowed): nothing kube-apiserver sends may split the client's
 * response. */
static int field_ok(const char *name, size_t nl, const char *value, size_t vl)
{
    for (size_t i = 0; i < nl; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= ' ' || c >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", c) != NULL)
            return 0;
    }
    for (size_t i = 0; i < vl; i++) {
        unsigned char c = (unsigned char)value[i];
        if ((c < ' ' && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

static void head_reset(px_xfer *x)
{
    x->head_len = 0;
    x->nhead = 0;
    x->content_length = -1;
}

static int head_add(px_xfer *x, const char *name, size_t nl, const char *value, size_t vl)
{
    size_t need = x->head_len + nl + vl + 2;

    if (x->nhead >= PX_MAX_RESP_HEADERS || need > PX_MAX_RESP_HEADER_BYTES) {
        x->head_bad = 1;
        return -1;
    }
    if (need > x->head_cap) {
        size_t cap = x->head_cap ? x->head_cap : 1024;
        char *nb;
        while (cap < need)
            cap *= 2;
        nb = realloc(x->head, cap);
        if (nb == NULL) {
            x->head_bad = 2;
            return -1;
        }
        x->head = nb;
        x->head_cap = cap;
    }
    memcpy(x->head + x->head_len, name, nl);
    x->head[x->head_len + nl] = '\0';
    memcpy(x->head + x->head_len + nl + 1, value, vl);
    x->head[x->head_len + nl + 1 + vl] = '\0';
    x->head_len = need;
    x->nhead++;
    return 0;
}

/* The head is complete: hand a streaming response to the chain. Returns 0,
 * or -1 to abort the transfer (the error is answered when it ends). */
static int answer_head(px_xfer *x)
{
    struct MHD_Response *resp;
    gw_request *r = x->r;
    long code = x->code; /* (the easy handle may be gone already) */
    uint64_t size = MHD_SIZE_UNKNOWN;
    const char *p;

    if (x->head_bad)
        return -1;
    if (code == 204 || code == 304)
        size = 0;
    else if (x->content_length >= 0)
        size = (uint64_t)x->content_length;
    resp = MHD_create_response_from_callback(size, PX_BLOCK, px_read, x, px_free);
    if (resp == NULL) {
        x->head_bad = 2;
        return -1;
    }
    atomic_fetch_add(&x->refs, 1); /* the response's */
    atomic_fetch_add(&x->p->nresponses, 1);
    ks_metric_inc(m_streams);
    p = x->head;
    for (size_t i = 0; i < x->nhead; i++) {
        const char *name = p, *value = p + strlen(p) + 1;
        /* libmicrohttpd refuses what it manages itself; that is fine */
        (void)MHD_add_response_header(resp, name, value);
        p = value + strlen(value) + 1;
    }
    ks_metric_observe(m_head_seconds, (double)(mono_us() - x->start_mono_us) / 1e6);
    x->answered = 1;
    x->r = NULL;
    gw_respond_stream(r, (int)code, resp);
    return 0;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp)
{
    px_xfer *x = userp;
    size_t n = size * nmemb, len = n, nl;
    const char *colon, *v;

    if (x->answered)
        return n; /* trailers: not forwarded */
    while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
        len--;
    if (len == 0) {
        long code = 0;
        curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
        if (code < 200) { /* 1xx: the real head follows */
            head_reset(x);
            return n;
        }
        if (x->head_bad || code < 100 || code > 599)
            return 0;
        x->head_done = 1;
        x->code = code;
        /* A watch's head goes out at once (its first event may be minutes
         * away). Any other head waits for the first body bytes or the end,
         * so that the reader finds bytes and the connection is resumed once
         * instead of twice. */
        if (x->long_running)
            return answer_head(x) == 0 ? n : 0;
        return n;
    }
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) { /* a status line: a new head */
        head_reset(x);
        return n;
    }
    if (data[0] == ' ' || data[0] == '\t') { /* obsolete line folding */
        x->head_bad = 1;
        return 0;
    }
    colon = memchr(data, ':', len);
    if (colon == NULL || colon == data)
        return n; /* not a header: ignore */
    nl = (size_t)(colon - data);
    v = colon + 1;
    while (v < data + len && (*v == ' ' || *v == '\t'))
        v++;
    if (!field_ok(data, nl, v, (size_t)(data + len - v))) {
        x->head_bad = 1;
        return 0;
    }
    if (nl == 14 && strncasecmp(data, "Content-Length", 14) == 0) {
        char tmp[24];
        size_t vl = (size_t)(data + len - v);
        char *end;
        long long cl;
        if (vl > 0 && vl < sizeof(tmp)) {
            memcpy(tmp, v, vl);
            tmp[vl] = '\0';
            errno = 0;
            cl = strtoll(tmp, &end, 10);
            if (errno == 0 && *end == '\0' && cl >= 0 && tmp[0] != '+' && tmp[0] != '-')
                x->content_length = cl;
        }
        return n;
    }
    if (hop_by_hop(data, nl))
        return n;
    if (head_add(x, data, nl, v, (size_t)(data + len - v)) != 0)
        return 0;
    return n;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    px_xfer *x = userp;
    size_t n = size * nmemb, avail;

    pthread_mutex_lock(&x->mu);
    if (x->gone) {
        pthread_mutex_unlock(&x->mu);
        return 0; /* the client is gone: end the transfer */
    }
    avail = x->len - x->off;
    if (avail > 0 && avail + n > PX_BUF_HIGH) {
        x->paused = 1;
        pthread_mutex_unlock(&x->mu);
        return CURL_WRITEFUNC_PAUSE; /* curl keeps these bytes and offers them again */
    }
    if (x->len + n > x->cap) {
        if (x->off > 0) {
            memmove(x->buf, x->buf + x->off, avail);
            x->off = 0;
            x->len = avail;
        }
        if (x->len + n > x->cap) {
            size_t cap = x->cap ? x->cap : 16384;
            char *nb;
            while (cap < x->len + n)
                cap *= 2;
            nb = realloc(x->buf, cap);
            if (nb == NULL) {
                pthread_mutex_unlock(&x->mu);
                return 0;
            }
            x->buf = nb;
            x->cap = cap;
        }
    }
    memcpy(x->buf + x->len, data, n);
    x->len += n;
    if (x->suspended) {
        x->suspended = 0;
        MHD_resume_connection(x->conn);
    }
    pthread_mutex_unlock(&x->mu);
    if (!x->answered && answer_head(x) != 0)
        return 0;
    return n;
}

/* ---- the transfer thread: ending a transfer ---- */

typedef enum {
    END_CURL = 0,    /* curl finished it (rc says how) */
    END_CANCEL,      /* the client is gone */
    END_CLEAN,       /* shutdown: end a watch as kube-apiserver would (clean end) */
    END_CUT,         /* shutdown: cut */
} end_kind;

static void answer_error(px_xfer *x, CURLcode rc, end_kind how)
{
    gw_request *r = x->r;

    x->r = NULL;
    x->answered = 1;
    if (how == END_CLEAN || how == END_CUT) {
        gw_add_header(r, "Retry-After", "1");
        gw_respond_status(r, 503, "ServiceUnavailable", "the gateway is shutting down");
        return;
    }
    if (x->head_bad == 1) {
        ks_metric_inc(m_err_head);
        gw_respond_status(r, 502, "InternalError",
                          "kube-apiserver answered with a malformed header, or more than %d "
                          "headers or %u bytes of them",
                          PX_MAX_RESP_HEADERS, PX_MAX_RESP_HEADER_BYTES);
        return;
    }
    if (x->head_bad == 2) {
        gw_respond_status(r, 503, "ServiceUnavailable", "out of memory");
        return;
    }
    ks_warn("proxy: request %s: %s %s: %s", x->request_id, x->method, curl_easy_strerror(rc),
            x->errbuf[0] ? x->errbuf : "-");
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
        ks_metric_inc(m_err_connect);
        gw_add_header(r, "Retry-After", "1");
        gw_respond_status(r, 503, "ServiceUnavailable", "kube-apiserver cannot be reached");
        break;
    case CURLE_OPERATION_TIMEDOUT:
        ks_metric_inc(m_err_timeout);
        gw_respond_status(r, 504, "Timeout",
                          "kube-apiserver did not answer within the request's deadline");
        break;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
        ks_metric_inc(m_err_tls);
        gw_respond_status(r, 502, "InternalError",
                          "the TLS connection to kube-apiserver failed (see the gateway's log)");
        break;
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_WEIRD_SERVER_REPLY:
        ks_metric_inc(m_err_broken);
        gw_respond_status(r, 502, "InternalError",
                          "kube-apiserver closed the connection without an answer");
        break;
    default:
        ks_metric_inc(m_err_other);
        gw_respond_status(r, 502, "InternalError", "the request to kube-apiserver failed: %s",
                          curl_easy_strerror(rc));
        break;
    }
}

/* Take x out of the multi handle and finish it; drops the transfer
 * thread's reference. */
static void retire(px_state *p, px_xfer *x, CURLcode rc, end_kind how)
{
    if (!x->in_multi)
        return;
    x->in_multi = 0;
    if (x->prev)
        x->prev->next = x->next;
    else
        p->active = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
    curl_multi_remove_handle(p->multi, x->h);
    handle_put(p, x->h);
    x->h = NULL;
    headers_free(x->hdrs);
    x->hdrs = NULL;
    atomic_fetch_sub(&p->ntransfers, 1);
    if (!x->answered && x->head_done && how == END_CURL && rc == CURLE_OK) {
        /* a head without a body: the answer is complete */
        x->done = 1;
        if (answer_head(x) != 0)
            answer_error(x, CURLE_OUT_OF_MEMORY, how);
    } else if (!x->answered) {
        answer_error(x, rc, how);
    } else {
        pthread_mutex_lock(&x->mu);
        x->done = 1;
        if (how == END_CURL) {
            x->failed = rc != CURLE_OK;
            if (rc != CURLE_OK && !x->gone) {
                ks_metric_inc(rc == CURLE_OPERATION_TIMEDOUT ? m_err_timeout : m_err_broken);
                ks_info("proxy: request %s: the stream from kube-apiserver broke: %s",
                        x->request_id, x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
            }
        } else {
            x->failed = how == END_CUT;
        }
        if (x->suspended) {
            x->suspended = 0;
            MHD_resume_connection(x->conn);
        }
        pthread_mutex_unlock(&x->mu);
    }
    xfer_unref(x);
}

static void add_transfer(px_state *p, px_xfer *x)
{
    CURLMcode mc;

    if (atomic_load(&p->stopping)) {
        x->in_multi = 1; /* so that retire answers and releases */
        x->next = p->active;
        if (p->active)
            p->active->prev = x;
        p->active = x;
        /* not really added: remove_handle on a handle not in the multi is harmless */
        retire(p, x, CURLE_OK, END_CUT);
        return;
    }
    mc = curl_multi_add_handle(p->multi, x->h);
    x->in_multi = 1;
    x->next = p->active;
    if (p->active)
        p->active->prev = x;
    p->active = x;
    if (mc != CURLM_OK) {
        ks_error("proxy: curl_multi_add_handle: %s", curl_multi_strerror(mc));
        retire(p, x, CURLE_OUT_OF_MEMORY, END_CURL);
    }
}

static void unpause_transfer(px_xfer *x)
{
    pthread_mutex_lock(&x->mu);
    x->paused = 0;
    x->unpause_queued = 0;
    pthread_mutex_unlock(&x->mu);
    if (x->in_multi)
        curl_easy_pause(x->h, CURLPAUSE_CONT); /* may call on_body at once */
}

/* ---- the transfer thread: the loop ---- */

static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    px_state *p = userp;
    struct epoll_event ev;

    (void)e;
    (void)socketp;
    memset(&ev, 0, sizeof(ev));
    ev.data.fd = s;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, s, NULL);
        return 0;
    }
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (epoll_ctl(p->epfd, EPOLL_CTL_MOD, s, &ev) != 0 && errno == ENOENT &&
        epoll_ctl(p->epfd, EPOLL_CTL_ADD, s, &ev) != 0)
        ks_error("proxy: epoll_ctl: %s", strerror(errno));
    return 0;
}

static int on_timer(CURLM *m, long timeout_ms, void *userp)
{
    px_state *p = userp;

    (void)m;
    p->timer_at_us = timeout_ms < 0 ? 0 : mono_us() + (int64_t)timeout_ms * 1000;
    if (timeout_ms == 0)
        p->timer_at_us = 1; /* at once (any time in the past) */
    return 0;
}

static void check_done(px_state *p)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(p->multi, &left)) != NULL) {
        px_xfer *x = NULL;
        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        if (x != NULL)
            retire(p, x, msg->data.result, END_CURL);
    }
}

/* Work queued by other threads, then the thread-wide requests. Returns 1
 * when asked to quit. */
static int take_work(px_state *p)
{
    px_xfer *list, *x;
    int req;
    uint64_t gen;

    pthread_mutex_lock(&p->qmu);
    list = p->qhead;
    p->qhead = p->qtail = NULL;
    req = p->requests;
    p->requests = 0;
    gen = p->gen_asked;
    pthread_mutex_unlock(&p->qmu);
    while ((x = list) != NULL) {
        int what;
        pthread_mutex_lock(&p->qmu);
        list = x->qnext;
        what = x->pending;
        x->pending = 0;
        x->queued = 0;
        pthread_mutex_unlock(&p->qmu);
        if (what & KICK_ADD)
            add_transfer(p, x);
        if (what & KICK_CANCEL)
            retire(p, x, CURLE_OK, END_CANCEL);
        else if (what & KICK_UNPAUSE)
            unpause_transfer(x);
        xfer_unref(x); /* the queue's */
    }
    if (req & REQ_END_LONG) {
        for (px_xfer *n, *y = p->active; y != NULL; y = n) {
            n = y->next;
            if (y->long_running)
                retire(p, y, CURLE_OK, END_CLEAN);
        }
    }
    if (req & (REQ_ABORT_ALL | REQ_QUIT)) {
        while (p->active != NULL)
            retire(p, p->active, CURLE_OK, END_CUT);
    }
    if (gen != 0) {
        pthread_mutex_lock(&p->qmu);
        if (gen > p->gen_done)
            p->gen_done = gen;
        pthread_cond_broadcast(&p->qcond);
        pthread_mutex_unlock(&p->qmu);
    }
    return (req & REQ_QUIT) != 0;
}

/* 1 when the client of a suspended connection has hung up. libmicrohttpd
 * does not watch a suspended connection's socket, so a watch whose client
 * went away would otherwise live until its next two events (the first
 * write to a closed socket succeeds). The socket cannot be closed while
 * the connection is suspended. */
static int client_hung_up(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct pollfd pfd;

    if (ci == NULL)
        return 0;
    pfd.fd = ci->connect_fd;
    pfd.events = POLLRDHUP;
    pfd.revents = 0;
    return poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

/* Once a tick: long-running requests have no total timeout, but their head
 * must come within the request timeout; idle streams whose client left are
 * ended; the token file is re-read when due. */
static void tick(px_state *p)
{
    int64_t now = mono_us();

    for (px_xfer *n, *x = p->active; x != NULL; x = n) {
        int gone;
        n = x->next;
        if (!x->answered) {
            if (x->head_deadline_mono_us != 0 && now >= x->head_deadline_mono_us)
                retire(p, x, CURLE_OPERATION_TIMEDOUT, END_CURL);
            continue;
        }
        pthread_mutex_lock(&x->mu);
        gone = x->suspended && !x->gone && client_hung_up(x->conn);
        pthread_mutex_unlock(&x->mu);
        if (gone)
            retire(p, x, CURLE_OK, END_CUT);
    }
    token_refresh(p);
}

static void *transfer_main(void *arg)
{
    px_state *p = arg;
    struct epoll_event evs[PX_MAX_EVENTS];
    int64_t next_tick = mono_us() + PX_TICK_MS * 1000;
    int running;

    for (;;) {
        int64_t now, wait_ms;
        int n;

        if (take_work(p))
            break;
        now = mono_us();
        wait_ms = (next_tick - now) / 1000;
        if (p->timer_at_us != 0) {
            int64_t t = p->timer_at_us <= now ? 0 : (p->timer_at_us - now + 999) / 1000;
            if (t < wait_ms)
                wait_ms = t;
        }
        if (wait_ms < 0)
            wait_ms = 0;
        n = epoll_wait(p->epfd, evs, PX_MAX_EVENTS, (int)wait_ms);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd, mask = 0;
            if (fd == p->evfd) {
                uint64_t v;
                ssize_t rd = read(p->evfd, &v, sizeof(v));
                (void)rd;
                continue;
            }
            if (evs[i].events & EPOLLIN)
                mask |= CURL_CSELECT_IN;
            if (evs[i].events & EPOLLOUT)
                mask |= CURL_CSELECT_OUT;
            if (evs[i].events & (EPOLLERR | EPOLLHUP))
                mask |= CURL_CSELECT_ERR;
            curl_multi_socket_action(p->multi, fd, mask, &running);
        }
        now = mono_us();
        if (p->timer_at_us != 0 && now >= p->timer_at_us) {
            p->timer_at_us = 0;
            curl_multi_socket_action(p->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        check_done(p);
        if (now >= next_tick) {
            tick(p);
            next_tick = now + PX_TICK_MS * 1000;
        }
    }
    check_done(p);
    pthread_mutex_lock(&p->qmu);
    p->thread_running = 0;
    p->gen_done = p->gen_asked;
    pthread_cond_broadcast(&p->qcond);
    pthread_mutex_unlock(&p->qmu);
    return NULL;
}

/* ---- starting a transfer (the chain's thread) ---- */

static int is_long_running(const ks_requestinfo *ri)
{
    static const char *const subs[] = {"attach", "exec", "proxy", "log", "portforward"};

    if (strcmp(ri->verb, "watch") == 0 || strcmp(ri->verb, "proxy") == 0)
        return 1;
    for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++)
        if (strcmp(ri->subresource, subs[i]) == 0)
            return 1;
    return 0;
}

/* 1 when name is listed in the client's Connection header (so it is
 * hop-by-hop for this request). */
static int in_connection_header(const char *conn, const char *name)
{
    size_t nl = strlen(name);

    for (const char *s = conn; s != NULL && *s;) {
        const char *e = strchr(s, ',');
        size_t l = e ? (size_t)(e - s) : strlen(s);
        while (l > 0 && (*s == ' ' || *s == '\t')) {
            s++;
            l--;
        }
        while (l > 0 && (s[l - 1] == ' ' || s[l - 1] == '\t'))
            l--;
        if (l == nl && strncasecmp(s, name, nl) == 0)
            return 1;
        s = e ? e + 1 : NULL;
    }
    return 0;
}

/* Request headers that do not go upstream. */
static int drop_request_header(const char *name, const char *connection)
{
    static const char *const drop[] = {
        "Authorization", "Proxy-Authorization", "Cookie", "Host", "Content-Length",
        "Expect", "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "X-Forwarded-For", "X-Request-Id"};

    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
        if (strcasecmp(name, drop[i]) == 0)
            return 1;
    /* impersonation is decided here; front-proxy identity headers are never
     * a client's to set */
    if (strncasecmp(name, "Impersonate-", 12) == 0 || strncasecmp(name, "X-Remote-", 9) == 0)
        return 1;
    return connection != NULL && in_connection_header(connection, name);
}

static int hdr_append(struct curl_slist **l, const char *line)
{
    struct curl_slist *n = curl_slist_append(*l, line);

    if (n == NULL)
        return -1;
    *l = n;
    return 0;
}

/* "Name: value" (or "Name;" for an empty value, curl's way) onto the list. */
static int hdr_append_kv(struct curl_slist **l, const char *name, const char *value)
{
    size_t need = strlen(name) + strlen(value) + 3;
    char *line = malloc(need);
    int rc;

    if (line == NULL)
        return -1;
    if (value[0] == '\0')
        snprintf(line, need, "%s;", name);
    else
        snprintf(line, need, "%s: %s", name, value);
    rc = hdr_append(l, line);
    free(line);
    return rc;
}

#define SETOPT(opt, val)                                 \
    do {                                                 \
        if (cc == CURLE_OK)                              \
            cc = curl_easy_setopt(h, (opt), (val));      \
    } while (0)

/* Build the easy handle for r. Returns 0, or an HTTP code after answering. */
static int xfer_setup(px_state *p, px_xfer *x, gw_request *r, const ks_requestinfo *ri)
{
    const ks_kube_config *kc = &p->kc;
    const char *connection = gw_header(r, "Connection"), *xff = gw_header(r, "X-Forwarded-For");
    struct curl_slist *l = NULL;
    CURLcode cc = CURLE_OK;
    CURL *h;
    char *url = NULL;
    size_t need;
    int has_accept = 0, has_ct = 0, rc = 0;
    int64_t left;

    h = handle_get(p);
    if (h == NULL)
        goto nomem;
    x->h = h;
    need = strlen(kc->server) + strlen(ri->raw_path) + strlen(r->raw_query) + 2;
    url = malloc(need);
    if (url == NULL)
        goto nomem;
    snprintf(url, need, "%s%s%s%s", kc->server, ri->raw_path, r->raw_query[0] ? "?" : "",
             r->raw_query);

    for (size_t i = 0; i < r->nheaders; i++) {
        const gw_header_kv *hv = &r->headers[i];
        if (drop_request_header(hv->name, connection))
            continue;
        has_accept |= strcasecmp(hv->name, "Accept") == 0;
        has_ct |= strcasecmp(hv->name, "Content-Type") == 0;
        if (strcasecmp(hv->name, "Audit-ID") == 0)
            continue; /* the gateway's own auditID goes up instead */
        if (hdr_append_kv(&l, hv->name, hv->value) != 0)
            goto nomem;
    }
    /* curl's own defaults would change the request: no Accept: */
    if (!has_accept && hdr_append(&l, "Accept:") != 0)
        goto nomem;
    if (!has_ct && r->body_len > 0 && hdr_append(&l, "Content-Type:") != 0)
        goto nomem;
    if (hdr_append(&l, "Expect:") != 0)
        goto nomem;
    /* kube-apiserver's audit log then names the same request as ours */
    if (hdr_append_kv(&l, "Audit-ID", r->audit_id) != 0)
        goto nomem;
    if (r->source_ip[0] != '\0') {
        /* the client's list (already within the 16 KiB of headers), then the peer */
        size_t vn = (xff ? strlen(xff) + 2 : 0) + strlen(r->source_ip) + 1;
        char *v = malloc(vn);
        int bad;
        if (v == NULL)
            goto nomem;
        snprintf(v, vn, "%s%s%s", xff ? xff : "", xff ? ", " : "", r->source_ip);
        bad = hdr_append_kv(&l, "X-Forwarded-For", v) != 0;
        free(v);
        if (bad)
            goto nomem;
    }
    pthread_mutex_lock(&p->tmu);
    if (p->auth_line != NULL && hdr_append(&l, p->auth_line) != 0) {
        pthread_mutex_unlock(&p->tmu);
        goto nomem;
    }
    pthread_mutex_unlock(&p->tmu);
    x->hdrs = l;
    l = NULL;

    SETOPT(CURLOPT_URL, url);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_PATH_AS_IS, 1L);
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_HTTPHEADER, x->hdrs);
    SETOPT(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(CURLOPT_TCP_KEEPIDLE, 30L);
    SETOPT(CURLOPT_TCP_KEEPINTVL, 10L);
    SETOPT(CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(CURLOPT_HEADERDATA, x);
    SETOPT(CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(CURLOPT_WRITEDATA, x);
    SETOPT(CURLOPT_PRIVATE, (char *)x);
    SETOPT(CURLOPT_ERRORBUFFER, x->errbuf);
    left = gw_ms_left(r);
    if (x->long_running || left < 0) {
        /* no total timeout; the head's deadline is tick()'s */
        x->head_deadline_mono_us = mono_us() + p->g->cfg->request_timeout_ms * 1000;
        SETOPT(CURLOPT_CONNECTTIMEOUT_MS, (long)PX_CONNECT_TIMEOUT_MS);
    } else {
        SETOPT(CURLOPT_TIMEOUT_MS, (long)left);
        SETOPT(CURLOPT_CONNECTTIMEOUT_MS,
               (long)(left < PX_CONNECT_TIMEOUT_MS ? left : PX_CONNECT_TIMEOUT_MS));
    }
    if (kc->insecure) {
        SETOPT(CURLOPT_SSL_VERIFYPEER, 0L);
        SETOPT(CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (kc->ca_file != NULL || kc->ca_data != NULL) {
        SETOPT(CURLOPT_CAPATH, (char *)NULL); /* the cluster CA only */
        if (kc->ca_file != NULL) {
            SETOPT(CURLOPT_CAINFO, kc->ca_file);
        } else {
            struct curl_blob b = {kc->ca_data, kc->ca_data_len, CURL_BLOB_COPY};
            SETOPT(CURLOPT_CAINFO_BLOB, &b);
        }
    }
    if (kc->cert_file != NULL) {
        SETOPT(CURLOPT_SSLCERTTYPE, "PEM");
        SETOPT(CURLOPT_SSLCERT, kc->cert_file);
    } else if (kc->cert_data != NULL) {
        struct curl_blob b = {kc->cert_data, kc->cert_data_len, CURL_BLOB_COPY};
        SETOPT(CURLOPT_SSLCERTTYPE, "PEM");
        SETOPT(CURLOPT_SSLCERT_BLOB, &b);
    }
    if (kc->key_file != NULL) {
        SETOPT(CURLOPT_SSLKEYTYPE, "PEM");
        SETOPT(CURLOPT_SSLKEY, kc->key_file);
    } else if (kc->key_data != NULL) {
        struct curl_blob b = {kc->key_data, kc->key_data_len, CURL_BLOB_COPY};
        SETOPT(CURLOPT_SSLKEYTYPE, "PEM");
        SETOPT(CURLOPT_SSLKEY_BLOB, &b);
    }
    if (strcmp(r->method, "GET") == 0) {
        SETOPT(CURLOPT_HTTPGET, 1L);
    } else if (strcmp(r->method, "HEAD") == 0) {
        SETOPT(CURLOPT_NOBODY, 1L);
    } else {
        if (r->body_len > 0 || strcmp(r->method, "POST") == 0 || strcmp(r->method, "PUT") == 0 ||
            strcmp(r->method, "PATCH") == 0) {
            SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
            SETOPT(CURLOPT_COPYPOSTFIELDS, r->body ? r->body : "");
        }
        if (strcmp(r->method, "POST") != 0)
            SETOPT(CURLOPT_CUSTOMREQUEST, r->method);
    }
    if (cc != CURLE_OK) {
        ks_error("proxy: curl option: %s", curl_easy_strerror(cc));
        gw_respond_status(r, 500, "InternalError", "cannot set up the request to kube-apiserver");
        rc = 500;
    }
    free(url);
    return rc;
nomem:
    headers_free(l);
    free(url);
    gw_respond_status(r, 503, "ServiceUnavailable", "out of memory");
    return 503;
}

/* Forward r (authorized, impersonation settled). Answers r one way or the
 * other, now or from the transfer thread. */
static void px_begin(px_state *p, gw_request *r)
{
    const ks_requestinfo *ri = r->info;
    px_xfer *x;

    if (atomic_load(&p->stopping)) {
        gw_add_header(r, "Retry-After", "1");
        gw_respond_status(r, 503, "ServiceUnavailable", "the gateway is shutting down");
        return;
    }
    if (atomic_fetch_add(&p->ntransfers, 1) >= PX_MAX_TRANSFERS) {
        atomic_fetch_sub(&p->ntransfers, 1);
        ks_metric_inc(m_err_busy);
        gw_add_header(r, "Retry-After", "1");
        gw_respond_status(r, 503, "ServiceUnavailable",
                          "too many requests to kube-apiserver in flight (%d)", PX_MAX_TRANSFERS);
        return;
    }
    x = calloc(1, sizeof(*x));
    if (x == NULL) {
        atomic_fetch_sub(&p->ntransfers, 1);
        gw_respond_status(r, 503, "ServiceUnavailable", "out of memory");
        return;
    }
    pthread_mutex_init(&x->mu, NULL);
    atomic_init(&x->refs, 1); /* the transfer thread's */
    x->p = p;
    x->r = r;
    pthread_mutex_lock(&r->mu);
    x->conn = r->conn; /* NULL once the client is gone: then no reader ever runs */
    pthread_mutex_unlock(&r->mu);
    x->content_length = -1;
    x->start_mono_us = mono_us();
    x->long_running = is_long_running(ri);
    snprintf(x->request_id, sizeof(x->request_id), "%s", r->request_id);
    snprintf(x->method, sizeof(x->method), "%s", r->method);
    if (x->long_running)
        gw_clear_deadline(r); /* a watch has no total timeout */
    if (xfer_setup(p, x, r, ri) != 0) {
        atomic_fetch_sub(&p->ntransfers, 1);
        xfer_unref(x);
        return;
    }
    /* x's first reference is the transfer thread's from here on */
    kick(x, KICK_ADD);
}

/* ---- impersonation ---- */

typedef struct {
    const char *resource;      /* users, groups, serviceaccounts, uids, userextras */
    const char *group;         /* "" or authentication.k8s.io */
    char ns[KS_REQUESTINFO_NAME_MAX + 1];
    char name[PX_IMP_VALUE_MAX];
    char sub[PX_IMP_KEY_MAX];  /* userextras/<key> */
} px_check;

typedef struct {
    px_state *p;
    gw_request *r;
    size_t n, i;               /* checks, the one being asked */
    int final_asked;           /* the request itself, as the impersonated identity */
    px_check checks[PX_MAX_IMPERSONATE];
    char user[PX_IMP_VALUE_MAX];
    char groups[GW_MAX_GROUPS][128];
    size_t ngroups;
} px_imp;

static int request_abandoned(gw_request *r)
{
    int gone;

    pthread_mutex_lock(&r->mu);
    gone = r->abandoned;
    pthread_mutex_unlock(&r->mu);
    return gone;
}

/* Kubernetes' words for a denial (apiserver forbiddenMessage). */
static void forbid_resource(gw_request *r, const char *user, const char *verb, const char *group,
                            const char *resource, const char *sub, const char *name,
                            const char *ns)
{
    char target[400], res[300], where[400];

    snprintf(target, sizeof(target), "%s%s%s", resource, group[0] ? "." : "", group);
    snprintf(res, sizeof(res), "%s%s%s", resource, sub[0] ? "/" : "", sub);
    if (ns[0] != '\0')
        snprintf(where, sizeof(where), "in the namespace \"%s\"", ns);
    else
        snprintf(where, sizeof(where), "at the cluster scope");
    if (name[0] != '\0')
        gw_respond_status(r, 403, "Forbidden",
                          "%s \"%s\" is forbidden: User \"%s\" cannot %s resource \"%s\" in API "
                          "group \"%s\" %s",
                          target, name, user, verb, res, group, where);
    else
        gw_respond_status(r, 403, "Forbidden",
                          "%s is forbidden: User \"%s\" cannot %s resource \"%s\" in API group "
                          "\"%s\" %s",
                          target, user, verb, res, group, where);
}

static void imp_next(px_imp *m);

static void imp_fail(px_imp *m, int code, const char *reason, const char *msg)
{
    gw_respond_status(m->r, code, reason, "%s", msg);
    free(m);
}

static void on_imp_reply(ks_status st, ks_bus_msg *reply, void *arg)
{
    px_imp *m = arg;
    gw_request *r = m->r;
    Kscore__V1__AuthzResponse *resp = NULL;
    int allowed;

    if (st == KS_OK) {
        st = ks_codec_unpack(&kscore__v1__authz_response__descriptor, ks_bus_msg_data(reply),
                             ks_bus_msg_len(reply), PX_AUTHZ_MAX_REPLY,
                             (ProtobufCMessage **)&resp);
        ks_bus_msg_destroy(reply);
        if (st)
            st = KS_ERR_PROTOCOL;
    }
    if (st != KS_OK || request_abandoned(r)) {
        if (request_abandoned(r))
            imp_fail(m, 499, "ClientClosedRequest", "the client closed the connection");
        else if (st == KS_ERR_TIMEOUT)
            imp_fail(m, 504, "Timeout", "the authorization service (iam) did not answer in time");
        else if (st == KS_ERR_PROTOCOL)
            imp_fail(m, 502, "InternalError",
                     "the authorization service (iam) answered something unreadable");
        else
            imp_fail(m, 503, "ServiceUnavailable",
                     "the authorization service (iam) is not available");
        ks_codec_free(resp ? &resp->base : NULL);
        return;
    }
    allowed = resp->decision == KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_ALLOW;
    ks_codec_free(&resp->base);
    if (!allowed) {
        ks_metric_inc(m_imp_deny);
        if (m->final_asked) {
            const ks_requestinfo *ri = r->info;
            if (ri->is_resource_request)
                forbid_resource(r, m->user, ri->verb[0] ? ri->verb : "access", ri->api_group,
                                ri->resource, ri->subresource, ri->name, ri->namespace);
            else
                gw_respond_status(r, 403, "Forbidden",
                                  "forbidden: User \"%s\" cannot %s path \"%s\"", m->user,
                                  ri->verb, ri->path);
        } else {
            const px_check *c = &m->checks[m->i];
            forbid_resource(r, r->username, "impersonate", c->group, c->resource, c->sub,
                            c->name, c->ns);
        }
        free(m);
        return;
    }
    if (m->final_asked) {
        ks_metric_inc(m_imp_allow);
        px_begin(m->p, r);
        free(m);
        return;
    }
    m->i++;
    imp_next(m);
}

/* Ask iam the next question: each impersonation, then the request itself
 * as the impersonated identity. */
static void imp_next(px_imp *m)
{
    gw_request *r = m->r;
    Kscore__V1__AuthzRequest req = KSCORE__V1__AUTHZ_REQUEST__INIT;
    Kscore__V1__UserInfo user = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__RequestInfo info = KSCORE__V1__REQUEST_INFO__INIT;
    char *groups[GW_MAX_GROUPS];
    uint8_t *buf = NULL;
    size_t len = 0, ng;
    int64_t left = gw_ms_left(r);
    int timeout = (int)r->g->cfg->common.request_timeout_ms;
    ks_status st;

    if (m->i < m->n) {
        const px_check *c = &m->checks[m->i];
        ng = r->ngroups;
        for (size_t i = 0; i < ng; i++)
            groups[i] = r->groups[i];
        user.username = r->username;
        user.uid = r->uid;
        info.is_resource_request = 1;
        info.is_kube_request = 1;
        info.api_prefix = c->group[0] ? "apis" : "api";
        info.verb = "impersonate";
        info.api_group = (char *)c->group;
        info.api_version = "v1";
        info.resource = (char *)c->resource;
        info.subresource = (char *)c->sub;
        info.name = (char *)c->name;
        info.namespace_ = (char *)c->ns;
        info.resource_scope = c->ns[0] ? "Namespace" : "Cluster";
        info.path = (char *)((const ks_requestinfo *)r->info)->path;
        req.info = &info;
    } else {
        ng = m->ngroups;
        for (size_t i = 0; i < ng; i++)
            groups[i] = m->groups[i];
        user.username = m->user;
        ks_requestinfo_to_proto(r->info, &info);
        req.info = &info;
        m->final_asked = 1;
    }
    user.groups = groups;
    user.n_groups = ng;
    req.user = &user;
    if (ks_codec_pack(&req.base, &buf, &len) != KS_OK) {
        imp_fail(m, 500, "InternalError", "cannot build the authorization request");
        return;
    }
    if (left > 0 && left < timeout)
        timeout = (int)left;
    st = ks_bus_request_async(r->g->bus, PX_AUTHZ_SUBJECT, buf, len, timeout, on_imp_reply, m);
    free(buf);
    if (st != KS_OK)
        imp_fail(m, 503, "ServiceUnavailable", "the authorization service (iam) is not available");
}

static int imp_value_ok(const char *v)
{
    size_t n = strlen(v);

    if (n == 0 || n >= PX_IMP_VALUE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
            return 0;
    return 1;
}

/* Build the questions from the Impersonate-* headers. Returns NULL and
 * answers 400 for a malformed set. */
static px_imp *imp_parse(px_state *p, gw_request *r)
{
    px_imp *m = calloc(1, sizeof(*m));
    const char *why = NULL;
    size_t nuser = 0;

    if (m == NULL) {
        gw_respond_status(r, 503, "ServiceUnavailable", "out of memory");
        return NULL;
    }
    m->p = p;
    m->r = r;
    for (size_t i = 0; i < r->nheaders && why == NULL; i++) {
        const char *name = r->headers[i].name, *v = r->headers[i].value;
        px_check *c;
        if (strncasecmp(name, "Impersonate-", 12) != 0)
            continue;
        if (!imp_value_ok(v)) {
            why = "an Impersonate-* header value is empty, too long or has control characters";
            break;
        }
        if (m->n == PX_MAX_IMPERSONATE) {
            why = "too many Impersonate-* headers";
            break;
        }
        c = &m->checks[m->n];
        c->group = "";
        snprintf(c->name, sizeof(c->name), "%s", v);
        if (strcasecmp(name, "Impersonate-User") == 0) {
            const char *sa = "system:serviceaccount:";
            nuser++;
            snprintf(m->user, sizeof(m->user), "%s", v);
            c->resource = "users";
            if (strncmp(v, sa, strlen(sa)) == 0) {
                const char *ns = v + strlen(sa), *colon = strchr(ns, ':');
                if (colon == NULL || colon == ns || colon[1] == '\0' ||
                    (size_t)(colon - ns) >= sizeof(c->ns)) {
                    why = "a malformed service account name in Impersonate-User";
                    break;
                }
                c->resource = "serviceaccounts";
                memcpy(c->ns, ns, (size_t)(colon - ns));
                c->ns[colon - ns] = '\0';
                snprintf(c->name, sizeof(c->name), "%s", colon + 1);
            }
        } else if (strcasecmp(name, "Impersonate-Group") == 0) {
            if (m->ngroups == GW_MAX_GROUPS || strlen(v) >= sizeof(m->groups[0])) {
                why = "too many or too long Impersonate-Group values";
                break;
            }
            snprintf(m->groups[m->ngroups++], sizeof(m->groups[0]), "%s", v);
            c->resource = "groups";
        } else if (strcasecmp(name, "Impersonate-Uid") == 0) {
            c->resource = "uids";
            c->group = "authentication.k8s.io";
        } else if (strncasecmp(name, "Impersonate-Extra-", 18) == 0 && name[18] != '\0' &&
                   strlen(name + 18) < sizeof(c->sub)) {
            size_t k;
            c->resource = "userextras";
            c->group = "authentication.k8s.io";
            for (k = 0; name[18 + k]; k++)
                c->sub[k] = (char)(name[18 + k] >= 'A' && name[18 + k] <= 'Z' ? name[18 + k] + 32
                                                                              : name[18 + k]);
            c->sub[k] = '\0';
        } else {
            why = "an unknown Impersonate-* header";
            break;
        }
        m->n++;
    }
    if (why == NULL && nuser == 0)
        why = "Impersonate-Group, Impersonate-Uid or Impersonate-Extra-* without Impersonate-User";
    if (why == NULL && nuser > 1)
        why = "Impersonate-User appears more than once";
    if (why != NULL) {
        gw_respond_status(r, 400, "BadRequest", "%s", why);
        free(m);
        return NULL;
    }
    return m;
}

/* ---- the stage's entry point ---- */

void gw_proxy_start_request(gw_request *r)
{
    px_state *p = r->g->proxy;
    int impersonating = 0;

    if (p == NULL) {
        gw_respond_status(r, 503, "ServiceUnavailable",
                          "this gateway has no kube-apiserver configured (KS_KUBECONFIG)");
        return;
    }
    if (gw_header(r, "Upgrade") != NULL) {
        gw_respond_status(r, 501, "NotImplemented",
                          "protocol upgrades (exec, attach, port-forward) are not proxied");
        return;
    }
    for (size_t i = 0; i < r->nheaders && !impersonating; i++)
        impersonating = strncasecmp(r->headers[i].name, "Impersonate-", 12) == 0;
    if (impersonating) {
        px_imp *m = imp_parse(p, r);
        if (m != NULL)
            imp_next(m);
        return;
    }
    px_begin(p, r);
}

/* ---- start and stop ---- */

static void register_metrics(void)
{
    static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                    0.1,    0.25,  0.5,    1,     2.5,  5,     10, 30};
    m_head_seconds = ks_metrics_histogram(
        "ks_gateway_kube_response_head_seconds",
        "time from the start of a proxied request to kube-apiserver's response head", NULL,
        bounds, sizeof(bounds) / sizeof(bounds[0]));
    m_streams = ks_metrics_gauge("ks_gateway_kube_streams",
                                 "proxied responses being streamed to clients (watches included)",
                                 NULL);
    m_imp_allow = ks_metrics_counter("ks_gateway_kube_impersonations_total",
                                     "proxied requests with Impersonate-* headers, by decision",
                                     "decision=\"allow\"");
    m_imp_deny = ks_metrics_counter("ks_gateway_kube_impersonations_total", NULL,
                                    "decision=\"deny\"");
#define ERR_METRIC(var, kind)                                                             \
    var = ks_metrics_counter("ks_gateway_kube_errors_total",                              \
                             "proxied requests that kube-apiserver did not answer (or "   \
                             "whose stream broke), by kind",                              \
                             "kind=\"" kind "\"")
    ERR_METRIC(m_err_connect, "connect");
    ERR_METRIC(m_err_timeout, "timeout");
    ERR_METRIC(m_err_tls, "tls");
    ERR_METRIC(m_err_broken, "broken");
    ERR_METRIC(m_err_head, "bad_head");
    ERR_METRIC(m_err_busy, "too_many");
    ERR_METRIC(m_err_other, "other");
#undef ERR_METRIC
}

static void state_free(px_state *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->npool; i++)
        curl_easy_cleanup(p->pool[i]);
    if (p->multi != NULL)
        curl_multi_cleanup(p->multi);
    if (p->epfd >= 0)
        close(p->epfd);
    if (p->evfd >= 0)
        close(p->evfd);
    wipe_free(p->auth_line);
    ks_kube_config_clear(&p->kc);
    pthread_mutex_destroy(&p->tmu);
    pthread_mutex_destroy(&p->pmu);
    pthread_mutex_destroy(&p->qmu);
    pthread_cond_destroy(&p->qcond);
    free(p);
}

ks_status gw_proxy_start(gw *g)
{
    const char *kubeconfig = g->cfg->common.kubeconfig;
    px_state *p = NULL;
    struct epoll_event ev;
    ks_status st;

    g->proxy = NULL;
    register_metrics();
    if (kubeconfig == NULL && getenv("KUBERNETES_SERVICE_HOST") == NULL) {
        ks_warn("proxy: no kube-apiserver configured (KS_KUBECONFIG); /api and /apis answer 503");
        return KS_OK;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "proxy");
    p->g = g;
    p->epfd = p->evfd = -1;
    pthread_mutex_init(&p->tmu, NULL);
    pthread_mutex_init(&p->pmu, NULL);
    pthread_mutex_init(&p->qmu, NULL);
    pthread_cond_init(&p->qcond, NULL);
    atomic_init(&p->stopping, 0);
    atomic_init(&p->ntransfers, 0);
    atomic_init(&p->nresponses, 0);
    st = kubeconfig != NULL ? ks_kube_config_from_kubeconfig(kubeconfig, NULL, &p->kc)
                            : ks_kube_config_in_cluster(NULL, &p->kc);
    if (st) {
        memset(&p->kc, 0, sizeof(p->kc));
        goto fail;
    }
    if (p->kc.token != NULL) {
        p->auth_line = auth_line_from(p->kc.token, strlen(p->kc.token));
        if (p->auth_line == NULL) {
            st = KS_FAIL(KS_ERR_INVALID, "proxy: the kubeconfig's token is malformed");
            goto fail;
        }
    } else if (p->kc.token_file != NULL) {
        if ((st = token_file_line(p->kc.token_file, &p->auth_line)) != KS_OK)
            goto fail;
        p->token_read_mono_s = mono_us() / 1000000;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        st = KS_FAIL(KS_ERR_INTERNAL, "proxy: curl_global_init failed");
        goto fail;
    }
    p->multi = curl_multi_init();
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->multi == NULL || p->epfd < 0 || p->evfd < 0) {
        st = KS_FAIL(KS_ERR_INTERNAL, "proxy: cannot set up the transfer loop");
        goto fail;
    }
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.fd = p->evfd;
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->evfd, &ev) != 0 ||
        curl_multi_setopt(p->multi, CURLMOPT_SOCKETFUNCTION, on_socket) != CURLM_OK ||
        curl_multi_setopt(p->multi, CURLMOPT_SOCKETDATA, p) != CURLM_OK ||
        curl_multi_setopt(p->multi, CURLMOPT_TIMERFUNCTION, on_timer) != CURLM_OK ||
        curl_multi_setopt(p->multi, CURLMOPT_TIMERDATA, p) != CURLM_OK ||
        curl_multi_setopt(p->multi, CURLMOPT_MAXCONNECTS, (long)PX_MAX_CONNECTS) != CURLM_OK) {
        st = KS_FAIL(KS_ERR_INTERNAL, "proxy: cannot set up the curl multi handle");
        goto fail;
    }
    p->thread_running = 1;
    if (pthread_create(&p->thread, NULL, transfer_main, p) != 0) {
        p->thread_running = 0;
        st = KS_FAIL(KS_ERR_INTERNAL, "proxy: cannot start the transfer thread");
        goto fail;
    }
    g->proxy = p;
    ks_info("proxy: /api and /apis go to %s", p->kc.server);
    return KS_OK;
fail:
    if (p->multi != NULL)
        curl_global_cleanup();
    state_free(p);
    return st;
}

void gw_proxy_drain(gw *g)
{
    px_state *p = g ? g->proxy : NULL;
    struct timespec pause = {0, 10 * 1000 * 1000};

    if (p == NULL || p->drained)
        return;
    p->drained = 1;
    atomic_store(&p->stopping, 1);
    ask_thread(p, REQ_END_LONG);
    /* Transfers finish, and the streams' last bytes (a watch's final
     * chunk) reach the clients before libmicrohttpd stops. */
    for (int i = 0; i < PX_DRAIN_MS / 10 &&
                    (atomic_load(&p->ntransfers) > 0 || atomic_load(&p->nresponses) > 0);
         i++)
        nanosleep(&pause, NULL);
    ask_thread(p, REQ_ABORT_ALL);
}

void gw_proxy_stop(gw *g)
{
    px_state *p = g ? g->proxy : NULL;

    if (p == NULL)
        return;
    gw_proxy_drain(g);
    ask_thread(p, REQ_QUIT);
    pthread_join(p->thread, NULL);
    /* Work queued after the thread's last round (a request that passed the
     * stopping check just before the drain): answered 503 here, on this
     * thread, which is now the only one. */
    (void)take_work(p);
    state_free(p);
    curl_global_cleanup();
    g->proxy = NULL;
}
