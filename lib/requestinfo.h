/* requestinfo.h: what a request is about, from its method, path and query
 * (KubeSphere's RequestInfo; docs/requestinfo.md has the grammar, the scope
 * rule and the rejection rules with examples).
 *
 * The gateway's first filter. It parses the path exactly as received (still
 * percent-encoded) and refuses, never normalizes, anything that two parsers
 * could read two ways: "." and ".." segments (raw or encoded), empty
 * segments ("//"), an encoded "/", "\" or "%" inside a segment, "\" or a
 * control character anywhere, NUL (raw or %00), a bad percent escape,
 * invalid UTF-8 after decoding; and in the query a bad escape, NUL, a
 * control character or ";". What is accepted is then read with KubeSphere's
 * grammar (pkg/apiserver/request/requestinfo.go, itself Kubernetes' plus
 * clusters, workspaces and the scope):
 *
 *   [/clusters/{c}] /{api|kapi}[/clusters/{c}]/{version}/...
 *   [/clusters/{c}] /{apis|kapis}[/clusters/{c}]/{group}/{version}/...
 *   .../[watch|proxy/][{workspaces|workspacetemplates}/{ws}/]
 *       [namespaces/{ns}/]{resource}[/{name}[/{subresource}[/...]]]
 *
 * Anything else (/version, /healthz, /oauth/token, /apis, /apis/{group},
 * /apis/{group}/{version}, ...) is a non-resource request: path and verb
 * (the method in lower case) only.
 *
 * Allocation: none. The result lives in the ks_requestinfo itself (about
 * 25 KiB: every string field points into its own buffers or at a constant
 * word), so the struct must not be copied by assignment or memcpy: use
 * ks_requestinfo_copy. Thread safety: none needed, no shared state. */
#ifndef KS_REQUESTINFO_H
#define KS_REQUESTINFO_H

#include <stdbool.h>
#include <stddef.h>

#include "kscore/v1/common.pb-c.h"
#include "status.h"

/* Caps, each checked where the input is read. */
#define KS_REQUESTINFO_PATH_MAX 8192      /* raw path bytes; more: KS_ERR_TOO_LARGE */
#define KS_REQUESTINFO_QUERY_MAX 16384    /* raw query bytes; more: KS_ERR_TOO_LARGE */
#define KS_REQUESTINFO_MAX_SEGMENTS 64    /* path segments; more: KS_ERR_TOO_LARGE */
#define KS_REQUESTINFO_METHOD_MAX 32      /* method bytes; more: KS_ERR_INVALID */
#define KS_REQUESTINFO_NAME_MAX 253       /* a name taken from fieldSelector */
#define KS_REQUESTINFO_WORKSPACE_MAX 63   /* a workspace taken from labelSelector */

/* The parsed request. Every string field is NUL-terminated and never NULL
 * after a successful parse ("" when absent, as in proto3). Fields mirror
 * kscore.v1.RequestInfo (proto/kscore/v1/common.proto), plus raw_path. */
typedef struct ks_requestinfo {
    bool is_resource_request;
    bool is_kube_request;      /* api_prefix is "api" or "apis" */
    const char *path;          /* decoded path without the clusters/{c} segments */
    const char *raw_path;      /* the same, still percent-encoded as received
                                  (what to forward upstream) */
    const char *verb;          /* resource: get list watch create update patch delete
                                  deletecollection proxy, or "" for another method;
                                  non-resource: the method in lower case */
    const char *api_prefix;    /* api, apis, kapis, kapi or "" */
    const char *api_group;     /* "" for the core group (api, kapi) */
    const char *api_version;
    const char *namespace;
    const char *resource;
    const char *subresource;
    const char *name;          /* from the path, or fieldSelector=metadata.name=X */
    const char *workspace;
    const char *cluster;       /* as written in the path; "" when none. The
                                  gateway treats "" and "host" as local */
    const char *devops;        /* always "": KubeSphere 4 has no DevOps scope */
    const char *resource_scope;/* Global, Cluster, Workspace, Namespace; ""
                                  for a non-resource request */
    size_t nparts;             /* resource/name/subresource/... (Kubernetes' Parts) */
    const char *parts[KS_REQUESTINFO_MAX_SEGMENTS];

    /* private storage the fields point into */
    size_t seg_used_;
    char seg_buf_[KS_REQUESTINFO_PATH_MAX + 1];
    char path_buf_[KS_REQUESTINFO_PATH_MAX + 2];
    char raw_buf_[KS_REQUESTINFO_PATH_MAX + 2];
    char verb_buf_[KS_REQUESTINFO_METHOD_MAX + 1];
    char name_buf_[KS_REQUESTINFO_NAME_MAX + 1];
    char ws_buf_[KS_REQUESTINFO_WORKSPACE_MAX + 1];
} ks_requestinfo;

/* Parse one request. method is the HTTP method as received (case matters:
 * "GET", not "get"); path is the request target's path, still
 * percent-encoded, beginning with "/" and without the query; raw_query is
 * what followed "?" (still encoded, "+" is a space), or NULL or "" for none.
 *
 * Returns KS_OK and fills *out; or, with *out untouched and a message (no
 * input echoed in it) in err when errcap > 0:
 *   KS_ERR_INVALID    a NULL argument, a method that is not an HTTP token or
 *                     longer than KS_REQUESTINFO_METHOD_MAX, any rejection
 *                     rule above, or watch/proxy with nothing after it
 *                     (HTTP 400);
 *   KS_ERR_TOO_LARGE  a path over KS_REQUESTINFO_PATH_MAX bytes or with more
 *                     than KS_REQUESTINFO_MAX_SEGMENTS segments, a query over
 *                     KS_REQUESTINFO_QUERY_MAX bytes (HTTP 414).
 * err is untouched on success. The error is also raised (ks_status_last). */
ks_status ks_requestinfo_parse(const char *method, const char *path, const char *raw_query,
                               ks_requestinfo *out, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* The same with explicit lengths: the inputs need not be NUL-terminated and
 * may contain NUL bytes (which are refused). raw_query may be NULL when
 * qlen is 0. */
ks_status ks_requestinfo_parse_n(const char *method, size_t mlen, const char *path, size_t plen,
                                 const char *raw_query, size_t qlen, ks_requestinfo *out,
                                 char *err, size_t errcap) __attribute__((warn_unused_result));

/* Copy a parsed request so that dst's fields point into dst. dst and src
 * must not overlap. */
void ks_requestinfo_copy(ks_requestinfo *dst, const ks_requestinfo *src);

/* Fill pb (which is initialized first) from ri. No allocation: pb's strings
 * and parts array point into ri, so pb is valid while ri is unchanged and
 * must not be freed with kscore__v1__request_info__free_unpacked; pack it
 * (or copy what you need) before ri goes away. */
void ks_requestinfo_to_proto(const ks_requestinfo *ri, Kscore__V1__RequestInfo *pb);

/* The HTTP status for a parse failure: 414 for KS_ERR_TOO_LARGE, 400 for
 * KS_ERR_INVALID, 500 for anything else (200 for KS_OK). */
int ks_requestinfo_http_code(ks_status st);

#endif
