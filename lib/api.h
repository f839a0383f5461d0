/* api.h: serving the gateway's API requests over NATS (DESIGN.md §3).
 *
 * A service that serves /kapis/<group>/<version>/... receives ApiRequest on
 * ks.api.<group>.<version> and answers ApiResponse. This module unpacks the
 * request, matches it against a route table, calls the handler, and packs
 * and sends the answer. Errors are Kubernetes metav1.Status bodies, so
 * kubectl and the console can read them:
 *   {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
 *    "message":...,"reason":...,"code":...}
 * Request bodies are capped (KS_API_MAX_BODY) before any parsing. */
#ifndef KS_API_H
#define KS_API_H

#include <jansson.h>
#include <stddef.h>

#include "bus.h"
#include "kscore/v1/api.pb-c.h"
#include "status.h"

#define KS_API_MAX_BODY (1024u * 1024u)   /* request bodies: 1 MiB */
#define KS_API_MAX_PARAMS 8
#define KS_API_PARAM_MAX 256

/* What a handler builds. body is owned (malloc'd) and freed by the caller. */
typedef struct {
    int code;
    char *body;
    size_t len;
    const char *content_type;    /* NULL = application/json */
    char location[256];          /* optional Location header ("" = none) */
    char retry_after[16];        /* optional Retry-After header ("" = none) */
} ks_api_response;

/* One request as a handler sees it. */
typedef struct {
    const Kscore__V1__ApiRequest *req;
    const char *method;
    const char *path;
    const char *username;        /* "" when anonymous */
    /* path parameters, in the order of their {name} in the pattern */
    char params[KS_API_MAX_PARAMS][KS_API_PARAM_MAX];
    size_t nparams;
} ks_api_call;

typedef void (*ks_api_handler)(ks_api_call *call, ks_api_response *resp, void *arg);

/* A route: method ("GET", ..., or "*") and a pattern of '/'-separated
 * segments where "{x}" matches one non-empty segment, e.g.
 * "/kapis/iam.kubesphere.io/v1beta1/users/{user}/password". */
typedef struct {
    const char *method;
    const char *pattern;
    ks_api_handler handler;
} ks_api_route;

/* Match path against pattern; on success copies the parameters
 * (percent-decoded) into params and returns 1. Segments longer than
 * KS_API_PARAM_MAX - 1 never match. */
int ks_api_match(const char *pattern, const char *path, char params[][KS_API_PARAM_MAX],
                 size_t *nparams);

/* Serve one bus message holding an ApiRequest: route it, answer it. Replies
 * 404 when no pattern matches, 405 when only the method differs, 400 for a
 * request that is not a valid ApiRequest, 413 above KS_API_MAX_BODY. Returns
 * 0 when the handler's answer was 2xx-4xx, non-zero (with err) on 5xx or a
 * failure to answer, for micro stats. */
int ks_api_serve(ks_bus *bus, ks_bus_msg *msg, const ks_api_route *routes, size_t nroutes,
                 void *arg, char *err, size_t errcap);

/* ---- building answers ---- */

/* A metav1.Status failure. reason: "NotFound", "Forbidden", "Invalid",
 * "AlreadyExists", "Conflict", "BadRequest", "MethodNotAllowed",
 * "RequestEntityTooLarge", "UnsupportedMediaType", "TooManyRequests",
 * "ServiceUnavailable", "InternalError", ... */
void ks_api_status(ks_api_response *resp, int code, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Serialize json as the body (the reference is NOT stolen). */
void ks_api_json(ks_api_response *resp, int code, const json_t *json);

/* Map a ks_status (from the kube client, say) to an answer, using the last
 * error's text as message. */
void ks_api_from_status(ks_api_response *resp, ks_status st);

/* ---- reading requests ---- */

/* Parse the JSON body: 415 unless Content-Type is JSON (or absent), 400 for
 * malformed JSON or a non-object. On failure resp is filled and NULL is
 * returned. The caller owns the result. */
json_t *ks_api_body_object(ks_api_call *call, ks_api_response *resp);

/* Value of query parameter key (percent-decoded, '+' as space) into out;
 * returns 1 if present. */
int ks_api_query(const ks_api_call *call, const char *key, char *out, size_t cap);

/* First value of a request header (case-insensitive), or NULL. */
const char *ks_api_header(const ks_api_call *call, const char *name);

/* Percent-decode src (n bytes) into out; KS_ERR_INVALID on a bad escape or
 * an encoded NUL, KS_ERR_TOO_LARGE when out is too small. */
ks_status ks_api_unescape(const char *src, size_t n, int plus_is_space, char *out, size_t cap);

#endif
