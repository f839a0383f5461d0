/* kube.h: the Kubernetes REST client of libkscore (libcurl + jansson).
 *
 * Three parts:
 *   1. ks_kube_config: where kube-apiserver is and how to authenticate, loaded
 *      from a kubeconfig file, from explicit values, or from the in-cluster
 *      service account.
 *   2. ks_kube_client: thread-safe requests (one easy handle per call, taken
 *      from a small pool) and long-lived streams for watches.
 *   3. Helpers: metav1.Status parsing, HTTP code -> ks_status mapping, and a
 *      splitter that turns a watch's chunk stream into complete JSON events.
 *
 * Bearer tokens and Authorization headers are never logged, never put in an
 * error message, and wiped from memory that this module frees.
 * See docs/kube-client.md. */
#ifndef KS_KUBE_H
#define KS_KUBE_H

#include <jansson.h>
#include <stddef.h>

#include "status.h"

/* Caps on data that comes from the network or from files. */
#define KS_KUBE_MAX_BODY (64u * 1024u * 1024u)   /* one response body */
#define KS_KUBE_MAX_ERROR_BODY (1024u * 1024u)   /* a non-2xx body of a stream */
#define KS_KUBE_MAX_KUBECONFIG (4u * 1024u * 1024u)
#define KS_KUBE_MAX_TOKEN (64u * 1024u)          /* a token file */
#define KS_KUBE_MAX_PATH 8192u                   /* request path + query */
#define KS_KUBE_DEFAULT_TIMEOUT_MS 30000L
#define KS_KUBE_TOKEN_REFRESH_S 60               /* token files are re-read this often */

/* ---- configuration ---------------------------------------------------- */

/* Everything the client needs to reach one kube-apiserver. All strings and
 * buffers are owned by the struct and freed by ks_kube_config_clear(). For each
 * of CA, client certificate and client key at most one of *_file / *_data is
 * set. File paths are absolute once loaded. */
typedef struct ks_kube_config {
    char *server;               /* "https://host:port[/prefix]", no trailing '/' */
    char *token;                /* static bearer token, or NULL */
    char *token_file;           /* bearer token file, re-read every KS_KUBE_TOKEN_REFRESH_S */
    char *ca_file;              /* PEM CA bundle; NULL and no ca_data = system CAs */
    unsigned char *ca_data;     /* decoded PEM, passed with CURLOPT_CAINFO_BLOB */
    size_t ca_data_len;
    char *cert_file;            /* client certificate (PEM) */
    unsigned char *cert_data;
    size_t cert_data_len;
    char *key_file;             /* client private key (PEM) */
    unsigned char *key_data;
    size_t key_data_len;
    int insecure;               /* 1: do not verify the server certificate */
    long timeout_ms;            /* default for the wrappers; <= 0 = KS_KUBE_DEFAULT_TIMEOUT_MS */
} ks_kube_config;

/* Free every member (secrets are wiped first) and zero the struct. NULL and an
 * all-zero struct are fine. */
void ks_kube_config_clear(ks_kube_config *cfg);

/* Load a kubeconfig file as kubectl writes it. context selects a context by
 * name; NULL uses current-context. Reads, for that context's cluster and user:
 * server, certificate-authority(-data), insecure-skip-tls-verify, token,
 * tokenFile, client-certificate(-data), client-key(-data). *-data fields are
 * base64-decoded into memory; relative file paths resolve against the folder of
 * the kubeconfig; referenced files must be readable now.
 * The file is parsed by a strict YAML subset parser (block mappings and
 * sequences, plain and quoted scalars, {} and [] or JSON flow collections,
 * comments); a JSON kubeconfig is accepted as well. Anchors, aliases, tags,
 * multi-line scalars and multiple documents are rejected.
 * Returns KS_OK and fills *out (its previous contents are not freed);
 * KS_ERR_IO when a file cannot be read, KS_ERR_TOO_LARGE over
 * KS_KUBE_MAX_KUBECONFIG, KS_ERR_INVALID for a syntax error, a missing or bad
 * field (the message names the file, the line or field), KS_ERR_NOMEM. */
