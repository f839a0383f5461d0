/* gw.h: the gateway's request and its filter chain (DESIGN.md §3).
 *
 * A request runs through the stages in order, each in its own file:
 *   requestinfo.c  parse the path (lib/requestinfo)            -> r->info
 *   authn.c        Bearer JWT in-process, Basic via ks.iam.authn -> r->user
 *   authz.c        public paths, decision cache, ks.iam.authz
 *   audit.c        (strict mode only) refuse while events cannot be recorded
 *   dispatch.c     /oauth/... and /kapis/... over NATS, /api(s) to kube-apiserver
 * and, when the answer is handed to libmicrohttpd, audit.c records the
 * request's AuditEvent. A stage either calls gw_next(r) (maybe
 * later, from a NATS thread), or ends the request with gw_respond*().
 * server.c owns the HTTP side: it suspends the connection while stages wait
 * and resumes it when the answer is ready; no worker thread ever blocks on
 * NATS or on kube-apiserver. */
#ifndef GW_H
#define GW_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "kscore/v1/common.pb-c.h"
#include "service.h"
#include "status.h"

#define GW_MAX_BODY_DEFAULT (1024u * 1024u)
#define GW_MAX_HEADERS_BYTES (16u * 1024u)
#define GW_REQUEST_ID_MAX 64
#define GW_MAX_GROUPS 32
#define GW_MAX_RESP_HEADERS 16
#define GW_SOURCE_IP_MAX 64

typedef struct gw gw;
typedef struct gw_request gw_request;

typedef struct {
    ks_service_common common;
    char *http_addr;
    char *jwt_secret_file;
    long long max_body;
    long long max_connections;
    long long request_timeout_ms;   /* per request, except watches */
    long long idle_timeout_ms;      /* idle or slow client */
    long long workers;              /* HTTP worker threads */
    char *tls_cert_file;            /* both set: HTTPS (PEM files) */
    char *tls_key_file;
    long long discovery_interval_ms;/* full $SRV.INFO scan period (discovery.c) */
    /* audit.c */
    char *audit_mode;               /* async | strict | off */
    char *audit_policy_file;
    char *audit_spool_dir;
    long long audit_spool_max_bytes;
    long long audit_queue;
    long long audit_queue_wait_ms;
    long long audit_body_max;
    long long audit_ack_timeout_ms;
    long long audit_retry_ms;
    long long audit_max_age_ms;     /* the stream, when the gateway creates it */
    long long audit_max_bytes;
    long long audit_stream_replicas;
} gw_config;

/* One request header as received (server.c copies them all at the start). */
typedef struct {
    const char *name;
    const char *value;
} gw_header_kv;

typedef enum { GW_RUNNING = 0, GW_DONE } gw_state;

struct gw_request {
    gw *g;
    struct MHD_Connection *conn;
    pthread_mutex_t mu;              /* state, suspended, the answer, refs, deadline */
    gw_state state;
    int suspended;
    int abandoned;                   /* the HTTP side ended before the chain answered */
    int stage;                       /* index of the stage that runs */

    char method[16];
    const char *url;                 /* the raw path as received (still percent-encoded),
                                        without the query; owned by r */
    char *raw_query;                 /* what followed '?', undecoded; "" when none */
    char source_ip[GW_SOURCE_IP_MAX];/* the peer's address */
    gw_header_kv *headers;           /* every request header, in order (copies) */
    size_t nheaders;
    char request_id[GW_REQUEST_ID_MAX];
    char audit_id[40];               /* UUIDv7 of this request's AuditEvent */
    int audited;                     /* its event was recorded (audit.c, under mu) */
    char *audit_body;                /* redacted request body kept for the event (audit.c) */
    size_t audit_body_len;
    int audit_body_kept;             /* audit_body replaces body (NULL: not recordable) */
    char *body;
    size_t body_len;
    int body_too_large;
    int64_t received_us;

    /* filled by the stages */
    void *info;                      /* ks_requestinfo (requestinfo.c) */
    char username[256];
    char uid[64];
    char groups[GW_MAX_GROUPS][128];
    size_t ngroups;
    int authenticated;
    char jti[64];

    /* the answer */
    int code;
    char *resp_body;
    size_t resp_len;
    char content_type[128];
    char *resp_headers[GW_MAX_RESP_HEADERS][2];
    size_t nresp_headers;
    struct MHD_Response *stream;     /* a streaming answer (proxy), instead of resp_body */
    /* an answer held until its audit event is acknowledged (strict mode) */
    int held_code;
    char *held_body;
    size_t held_len;
    char held_ct[128];
    struct MHD_Response *held_stream;

    /* server.c's own bookkeeping: not for the stages */
    int refs;                        /* the HTTP side + the chain while it runs */
    int started;                     /* the chain was started (the HTTP thread's flag) */
    int in_chain;                    /* the chain started and has not ended */
    int counted;                     /* counted in the in-flight gauge */
    int close_conn;                  /* answer with Connection: close */
    int queued;                      /* the answer is handed to libmicrohttpd */
    const char *uri_at;              /* libmicrohttpd's copy of the target (first call only) */
    size_t uri_len;
    int64_t received_mono_us;        /* CLOCK_MONOTONIC at the request line */
    int64_t deadline_mono_us;        /* 0: none (a watch) */
    char *hdr_buf;
    gw_request *wprev, *wnext;       /* the list of suspended requests */
    int waiting;                     /* on that list */
};

/* The gateway: one per process. Each stage keeps its own state behind a
 * pointer it alone reads. */
struct gw {
    const gw_config *cfg;
    ks_service *svc;
    ks_bus *bus;
    struct MHD_Daemon *daemon;
    void *authn;       /* authn.c */
    void *authz;       /* authz.c */
    void *dispatch;    /* dispatch.c */
    void *proxy;       /* proxy.c */
    void *audit;       /* audit.c */
};

/* A stage: runs on r, then calls gw_next(r) or answers. */
typedef void (*gw_stage_fn)(gw_request *r);

/* The chain, in order (server.c). */
extern const gw_stage_fn gw_stages[];
extern const size_t gw_nstages;

/* ---- the stages ---- */
void gw_stage_requestinfo(gw_request *r);
void gw_stage_authn(gw_request *r);
void gw_stage_authz(gw_request *r);
void gw_stage_dispatch(gw_request *r);
void gw_stage_audit_gate(gw_request *r);  /* audit.h */

ks_status gw_authn_start(gw *g);
void gw_authn_stop(gw *g);
ks_status gw_authz_start(gw *g);
void gw_authz_stop(gw *g);
ks_status gw_dispatch_start(gw *g);
void gw_dispatch_stop(gw *g);

/* ---- server.c ---- */

ks_status gw_server_start(gw *g);
void gw_server_stop(gw *g);

/* Run the next stage, or answer 500 when none is left. When the server has
 * answered meanwhile (deadline, shutdown), it ends the chain instead: the
 * stage must not touch r after calling it. */
void gw_next(gw_request *r);

/* End the request with an answer; body is copied. Thread-safe. A stage
 * answers exactly once, and must not touch r afterwards (it may be freed at
 * once). The first answer wins: when the server answered first (deadline
 * 504, shutdown 503), the stage's answer is dropped. */
void gw_respond(gw_request *r, int code, const char *content_type, const void *body, size_t len);
/* A metav1.Status answer. */
void gw_respond_status(gw_request *r, int code, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A streaming answer built by the caller (the proxy). */
void gw_respond_stream(gw_request *r, int code, struct MHD_Response *resp);
/* Add a response header (copied) before responding. */
void gw_add_header(gw_request *r, const char *name, const char *value);
/* The first request header of that name (case-insensitive), or NULL. The
 * headers are copies owned by r, so a stage may read them from any thread
 * until it answers. */
const char *gw_header(gw_request *r, const char *name);

/* Milliseconds left before the request's deadline (at least 1), or -1 when
 * it has none. Stages use it as their NATS timeout. */
int64_t gw_ms_left(gw_request *r);
/* The request's deadline as Unix milliseconds (0 when it has none), for
 * ApiRequest.deadline_unix_ms. */
int64_t gw_deadline_unix_ms(gw_request *r);
/* Drop the request's deadline: a watch has no total timeout (the proxy
 * calls this before it starts streaming). */
void gw_clear_deadline(gw_request *r);

/* ---- the kube-apiserver proxy (proxy.c, not built yet) ---- */

/* Forward /api and /apis to kube-apiserver. Until proxy.c lands, dispatch.c
 * holds a placeholder that answers 501 NotImplemented ("proxy not built
 * yet"); the proxy's author deletes it there and defines this in proxy.c. */
void gw_proxy_start_request(gw_request *r);

#endif