ks_status ks_kube_config_from_kubeconfig(const char *path, const char *context,
                                         ks_kube_config *out) __attribute__((warn_unused_result));

/* The same from text in memory. origin names the source in error messages;
 * base_dir resolves relative paths (NULL = the current directory). */
ks_status ks_kube_config_parse_kubeconfig(const char *text, size_t len, const char *origin,
                                          const char *base_dir, const char *context,
                                          ks_kube_config *out) __attribute__((warn_unused_result));

/* Explicit values: server URL (http:// or https://), token_file and ca_file may
 * be NULL. Files must be readable now. Returns KS_OK, KS_ERR_INVALID,
 * KS_ERR_IO, KS_ERR_NOMEM; *out is set only on success. */
ks_status ks_kube_config_explicit(const char *server, const char *token_file, const char *ca_file,
                                  ks_kube_config *out) __attribute__((warn_unused_result));

/* In-cluster: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT with
 * sa_dir/token and sa_dir/ca.crt; sa_dir NULL means
 * /var/run/secrets/kubernetes.io/serviceaccount. Returns KS_OK,
 * KS_ERR_INVALID (variables unset or bad), KS_ERR_IO (files unreadable),
 * KS_ERR_NOMEM; *out is set only on success. */
ks_status ks_kube_config_in_cluster(const char *sa_dir, ks_kube_config *out)
    __attribute__((warn_unused_result));

/* Deep copy. Returns KS_OK or KS_ERR_NOMEM; *out is set only on success. */
ks_status ks_kube_config_copy(const ks_kube_config *src, ks_kube_config *out)
    __attribute__((warn_unused_result));

/* ---- metav1.Status and the status mapping ---------------------------- */

#define KS_KUBE_REASON_MAX 64
#define KS_KUBE_MESSAGE_MAX 1024

/* The parts of a metav1.Status we use. Strings are NUL-terminated, truncated
 * at a UTF-8 character boundary. */
typedef struct ks_kube_status {
    long code;                           /* Status.code, or the HTTP code */
    char reason[KS_KUBE_REASON_MAX];     /* "NotFound", "Conflict", "Expired", ... or "" */
    char message[KS_KUBE_MESSAGE_MAX];
} ks_kube_status;

/* Parse a Status from a JSON body. Returns KS_OK and fills *out when the body
 * is an object with "kind":"Status"; KS_ERR_PROTOCOL otherwise (*out untouched). */
ks_status ks_kube_status_parse(const char *body, size_t len, ks_kube_status *out);
ks_status ks_kube_status_from_json(const json_t *obj, ks_kube_status *out);

/* The Kubernetes reason for an HTTP code ("NotFound" for 404, ...), "" if none. */
const char *ks_kube_reason_for_code(long http_code);

/* Map an HTTP code to a status: 2xx KS_OK; 404 NOT_FOUND; 409 and 410 CONFLICT
 * (410 is "Expired/Gone": test it with ks_kube_status_is_expired);
 * 401/403 DENIED; 400/422 and other 4xx INVALID; 408 TIMEOUT;
 * 413 TOO_LARGE; 429 and 5xx UNAVAILABLE; anything else PROTOCOL. */
ks_status ks_kube_status_map(long http_code);

/* 1 when the Status says the requested resourceVersion is too old (HTTP 410,
 * reason "Expired" or "Gone"): a watcher must relist. */
int ks_kube_status_is_expired(const ks_kube_status *st);

/* ---- client ------------------------------------------------------------ */

typedef struct ks_kube_client ks_kube_client;

/* The answer to one request. */
typedef struct ks_kube_response {
    long http_code;          /* 0 when no HTTP answer arrived */
    char *body;              /* owned, NUL-terminated, NULL when empty */
    size_t body_len;
    ks_kube_status status;   /* non-2xx: the parsed Status, or code + derived reason */
    long retry_after_s;      /* Retry-After in seconds, -1 when absent */
} ks_kube_response;

/* Free the body and reset to "no answer". NULL is a no-op. */
void ks_kube_response_clear(ks_kube_response *r);

/* 1 when the answer was 410 / Expired (see ks_kube_status_is_expired). */
int ks_kube_response_expired(const ks_kube_response *r);

/* Create a client from a copy of cfg (cfg may be cleared afterwards). Reads the
 * token file once. Returns KS_OK, KS_ERR_INVALID (no server), KS_ERR_IO (token
 * file), KS_ERR_NOMEM, KS_ERR_INTERNAL (curl); *out is set only on success. */
ks_status ks_kube_client_create(const ks_kube_config *cfg, ks_kube_client **out)
    __attribute__((warn_unused_result));

/* Make every request and stream in flight fail with KS_ERR_CLOSED within about
 * a second, and every later one at once. Thread-safe; for orderly shutdown. */
void ks_kube_client_shutdown(ks_kube_client *c);

/* Destroy the client. No call may be in flight. NULL is a no-op. */
void ks_kube_client_destroy(ks_kube_client *c);

/* One request. method: GET, POST, PUT, PATCH or DELETE. path starts with '/'
 * and may carry a query ("/api/v1/namespaces?limit=500"). body_json may be
 * NULL; content_type NULL means application/json, or
 * application/merge-patch+json for PATCH. timeout_ms <= 0 uses the client's
 * default. Thread-safe.
 * *out is overwritten first (previous contents are not freed, so it may be
 * uninitialized), then filled whenever kube-apiserver answered, whatever the
 * code; the caller frees it with ks_kube_response_clear(). Returns KS_OK
 * for 2xx; otherwise ks_kube_status_map(code) for an HTTP error,
 * KS_ERR_TIMEOUT, KS_ERR_UNAVAILABLE (cannot connect or connection lost),
 * KS_ERR_TOO_LARGE (body over KS_KUBE_MAX_BODY; nothing kept), KS_ERR_CLOSED
 * (shut down), KS_ERR_INVALID (bad arguments), KS_ERR_IO (certificate files),
 * KS_ERR_NOMEM. Every error is raised with KS_FAIL and names method and path. */
ks_status ks_kube_request(ks_kube_client *c, const char *method, const char *path,
                          const char *body_json, const char *content_type, long timeout_ms,
                          ks_kube_response *out) __attribute__((warn_unused_result));

/* Wrappers with the client's default timeout. Objects go in as json_t (not
 * stolen) and come out as a new reference the caller owns (json_decref).
 * *out is set only on KS_OK; out may be NULL except for ks_kube_get.
 * Returns what ks_kube_request returns, or KS_ERR_PROTOCOL when a 2xx body is
 * not JSON. The Status of a failure is in ks_status_last() only; use
 * ks_kube_request when the caller needs its reason or Retry-After. */
ks_status ks_kube_get(ks_kube_client *c, const char *path, json_t **out)
    __attribute__((warn_unused_result));
ks_status ks_kube_create(ks_kube_client *c, const char *path, const json_t *obj, json_t **out)
    __attribute__((warn_unused_result));
ks_status ks_kube_update(ks_kube_client *c, const char *path, const json_t *obj, json_t **out)
    __attribute__((warn_unused_result));
/* content_type NULL = application/merge-patch+json. */
ks_status ks_kube_patch(ks_kube_client *c, const char *path, const json_t *patch,
                        const char *content_type, json_t **out) __attribute__((warn_unused_result));
ks_status ks_kube_delete(ks_kube_client *c, const char *path, json_t **out)
    __attribute__((warn_unused_result));

/* Called with each chunk of a 2xx stream body as it arrives. Chunk boundaries
 * are arbitrary (feed them to a ks_kube_splitter). Return 0 to go on, non-zero
 * to stop the stream. */
typedef int (*ks_kube_chunk_cb)(const char *chunk, size_t len, void *arg);

/* A streaming GET for watches (path carries "?watch=1&..."), with TCP
 * keepalive and a hard deadline of timeout_ms (must be > 0). Thread-safe.
 * Returns KS_OK when the server ended the stream (e.g. at timeoutSeconds) or
 * the callback asked to stop; KS_ERR_TIMEOUT at the deadline; for a non-2xx
 * answer the mapped status (the callback is not called; the body, capped at
 * KS_KUBE_MAX_ERROR_BODY, and its Status go to *resp); KS_ERR_UNAVAILABLE when
 * the connection fails or breaks; KS_ERR_CLOSED after shutdown; KS_ERR_INVALID.
 * resp may be NULL; if given it is overwritten first (as in ks_kube_request)
 * and filled when an answer arrived (for 2xx: the code only). */
ks_status ks_kube_stream(ks_kube_client *c, const char *path, long timeout_ms,
                         ks_kube_chunk_cb cb, void *arg, ks_kube_response *resp)
    __attribute__((warn_unused_result));

/* Percent-encode s for a query value (RFC 3986 unreserved kept) into out.
 * Returns KS_OK, or KS_ERR_TOO_LARGE when out (with its NUL) is too small;
 * out is untouched on failure. */
ks_status ks_kube_query_escape(const char *s, char *out, size_t cap);

/* ---- watch stream splitting ------------------------------------------ */

/* Splits a byte stream into complete top-level JSON objects (watch events are
 * newline-delimited JSON, but chunk boundaries are not event boundaries). It
 * tracks strings and escapes, so braces inside strings do not confuse it, and
 * accepts any whitespace between objects. Not thread-safe (one per stream). */
typedef struct ks_kube_splitter ks_kube_splitter;

/* Called with one complete object: event points to len bytes followed by a
 * NUL, valid only during the call. Return 0 to go on, non-zero to stop. */
typedef int (*ks_kube_event_cb)(const char *event, size_t len, void *arg);

/* max_event caps one object (0 = KS_KUBE_MAX_BODY). Returns KS_OK or
 * KS_ERR_NOMEM; *out is set only on success. */
ks_status ks_kube_splitter_create(size_t max_event, ks_kube_splitter **out)
    __attribute__((warn_unused_result));
void ks_kube_splitter_destroy(ks_kube_splitter *sp);   /* NULL is a no-op */

/* Feed the next bytes; cb is called for every object they complete.
 * Returns KS_OK; KS_ERR_CLOSED when cb asked to stop (the rest of data is
 * dropped); KS_ERR_TOO_LARGE when an object exceeds max_event;
 * KS_ERR_PROTOCOL when something other than an object or whitespace appears
 * between objects; KS_ERR_NOMEM. Errors are sticky until ks_kube_splitter_reset. */
ks_status ks_kube_splitter_feed(ks_kube_splitter *sp, const char *data, size_t len,
                                ks_kube_event_cb cb, void *arg) __attribute__((warn_unused_result));

/* At the end of the stream: KS_OK when no partial object is pending,
 * KS_ERR_PROTOCOL when the stream stopped inside an object, or the sticky
 * error. */
ks_status ks_kube_splitter_finish(const ks_kube_splitter *sp);

/* Drop any partial object and any sticky error; keep the buffer. */
void ks_kube_splitter_reset(ks_kube_splitter *sp);

/* Bytes held for the pending partial object (0 between objects). */
size_t ks_kube_splitter_pending(const ks_kube_splitter *sp);

typedef enum {
    KS_KUBE_EVENT_ADDED = 1,
    KS_KUBE_EVENT_MODIFIED,
    KS_KUBE_EVENT_DELETED,
    KS_KUBE_EVENT_BOOKMARK,
    KS_KUBE_EVENT_ERROR      /* object is a Status; see ks_kube_status_from_json */
} ks_kube_event_type;

/* Parse one watch event {"type":..., "object":{...}}. *object is a new
 * reference the caller owns. Returns KS_OK, KS_ERR_PROTOCOL (not JSON, unknown
 * type, object missing); outputs are set only on success. */
ks_status ks_kube_event_parse(const char *event, size_t len, ks_kube_event_type *type,
                              json_t **object) __attribute__((warn_unused_result));

/* "ADDED", "MODIFIED", ...; "UNKNOWN" for other values. */
const char *ks_kube_event_name(ks_kube_event_type t);

#endif
