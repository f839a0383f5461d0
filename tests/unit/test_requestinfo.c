/* Unit tests: lib/requestinfo.c, KubeSphere's request info (grammar, scope
 * and rejection rules in lib/requestinfo.h and docs/requestinfo.md).
 *
 * Two tables: accepted requests with every field of the result, and rejected
 * ones with their status. The ks_requestinfo is malloc'd so the sanitized
 * build sees any write past its buffers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "requestinfo.h"

/* An accepted request. A NULL string field expects ""; opath NULL expects
 * the input path; parts is "a/b/c" ("" for none). */
typedef struct {
    const char *method, *path, *query;
    bool res, kube;
    const char *verb, *prefix, *group, *version, *ns, *resource, *sub, *name, *ws, *cluster,
        *scope, *opath, *parts;
} ok_case;

#define NS "Namespace"
#define CL "Cluster"
#define GL "Global"
#define WS "Workspace"

static const ok_case ok_cases[] = {
    /* core group, method to verb */
    {"GET", "/api/v1/namespaces", NULL, .res = 1, .kube = 1, .verb = "list", .prefix = "api",
     .version = "v1", .resource = "namespaces", .scope = CL, .parts = "namespaces"},
    {"GET", "/api/v1/namespaces/ns1", NULL, .res = 1, .kube = 1, .verb = "get", .prefix = "api",
     .version = "v1", .ns = "ns1", .resource = "namespaces", .name = "ns1", .scope = NS,
     .parts = "namespaces/ns1"},
    {"GET", "/api/v1/namespaces/ns1/pods", NULL, .res = 1, .kube = 1, .verb = "list",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .scope = NS,
     .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods/p1", NULL, .res = 1, .kube = 1, .verb = "get",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .name = "p1",
     .scope = NS, .parts = "pods/p1"},
    {"GET", "/api/v1/namespaces/ns1/pods/p1/log", NULL, .res = 1, .kube = 1, .verb = "get",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .name = "p1",
     .sub = "log", .scope = NS, .parts = "pods/p1/log"},
    {"GET", "/api/v1/nodes", NULL, .res = 1, .kube = 1, .verb = "list", .prefix = "api",
     .version = "v1", .resource = "nodes", .scope = CL, .parts = "nodes"},
    {"GET", "/api/v1/nodes/n1", NULL, .res = 1, .kube = 1, .verb = "get", .prefix = "api",
     .version = "v1", .resource = "nodes", .name = "n1", .scope = CL, .parts = "nodes/n1"},
    {"POST", "/api/v1/namespaces/ns1/pods", NULL, .res = 1, .kube = 1, .verb = "create",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .scope = NS,
     .parts = "pods"},
    {"PUT", "/api/v1/namespaces/ns1/pods/p1", NULL, .res = 1, .kube = 1, .verb = "update",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .name = "p1",
     .scope = NS, .parts = "pods/p1"},
    {"PATCH", "/api/v1/namespaces/ns1/pods/p1", NULL, .res = 1, .kube = 1, .verb = "patch",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .name = "p1",
     .scope = NS, .parts = "pods/p1"},
    {"DELETE", "/api/v1/namespaces/ns1/pods/p1", NULL, .res = 1, .kube = 1, .verb = "delete",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .name = "p1",
     .scope = NS, .parts = "pods/p1"},
    {"DELETE", "/api/v1/namespaces/ns1/pods", NULL, .res = 1, .kube = 1,
     .verb = "deletecollection", .prefix = "api", .version = "v1", .ns = "ns1",
     .resource = "pods", .scope = NS, .parts = "pods"},
    {"DELETE", "/api/v1/nodes", "labelSelector=a%3Db", .res = 1, .kube = 1,
     .verb = "deletecollection", .prefix = "api", .version = "v1", .resource = "nodes",
     .scope = CL, .parts = "nodes"},
    {"HEAD", "/api/v1/namespaces/ns1/pods/p1", NULL, .res = 1, .kube = 1, .verb = "get",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .name = "p1",
     .scope = NS, .parts = "pods/p1"},
    {"HEAD", "/api/v1/pods", NULL, .res = 1, .kube = 1, .verb = "list", .prefix = "api",
     .version = "v1", .resource = "pods", .scope = CL, .parts = "pods"},
    /* a method outside the table: a resource request with no verb */
    {"OPTIONS", "/api/v1/pods", NULL, .res = 1, .kube = 1, .verb = "", .prefix = "api",
     .version = "v1", .resource = "pods", .scope = CL, .parts = "pods"},
    {"get", "/api/v1/pods", NULL, .res = 1, .kube = 1, .verb = "", .prefix = "api",
     .version = "v1", .resource = "pods", .scope = CL, .parts = "pods"},

    /* subresources of a namespace itself */
    {"GET", "/api/v1/namespaces/ns1/status", NULL, .res = 1, .kube = 1, .verb = "get",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "namespaces", .name = "ns1",
     .sub = "status", .scope = NS, .parts = "namespaces/ns1/status"},
    {"PUT", "/api/v1/namespaces/ns1/finalize", NULL, .res = 1, .kube = 1, .verb = "update",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "namespaces", .name = "ns1",
     .sub = "finalize", .scope = NS, .parts = "namespaces/ns1/finalize"},
    {"PATCH", "/api/v1/namespaces/ns1/status/x", NULL, .res = 1, .kube = 1, .verb = "patch",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "namespaces", .name = "ns1",
     .sub = "status", .scope = NS, .parts = "namespaces/ns1/status/x"},

    /* ?watch= on a list; a named get stays get (kube-apiserver serves a get) */
    {"GET", "/api/v1/namespaces/ns1/pods", "watch=true", .res = 1, .kube = 1, .verb = "watch",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .scope = NS,
     .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods", "watch=1&resourceVersion=10", .res = 1, .kube = 1,
     .verb = "watch", .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods",
     .scope = NS, .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods", "watch=0", .res = 1, .kube = 1, .verb = "list",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .scope = NS,
     .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods", "watch=false", .res = 1, .kube = 1, .verb = "list",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .scope = NS,
     .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods", "watch=FaLsE", .res = 1, .kube = 1, .verb = "list",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .scope = NS,
     .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods", "limit=5&watch=", .res = 1, .kube = 1,
     .verb = "watch", .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods",
     .scope = NS, .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods", "watch", .res = 1, .kube = 1, .verb = "watch",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .scope = NS,
     .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods", "watch=0&watch=1", .res = 1, .kube = 1,
     .verb = "list", .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods",
     .scope = NS, .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods", "w%61tch=yes", .res = 1, .kube = 1, .verb = "watch",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .scope = NS,
     .parts = "pods"},
    /* Go's EqualFold folds U+017F (long s) to "s": kube-apiserver lists */
    {"GET", "/api/v1/pods", "watch=fal%C5%BFe", .res = 1, .kube = 1, .verb = "list",
     .prefix = "api", .version = "v1", .resource = "pods", .scope = CL, .parts = "pods"},
    {"GET", "/api/v1/pods", "watch=falsey", .res = 1, .kube = 1, .verb = "watch",
     .prefix = "api", .version = "v1", .resource = "pods", .scope = CL, .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods/p1", "watch=true", .res = 1, .kube = 1, .verb = "get",
     .prefix = "api", .version = "v1", .ns = "ns1", .resource = "pods", .name = "p1",
     .scope = NS, .parts = "pods/p1"},

    /* fieldSelector=metadata.name=X names the object of a list or watch */
    {"GET", "/api/v1/namespaces/ns1/pods", "fieldSelector=metadata.name%3Dp1", .res = 1,
     .kube = 1, .verb = "list", .prefix = "api", .version = "v1", .ns = "ns1",
     .resource = "pods", .name = "p1", .scope = NS, .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods", "watch=1&fieldSelector=metadata.name%3D%3Dp1",
     .res = 1, .kube = 1, .verb = "watch", .prefix = "api", .version = "v1", .ns = "ns1",
     .resource = "pods", .name = "p1", .scope = NS, .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns1/pods", "fieldSelector=metadata.name=p1", .res = 1,
     .kube = 1, .verb = "list", .prefix = "api", .version = "v1", .ns = "ns1",
     .resource = "pods", .name = "p1", .scope = NS, .parts = "pods"},
    {"GET", "/api/v1/pods", "fieldSelector=spec.nodeName%3Dn1,metadata.name%3Dp1", .res = 1,
     .kube = 1, .verb = "list", .prefix = "api", .version = "v1", .resource = "pods",
     .name = "p1", .scope = CL, .parts = "pods"},
    {"GET", "/api/v1/pods", "fieldSelector=spec.x%3Da%5C%2Cb%5C%3D,metadata.name%3Dp", .res = 1,
     .kube = 1, .verb = "list", .prefix = "api", .version = "v1", .resource = "pods",
     .name = "p", .scope = CL, .parts = "pods"},
    {"GET", "/api/v1/pods", "fieldSelector=metadata.name!%3Dp1", .res = 1, .kube = 1,
     .verb = "list", .prefix = "api", .version = "v1", .resource = "pods", .scope = CL,
     .parts = "pods"},
    {"GET", "/api/v1/pods", "fieldSelector=metadata.name%3Da,metadata.name%3Db", .res = 1,
     .kube = 1, .verb = "list", .prefix = "api", .version = "v1", .resource = "pods",
     .scope = CL, .parts = "pods"},
    {"GET", "/api/v1/pods", "fieldSelector=metadata.name%3Da,metadata.name%3D%3Da", .res = 1,
     .kube = 1, .verb = "list", .prefix = "api", .version = "v1", .resource = "pods",
     .name = "a", .scope = CL, .parts = "pods"},
    {"GET", "/api/v1/pods", "fieldSelector=metadata.name%3D..", .res = 1, .kube = 1,
     .verb = "list", .prefix = "api", .version = "v1", .resource = "pods", .scope = CL,
     .parts = "pods"},
    {"GET", "/api/v1/pods", "fieldSelector=metadata.name%3Da%2Fb", .res = 1, .kube = 1,
     .verb = "list", .prefix = "api", .version = "v1", .resource = "pods", .scope = CL,
     .parts = "pods"},
    /* one bad term spoils the selector: no name */
    {"GET", "/api/v1/pods", "fieldSelector=metadata.name%3Dp1,bad", .res = 1, .kube = 1,
     .verb = "list", .prefix = "api", .version = "v1", .resource = "pods", .scope = CL,
     .parts = "pods"},
    {"GET", "/api/v1/pods", "fieldSelector=metadata.name%3Dp%5Cq", .res = 1, .kube = 1,
     .verb = "list", .prefix = "api", .version = "v1", .resource = "pods", .scope = CL,
     .parts = "pods"},
    {"GET", "/api/v1/pods", "fieldSelector=metadata.name%3Da%3Db", .res = 1, .kube = 1,
     .verb = "list", .prefix = "api", .version = "v1", .resource = "pods", .scope = CL,
     .parts = "pods"},
    {"GET", "/api/v1/pods", "fieldSelector=%20metadata.name%3Dp1", .res = 1, .kube = 1,
     .verb = "list", .prefix = "api", .version = "v1", .resource = "pods", .scope = CL,
     .parts = "pods"},
    /* only the first fieldSelector counts, as in Go */
    {"GET", "/api/v1/pods", "fieldSelector=metadata.name%3Dp1&fieldSelector=metadata.name%3Dp2",
     .res = 1, .kube = 1, .verb = "list", .prefix = "api", .version = "v1", .resource = "pods",
     .name = "p1", .scope = CL, .parts = "pods"},
    /* not for delete: deletecollection keeps no name (as Kubernetes) */
    {"DELETE", "/api/v1/namespaces/ns1/pods", "fieldSelector=metadata.name%3Dp1", .res = 1,
     .kube = 1, .verb = "deletecollection", .prefix = "api", .version = "v1", .ns = "ns1",
     .resource = "pods", .scope = NS, .parts = "pods"},
    /* nor for a path watch */
    {"GET", "/api/v1/watch/pods", "fieldSelector=metadata.name%3Dp1", .res = 1, .kube = 1,
     .verb = "watch", .prefix = "api", .version = "v1", .resource = "pods", .scope = CL,
     .parts = "pods"},

    /* named groups, the watch and proxy verbs in the path */
    {"GET", "/apis/apps/v1/namespaces/ns/deployments", NULL, .res = 1, .kube = 1,
     .verb = "list", .prefix = "apis", .group = "apps", .version = "v1", .ns = "ns",
     .resource = "deployments", .scope = NS, .parts = "deployments"},
    {"GET", "/apis/apps/v1/watch/namespaces/ns/deployments", NULL, .res = 1, .kube = 1,
     .verb = "watch", .prefix = "apis", .group = "apps", .version = "v1", .ns = "ns",
     .resource = "deployments", .scope = NS, .parts = "deployments"},
    {"GET", "/apis/apps/v1/watch/namespaces/ns/deployments/d1", NULL, .res = 1, .kube = 1,
     .verb = "watch", .prefix = "apis", .group = "apps", .version = "v1", .ns = "ns",
     .resource = "deployments", .name = "d1", .scope = NS, .parts = "deployments/d1"},
    {"GET", "/api/v1/watch/pods", NULL, .res = 1, .kube = 1, .verb = "watch", .prefix = "api",
     .version = "v1", .resource = "pods", .scope = CL, .parts = "pods"},
    {"GET", "/api/v1/watch/namespaces", NULL, .res = 1, .kube = 1, .verb = "watch",
     .prefix = "api", .version = "v1", .resource = "namespaces", .scope = CL,
     .parts = "namespaces"},
    {"GET", "/api/v1/proxy/namespaces/ns/pods/p/a/b", NULL, .res = 1, .kube = 1,
     .verb = "proxy", .prefix = "api", .version = "v1", .ns = "ns", .resource = "pods",
     .name = "p", .scope = NS, .parts = "pods/p/a/b"},
    {"POST", "/api/v1/proxy/nodes/n1", NULL, .res = 1, .kube = 1, .verb = "proxy",
     .prefix = "api", .version = "v1", .resource = "nodes", .name = "n1", .scope = CL,
     .parts = "nodes/n1"},
    {"GET", "/api/v1/namespaces/ns/pods/p/proxy/a/b", NULL, .res = 1, .kube = 1,
     .verb = "get", .prefix = "api", .version = "v1", .ns = "ns", .resource = "pods",
     .name = "p", .sub = "proxy", .scope = NS, .parts = "pods/p/proxy/a/b"},
    {"GET", "/api/v1/namespaces/ns/services/https:svc:443/proxy/", NULL, .res = 1, .kube = 1,
     .verb = "get", .prefix = "api", .version = "v1", .ns = "ns", .resource = "services",
     .name = "https:svc:443", .sub = "proxy", .scope = NS,
     .parts = "services/https:svc:443/proxy"},
    {"POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", NULL, .res = 1, .kube = 1,
     .verb = "create", .prefix = "apis", .group = "rbac.authorization.k8s.io", .version = "v1",
     .resource = "clusterroles", .scope = CL, .parts = "clusterroles"},
    {"POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", NULL, .res = 1,
     .kube = 1, .verb = "create", .prefix = "apis", .group = "authorization.k8s.io",
     .version = "v1", .resource = "selfsubjectaccessreviews", .scope = CL,
     .parts = "selfsubjectaccessreviews"},
    /* the global resources are global whatever the prefix */
    {"GET", "/apis/iam.kubesphere.io/v1beta1/users", NULL, .res = 1, .kube = 1, .verb = "list",
     .prefix = "apis", .group = "iam.kubesphere.io", .version = "v1beta1", .resource = "users",
     .scope = GL, .parts = "users"},
    {"DELETE", "/apis/iam.kubesphere.io/v1beta1/users/u1", NULL, .res = 1, .kube = 1,
     .verb = "delete", .prefix = "apis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "users", .name = "u1", .scope = GL, .parts = "users/u1"},

    /* discovery and other non-resource paths */
    {"GET", "/apis", NULL, .kube = 1, .verb = "get", .prefix = "apis"},
    {"GET", "/apis/apps", NULL, .kube = 1, .verb = "get", .prefix = "apis"},
    {"GET", "/apis/apps/v1", NULL, .kube = 1, .verb = "get", .prefix = "apis"},
    {"GET", "/api", NULL, .kube = 1, .verb = "get", .prefix = "api"},
    {"GET", "/api/v1", NULL, .kube = 1, .verb = "get", .prefix = "api"},
    {"GET", "/api/v1/", NULL, .kube = 1, .verb = "get", .prefix = "api"},
    {"GET", "/version", NULL, .verb = "get"},
    {"GET", "/healthz", "verbose=1", .verb = "get"},
    {"POST", "/oauth/token", NULL, .verb = "post"},
    {"GET", "/oauth/authorize", "response_type=code&client_id=c", .verb = "get"},
    {"GET", "/openapi/v2", NULL, .verb = "get"},
    {"GET", "/openapi/v3/apis/apps/v1", NULL, .verb = "get"},
    {"GET", "/.well-known/openid-configuration", NULL, .verb = "get"},
    {"GET", "/", NULL, .verb = "get"},
    {"HEAD", "/livez", NULL, .verb = "head"},
    {"DELETE", "/foo/bar/baz/qux", NULL, .verb = "delete"},
    {"PROPFIND", "/dav/x", NULL, .verb = "propfind"},
    {"GET", "/kapis", NULL, .verb = "get", .prefix = "kapis"},
    {"GET", "/kapis/version", NULL, .verb = "get", .prefix = "kapis"},
    {"GET", "/kapis/iam.kubesphere.io/v1beta1", NULL, .verb = "get", .prefix = "kapis"},
    {"GET", "/kapi/v1", NULL, .verb = "get", .prefix = "kapi"},

    /* KubeSphere APIs */
    {"GET", "/kapis/iam.kubesphere.io/v1beta1/users", NULL, .res = 1, .verb = "list",
     .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1", .resource = "users",
     .scope = GL, .parts = "users"},
    {"GET", "/kapis/iam.kubesphere.io/v1beta1/users/u1", NULL, .res = 1, .verb = "get",
     .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1", .resource = "users",
     .name = "u1", .scope = GL, .parts = "users/u1"},
    {"PUT", "/kapis/iam.kubesphere.io/v1beta1/users/u1/password", NULL, .res = 1,
     .verb = "update", .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "users", .name = "u1", .sub = "password", .scope = GL,
     .parts = "users/u1/password"},
    {"GET", "/kapis/iam.kubesphere.io/v1beta1/users/u1/loginrecords", NULL, .res = 1,
     .verb = "get", .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "users", .name = "u1", .sub = "loginrecords", .scope = GL,
     .parts = "users/u1/loginrecords"},
    {"GET", "/kapis/iam.kubesphere.io/v1beta1/globalroles", NULL, .res = 1, .verb = "list",
     .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "globalroles", .scope = GL, .parts = "globalroles"},
    {"POST", "/kapis/iam.kubesphere.io/v1beta1/globalrolebindings", NULL, .res = 1,
     .verb = "create", .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "globalrolebindings", .scope = GL, .parts = "globalrolebindings"},
    /* not in KubeSphere's global list: Cluster */
    {"GET", "/kapis/iam.kubesphere.io/v1beta1/roletemplates", NULL, .res = 1, .verb = "list",
     .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "roletemplates", .scope = CL, .parts = "roletemplates"},
    {"GET", "/kapis/iam.kubesphere.io/v1beta1/clustermembers", NULL, .res = 1, .verb = "list",
     .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "clustermembers", .scope = CL, .parts = "clustermembers"},
    /* workspaces: the scope, and a resource in its own right */
    {"GET", "/kapis/tenant.kubesphere.io/v1beta1/workspaces", NULL, .res = 1, .verb = "list",
     .prefix = "kapis", .group = "tenant.kubesphere.io", .version = "v1beta1",
     .resource = "workspaces", .scope = GL, .parts = "workspaces"},
    {"GET", "/kapis/tenant.kubesphere.io/v1beta1/workspaces/ws1", NULL, .res = 1, .verb = "get",
     .prefix = "kapis", .group = "tenant.kubesphere.io", .version = "v1beta1",
     .resource = "workspaces", .name = "ws1", .ws = "ws1", .scope = WS,
     .parts = "workspaces/ws1"},
    {"GET", "/kapis/tenant.kubesphere.io/v1beta1/workspaces/ws1/namespaces", NULL, .res = 1,
     .verb = "list", .prefix = "kapis", .group = "tenant.kubesphere.io", .version = "v1beta1",
     .resource = "namespaces", .ws = "ws1", .scope = WS, .parts = "namespaces"},
    {"GET", "/kapis/tenant.kubesphere.io/v1beta1/workspaces/ws1/namespaces/ns1", NULL,
     .res = 1, .verb = "get", .prefix = "kapis", .group = "tenant.kubesphere.io",
     .version = "v1beta1", .ns = "ns1", .resource = "namespaces", .name = "ns1", .ws = "ws1",
     .scope = NS, .parts = "namespaces/ns1"},
    {"GET", "/kapis/tenant.kubesphere.io/v1beta1/workspaces/ws1/namespaces/ns1/pods", NULL,
     .res = 1, .verb = "list", .prefix = "kapis", .group = "tenant.kubesphere.io",
     .version = "v1beta1", .ns = "ns1", .resource = "pods", .ws = "ws1", .scope = NS,
     .parts = "pods"},
    {"GET", "/kapis/tenant.kubesphere.io/v1beta1/workspaces/ws1/namespaces/ns1/status", NULL,
     .res = 1, .verb = "get", .prefix = "kapis", .group = "tenant.kubesphere.io",
     .version = "v1beta1", .ns = "ns1", .resource = "namespaces", .name = "ns1", .sub = "status",
     .ws = "ws1", .scope = NS, .parts = "namespaces/ns1/status"},
    {"DELETE", "/kapis/tenant.kubesphere.io/v1beta1/workspaces/ws1/devops", NULL, .res = 1,
     .verb = "deletecollection", .prefix = "kapis", .group = "tenant.kubesphere.io",
     .version = "v1beta1", .resource = "devops", .ws = "ws1", .scope = WS, .parts = "devops"},
    {"GET", "/apis/tenant.kubesphere.io/v1beta1/workspacetemplates", NULL, .res = 1, .kube = 1,
     .verb = "list", .prefix = "apis", .group = "tenant.kubesphere.io", .version = "v1beta1",
     .resource = "workspacetemplates", .scope = CL, .parts = "workspacetemplates"},
    {"PUT", "/apis/tenant.kubesphere.io/v1beta1/workspacetemplates/ws1", NULL, .res = 1,
     .kube = 1, .verb = "update", .prefix = "apis", .group = "tenant.kubesphere.io",
     .version = "v1beta1", .resource = "workspacetemplates", .name = "ws1", .ws = "ws1",
     .scope = WS, .parts = "workspacetemplates/ws1"},
    {"GET", "/kapis/tenant.kubesphere.io/v1beta1/workspacetemplates/ws1/clusters", NULL,
     .res = 1, .verb = "list", .prefix = "kapis", .group = "tenant.kubesphere.io",
     .version = "v1beta1", .resource = "clusters", .ws = "ws1", .scope = WS,
     .parts = "clusters"},
    {"GET", "/kapis/iam.kubesphere.io/v1beta1/workspaces/ws1/workspacemembers", NULL, .res = 1,
     .verb = "list", .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "workspacemembers", .ws = "ws1", .scope = WS, .parts = "workspacemembers"},
    /* a global resource under a workspace is at Workspace scope */
    {"GET", "/kapis/iam.kubesphere.io/v1beta1/workspaces/ws1/users", NULL, .res = 1,
     .verb = "list", .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "users", .ws = "ws1", .scope = WS, .parts = "users"},
    /* ... and under a namespace stays Global (KubeSphere checks global first) */
    {"GET", "/kapis/iam.kubesphere.io/v1beta1/namespaces/ns1/users", NULL, .res = 1,
     .verb = "list", .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .ns = "ns1", .resource = "users", .scope = GL, .parts = "users"},
    {"GET", "/kapis/iam.kubesphere.io/v1beta1/namespaces/ns1/namespacemembers/u1", NULL,
     .res = 1, .verb = "get", .prefix = "kapis", .group = "iam.kubesphere.io",
     .version = "v1beta1", .ns = "ns1", .resource = "namespacemembers", .name = "u1",
     .scope = NS, .parts = "namespacemembers/u1"},
    {"GET", "/kapis/resources.kubesphere.io/v1alpha3/namespaces/ns1/pods", NULL, .res = 1,
     .verb = "list", .prefix = "kapis", .group = "resources.kubesphere.io",
     .version = "v1alpha3", .ns = "ns1", .resource = "pods", .scope = NS, .parts = "pods"},
    {"GET", "/kapis/resources.kubesphere.io/v1alpha3/namespaces/ns1/deployments/d1", NULL,
     .res = 1, .verb = "get", .prefix = "kapis", .group = "resources.kubesphere.io",
     .version = "v1alpha3", .ns = "ns1", .resource = "deployments", .name = "d1", .scope = NS,
     .parts = "deployments/d1"},
    {"GET", "/kapis/resources.kubesphere.io/v1alpha3/deployments", "sortBy=name&limit=10",
     .res = 1, .verb = "list", .prefix = "kapis", .group = "resources.kubesphere.io",
     .version = "v1alpha3", .resource = "deployments", .scope = CL, .parts = "deployments"},
    {"GET", "/kapis/resources.kubesphere.io/v1alpha3/clusters", NULL, .res = 1, .verb = "list",
     .prefix = "kapis", .group = "resources.kubesphere.io", .version = "v1alpha3",
     .resource = "clusters", .scope = GL, .parts = "clusters"},
    {"GET", "/kapis/cluster.kubesphere.io/v1alpha1/clusters/c1", NULL, .res = 1, .verb = "get",
     .prefix = "kapis", .group = "cluster.kubesphere.io", .version = "v1alpha1",
     .resource = "clusters", .name = "c1", .scope = GL, .parts = "clusters/c1"},
    {"GET", "/kapis/config.kubesphere.io/v1alpha2/configs/oauth", NULL, .res = 1, .verb = "get",
     .prefix = "kapis", .group = "config.kubesphere.io", .version = "v1alpha2",
     .resource = "configs", .name = "oauth", .scope = CL, .parts = "configs/oauth"},
    /* KubeSphere reads "events" as a name here, and so do we */
    {"GET", "/kapis/tenant.kubesphere.io/v1alpha2/auditing/events", "limit=10", .res = 1,
     .verb = "get", .prefix = "kapis", .group = "tenant.kubesphere.io", .version = "v1alpha2",
     .resource = "auditing", .name = "events", .scope = CL, .parts = "auditing/events"},
    {"GET", "/kapi/v1/things", NULL, .res = 1, .verb = "list", .prefix = "kapi",
     .version = "v1", .resource = "things", .scope = CL, .parts = "things"},

    /* clusters/{c} in front, and the legacy form after the prefix */
    {"GET", "/clusters/host/api/v1/namespaces/ns/pods/p/log", NULL, .res = 1, .kube = 1,
     .verb = "get", .prefix = "api", .version = "v1", .ns = "ns", .resource = "pods",
     .name = "p", .sub = "log", .cluster = "host", .scope = NS,
     .opath = "/api/v1/namespaces/ns/pods/p/log", .parts = "pods/p/log"},
    {"GET", "/clusters/member1/apis/apps/v1/deployments", NULL, .res = 1, .kube = 1,
     .verb = "list", .prefix = "apis", .group = "apps", .version = "v1",
     .resource = "deployments", .cluster = "member1", .scope = CL,
     .opath = "/apis/apps/v1/deployments", .parts = "deployments"},
    {"GET", "/clusters/host/kapis/iam.kubesphere.io/v1beta1/users", NULL, .res = 1,
     .verb = "list", .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "users", .cluster = "host", .scope = GL,
     .opath = "/kapis/iam.kubesphere.io/v1beta1/users", .parts = "users"},
    {"GET", "/kapis/clusters/host/iam.kubesphere.io/v1beta1/users", NULL, .res = 1,
     .verb = "list", .prefix = "kapis", .group = "iam.kubesphere.io", .version = "v1beta1",
     .resource = "users", .cluster = "host", .scope = GL,
     .opath = "/kapis/iam.kubesphere.io/v1beta1/users", .parts = "users"},
    {"GET", "/api/clusters/c1/v1/namespaces/ns/configmaps", NULL, .res = 1, .kube = 1,
     .verb = "list", .prefix = "api", .version = "v1", .ns = "ns", .resource = "configmaps",
     .cluster = "c1", .scope = NS, .opath = "/api/v1/namespaces/ns/configmaps",
     .parts = "configmaps"},
    {"GET", "/apis/clusters/c1/apps/v1/watch/deployments", NULL, .res = 1, .kube = 1,
     .verb = "watch", .prefix = "apis", .group = "apps", .version = "v1",
     .resource = "deployments", .cluster = "c1", .scope = CL,
     .opath = "/apis/apps/v1/watch/deployments", .parts = "deployments"},
    {"GET", "/clusters/host/version", NULL, .verb = "get", .cluster = "host",
     .opath = "/version"},
    {"GET", "/clusters/host/apis", NULL, .kube = 1, .verb = "get", .prefix = "apis",
     .cluster = "host", .opath = "/apis"},
    {"GET", "/clusters/host/api/v1", NULL, .kube = 1, .verb = "get", .prefix = "api",
     .cluster = "host", .opath = "/api/v1"},
    /* /clusters/{c} needs something after it (KubeSphere) */
    {"GET", "/clusters/host", NULL, .verb = "get"},
    {"GET", "/api/clusters/c1", NULL, .kube = 1, .verb = "get", .prefix = "api",
     .cluster = "c1", .opath = "/api"},
    {"GET", "/api/clusters/c1/", NULL, .kube = 1, .verb = "get", .prefix = "api",
     .cluster = "c1", .opath = "/api/"},
    {"GET", "/api/clusters", NULL, .kube = 1, .verb = "get", .prefix = "api"},

    /* percent-encoding is decoded once; trailing "/"; UTF-8 */
    {"GET", "/api/v1/namespaces/ns/configmaps/a%3Ab", NULL, .res = 1, .kube = 1, .verb = "get",
     .prefix = "api", .version = "v1", .ns = "ns", .resource = "configmaps", .name = "a:b",
     .scope = NS, .opath = "/api/v1/namespaces/ns/configmaps/a:b",
     .parts = "configmaps/a:b"},
    {"GET", "/api/v1/namespaces/n%73/pods", NULL, .res = 1, .kube = 1, .verb = "list",
     .prefix = "api", .version = "v1", .ns = "ns", .resource = "pods", .scope = NS,
     .opath = "/api/v1/namespaces/ns/pods", .parts = "pods"},
    {"GET", "/%61pi/v1/pods", NULL, .res = 1, .kube = 1, .verb = "list", .prefix = "api",
     .version = "v1", .resource = "pods", .scope = CL, .opath = "/api/v1/pods",
     .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns/pods/", NULL, .res = 1, .kube = 1, .verb = "list",
     .prefix = "api", .version = "v1", .ns = "ns", .resource = "pods", .scope = NS,
     .parts = "pods"},
    {"GET", "/api/v1/namespaces/ns/configmaps/%C3%A9t%C3%A9", NULL, .res = 1, .kube = 1,
     .verb = "get", .prefix = "api", .version = "v1", .ns = "ns", .resource = "configmaps",
     .name = "\xc3\xa9t\xc3\xa9", .scope = NS,
     .opath = "/api/v1/namespaces/ns/configmaps/\xc3\xa9t\xc3\xa9",
     .parts = "configmaps/\xc3\xa9t\xc3\xa9"},
    {"GET", "/kapis/g.io/v1/things/\xe6\x97\xa5", NULL, .res = 1, .verb = "get",
     .prefix = "kapis", .group = "g.io", .version = "v1", .resource = "things",
     .name = "\xe6\x97\xa5", .scope = CL, .parts = "things/\xe6\x97\xa5"},
    {"GET", "/api/v1/namespaces/ns/configmaps/a%20b..c", NULL, .res = 1, .kube = 1,
     .verb = "get", .prefix = "api", .version = "v1", .ns = "ns", .resource = "configmaps",
     .name = "a b..c", .scope = NS, .opath = "/api/v1/namespaces/ns/configmaps/a b..c",
     .parts = "configmaps/a b..c"},
    {"GET", "/api/v1/namespaces/ns/configmaps/...", NULL, .res = 1, .kube = 1, .verb = "get",
     .prefix = "api", .version = "v1", .ns = "ns", .resource = "configmaps", .name = "...",
     .scope = NS, .parts = "configmaps/..."},

    /* KubeSphere: a watch of namespaces by workspace label is Workspace scope */
    {"GET", "/api/v1/namespaces", "watch=1&labelSelector=kubesphere.io/workspace%3Dws1",
     .res = 1, .kube = 1, .verb = "watch", .prefix = "api", .version = "v1",
     .resource = "namespaces", .ws = "ws1", .scope = WS, .parts = "namespaces"},
    {"GET", "/api/v1/watch/namespaces",
     "labelSelector=kubesphere.io%2Fworkspace%3Dsystem-workspace", .res = 1, .kube = 1,
     .verb = "watch", .prefix = "api", .version = "v1", .resource = "namespaces",
     .ws = "system-workspace", .scope = WS, .parts = "namespaces"},
    {"GET", "/api/v1/namespaces", "labelSelector=kubesphere.io/workspace%3Dws1", .res = 1,
     .kube = 1, .verb = "list", .prefix = "api", .version = "v1", .resource = "namespaces",
     .scope = CL, .parts = "namespaces"},
    {"GET", "/api/v1/pods", "watch=1&labelSelector=kubesphere.io/workspace%3Dws1", .res = 1,
     .kube = 1, .verb = "watch", .prefix = "api", .version = "v1", .resource = "pods",
     .scope = CL, .parts = "pods"},
    {"GET", "/api/v1/namespaces", "watch=1&labelSelector=kubesphere.io/workspace%3Dws1,a%3Db",
     .res = 1, .kube = 1, .verb = "watch", .prefix = "api", .version = "v1",
     .resource = "namespaces", .scope = CL, .parts = "namespaces"},
    {"GET", "/kapis/tenant.kubesphere.io/v1beta1/workspaces/ws1/namespaces",
     "watch=1&labelSelector=kubesphere.io/workspace%3Dws2", .res = 1, .verb = "watch",
     .prefix = "kapis", .group = "tenant.kubesphere.io", .version = "v1beta1",
     .resource = "namespaces", .ws = "ws1", .scope = WS, .parts = "namespaces"},
};

/* A rejected request and its status. */
typedef struct {
    const char *method, *path, *query;
    ks_status st;
} bad_case;

static const bad_case bad_cases[] = {
    {"GET", "api/v1/pods", NULL, KS_ERR_INVALID},
    {"GET", "", NULL, KS_ERR_INVALID},
    {"GET", "*", NULL, KS_ERR_INVALID},
    {"GET", "http://h/api/v1/pods", NULL, KS_ERR_INVALID},
    {"", "/api/v1/pods", NULL, KS_ERR_INVALID},
    {"G T", "/api/v1/pods", NULL, KS_ERR_INVALID},
    {"GET\r\n", "/api/v1/pods", NULL, KS_ERR_INVALID},
    {"GETGETGETGETGETGETGETGETGETGETGET", "/api/v1/pods", NULL, KS_ERR_INVALID},
    /* traversal, raw and encoded */
    {"GET", "/api/v1/namespaces/../pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/./pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/ns/pods/..", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/ns/pods/.", NULL, KS_ERR_INVALID},
    {"GET", "/..", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/%2e%2e/pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/%2E%2E/pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/.%2e/pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/%2e/pods", NULL, KS_ERR_INVALID},
    {"GET", "/clusters/host/%2e%2e/%2e%2e/etc/passwd", NULL, KS_ERR_INVALID},
    /* empty segments */
    {"GET", "/api/v1//pods", NULL, KS_ERR_INVALID},
    {"GET", "//api/v1/pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/pods//", NULL, KS_ERR_INVALID},
    {"GET", "//", NULL, KS_ERR_INVALID},
    /* encoded separators and double encoding */
    {"GET", "/api/v1/namespaces/a%2Fb/pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/a%2fb/pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/%2e%2e%2f%2e%2e/pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/ns%5c..%5cx/pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/ns\\..\\x/pods", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/namespaces/ns/pods/%252e%252e", NULL, KS_ERR_INVALID},
    /* NUL, controls, bad escapes */
    {"GET", "/api/v1/namespaces/ns/pods/a%00b", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/pods/a\tb", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/pods/a%0Ab", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/pods/a%7Fb", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/pods/a b", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/%zz", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/%4", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/pods%", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/pods?watch=1", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/pods#x", NULL, KS_ERR_INVALID},
    /* invalid UTF-8 once decoded */
    {"GET", "/api/v1/namespaces/%C3%28", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/%C0%AF", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/%E0%80%AF", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/%ED%A0%80", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/%F4%90%80%80", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/%F8%88%80%80%80", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/pods/\xff", NULL, KS_ERR_INVALID},
    {"GET", "/api/v1/pods/\xe6\x97", NULL, KS_ERR_INVALID},
    /* the query */
    {"GET", "/api/v1/pods", "a=%zz", KS_ERR_INVALID},
    {"GET", "/api/v1/pods", "a=%2", KS_ERR_INVALID},
    {"GET", "/api/v1/pods", "watch=1;x=2", KS_ERR_INVALID},
    {"GET", "/api/v1/pods", "watch=%00", KS_ERR_INVALID},
    {"GET", "/api/v1/pods", "a=b c", KS_ERR_INVALID},
    {"GET", "/api/v1/pods", "a=b\r\nX: y", KS_ERR_INVALID},
    {"GET", "/api/v1/pods", "a=b#frag", KS_ERR_INVALID},
    /* the grammar */
    {"GET", "/api/v1/watch", NULL, KS_ERR_INVALID},
    {"GET", "/apis/apps/v1/proxy", NULL, KS_ERR_INVALID},
    {"GET", "/clusters/c1/api/v1/watch/", NULL, KS_ERR_INVALID},
    {"GET", "/clusters/c1/api/clusters/c2/v1/pods", NULL, KS_ERR_INVALID},
    {"GET", "/clusters/c1/kapis/clusters/c1/iam.kubesphere.io/v1beta1/users", NULL,
     KS_ERR_INVALID},
};

static ks_requestinfo *new_ri(void)
{
    ks_requestinfo *ri = malloc(sizeof(*ri));

    assert_non_null(ri);
    return ri;
}

static void join_parts(const ks_requestinfo *ri, char *buf, size_t cap)
{
    size_t o = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < ri->nparts; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? "/" : "", ri->parts[i]);
}

#define EXPECT(field, want)                                                                  \
    do {                                                                                     \
        const char *w_ = (want) ? (want) : "";                                              \
        assert_non_null(ri->field);                                                          \
        if (strcmp(ri->field, w_) != 0)                                                      \
            fail_msg("case %zu %s %s?%s: " #field " is \"%s\", want \"%s\"", i, c->method,    \
                     c->path, c->query ? c->query : "", ri->field, w_);                     \
    } while (0)

static void test_accepted(void **state)
{
    ks_requestinfo *ri = new_ri();
    char err[256], parts[1024];

    for (size_t i = 0; i < sizeof(ok_cases) / sizeof(ok_cases[0]); i++) {
        const ok_case *c = &ok_cases[i];
        ks_status st = ks_requestinfo_parse(c->method, c->path, c->query, ri, err, sizeof(err));

        if (st != KS_OK)
            fail_msg("case %zu %s %s?%s: %s (%s)", i, c->method, c->path,
                     c->query ? c->query : "", ks_status_name(st), err);
        if (ri->is_resource_request != c->res || ri->is_kube_request != c->kube)
            fail_msg("case %zu %s: resource %d kube %d, want %d %d", i, c->path,
                     ri->is_resource_request, ri->is_kube_request, c->res, c->kube);
        EXPECT(verb, c->verb);
        EXPECT(api_prefix, c->prefix);
        EXPECT(api_group, c->group);
        EXPECT(api_version, c->version);
        EXPECT(namespace, c->ns);
        EXPECT(resource, c->resource);
        EXPECT(subresource, c->sub);
        EXPECT(name, c->name);
        EXPECT(workspace, c->ws);
        EXPECT(cluster, c->cluster);
        EXPECT(resource_scope, c->scope);
        EXPECT(devops, "");
        EXPECT(path, c->opath ? c->opath : c->path);
        join_parts(ri, parts, sizeof(parts));
        if (strcmp(parts, c->parts ? c->parts : "") != 0)
            fail_msg("case %zu %s: parts \"%s\", want \"%s\"", i, c->path, parts,
                     c->parts ? c->parts : "");
    }
    print_message("%zu accepted cases\n", sizeof(ok_cases) / sizeof(ok_cases[0]));
    free(ri);
}

static void test_rejected(void **state)
{
    ks_requestinfo *ri = new_ri(), *before = new_ri();
    char err[256];

    memset(ri, 0xa5, sizeof(*ri));
    memcpy(before, ri, sizeof(*ri));
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const bad_case *c = &bad_cases[i];
        ks_status st;

        err[0] = '\0';
        st = ks_requestinfo_parse(c->method, c->path, c->query, ri, err, sizeof(err));
        if (st != c->st)
            fail_msg("case %zu %s %s?%s: %s, want %s", i, c->method, c->path,
                     c->query ? c->query : "", ks_status_name(st), ks_status_name(c->st));
        assert_true(err[0] != '\0');
        assert_true(strlen(err) < sizeof(err));
        /* outputs are set only on success */
        assert_memory_equal(ri, before, sizeof(*ri));
        assert_int_equal(ks_requestinfo_http_code(st), 400);
        assert_non_null(strstr(ks_status_last(), err));
    }
    print_message("%zu rejected cases\n", sizeof(bad_cases) / sizeof(bad_cases[0]));
    free(ri);
    free(before);
}

/* The caps: at the cap accepted, one past it KS_ERR_TOO_LARGE (414). */
static void test_caps(void **state)
{
    ks_requestinfo *ri = new_ri();
    char err[128];
    char *path = malloc(KS_REQUESTINFO_PATH_MAX + 2);
    char *query = malloc(KS_REQUESTINFO_QUERY_MAX + 2);
    size_t o;

    assert_non_null(path);
    assert_non_null(query);

    /* a path of exactly PATH_MAX bytes */
    o = (size_t)snprintf(path, KS_REQUESTINFO_PATH_MAX + 2, "/api/v1/namespaces/ns/configmaps/");
    memset(path + o, 'a', KS_REQUESTINFO_PATH_MAX - o);
    path[KS_REQUESTINFO_PATH_MAX] = '\0';
    assert_int_equal(ks_requestinfo_parse("GET", path, NULL, ri, err, sizeof(err)), KS_OK);
    assert_int_equal(strlen(ri->name), KS_REQUESTINFO_PATH_MAX - o);
    assert_int_equal(strlen(ri->path), KS_REQUESTINFO_PATH_MAX);
    path[KS_REQUESTINFO_PATH_MAX] = 'a';
    path[KS_REQUESTINFO_PATH_MAX + 1] = '\0';
    assert_int_equal(ks_requestinfo_parse("GET", path, NULL, ri, err, sizeof(err)),
                     KS_ERR_TOO_LARGE);
    assert_int_equal(ks_requestinfo_http_code(KS_ERR_TOO_LARGE), 414);

    /* a path of 4096 one-byte segments: too many, and every slot full */
    o = 0;
    for (int i = 0; i < KS_REQUESTINFO_PATH_MAX / 2; i++) {
        path[o++] = '/';
        path[o++] = 'x';
    }
    path[o] = '\0';
    assert_int_equal(ks_requestinfo_parse("GET", path, NULL, ri, err, sizeof(err)),
                     KS_ERR_TOO_LARGE);

    /* exactly MAX_SEGMENTS segments, then one more */
    o = (size_t)snprintf(path, 64, "/api/v1/proxy/nodes/n");
    for (int i = 5; i < KS_REQUESTINFO_MAX_SEGMENTS; i++) {
        path[o++] = '/';
        path[o++] = 's';
    }
    path[o] = '\0';
    assert_int_equal(ks_requestinfo_parse("GET", path, NULL, ri, err, sizeof(err)), KS_OK);
    assert_int_equal(ri->nparts, KS_REQUESTINFO_MAX_SEGMENTS - 3);
    assert_string_equal(ri->verb, "proxy");
    assert_string_equal(ri->subresource, "");
    memcpy(path + o, "/s", 3);
    assert_int_equal(ks_requestinfo_parse("GET", path, NULL, ri, err, sizeof(err)),
                     KS_ERR_TOO_LARGE);

    /* the query */
    memset(query, 'q', KS_REQUESTINFO_QUERY_MAX);
    query[KS_REQUESTINFO_QUERY_MAX] = '\0';
    assert_int_equal(ks_requestinfo_parse("GET", "/api/v1/pods", query, ri, err, sizeof(err)),
                     KS_OK);
    query[KS_REQUESTINFO_QUERY_MAX] = 'q';
    query[KS_REQUESTINFO_QUERY_MAX + 1] = '\0';
    assert_int_equal(ks_requestinfo_parse("GET", "/api/v1/pods", query, ri, err, sizeof(err)),
                     KS_ERR_TOO_LARGE);

    /* a fieldSelector name longer than NAME_MAX is not taken */
    o = (size_t)snprintf(query, 64, "fieldSelector=metadata.name%%3D");
    memset(query + o, 'n', KS_REQUESTINFO_NAME_MAX + 1);
    query[o + KS_REQUESTINFO_NAME_MAX + 1] = '\0';
    assert_int_equal(ks_requestinfo_parse("GET", "/api/v1/pods", query, ri, err, sizeof(err)),
                     KS_OK);
    assert_string_equal(ri->name, "");
    query[o + KS_REQUESTINFO_NAME_MAX] = '\0';
    assert_int_equal(ks_requestinfo_parse("GET", "/api/v1/pods", query, ri, err, sizeof(err)),
                     KS_OK);
    assert_int_equal(strlen(ri->name), KS_REQUESTINFO_NAME_MAX);

    free(path);
    free(query);
    free(ri);
}

/* NUL bytes inside the inputs reach the parser only through parse_n. */
static void test_lengths_and_nul(void **state)
{
    ks_requestinfo *ri = new_ri();
    char err[128];
    static const char path[] = "/api/v1/pods/a\0b";
    static const char query[] = "watch=1\0&x";

    assert_int_equal(ks_requestinfo_parse_n("GET", 3, path, sizeof(path) - 1, NULL, 0, ri, err,
                                            sizeof(err)),
                     KS_ERR_INVALID);
    assert_non_null(strstr(err, "NUL"));
    assert_int_equal(ks_requestinfo_parse_n("GET", 3, "/api/v1/pods", 12, query,
                                            sizeof(query) - 1, ri, err, sizeof(err)),
                     KS_ERR_INVALID);
    assert_int_equal(ks_requestinfo_parse_n("GE\0", 3, "/api/v1/pods", 12, NULL, 0, ri, err,
                                            sizeof(err)),
                     KS_ERR_INVALID);
    /* not NUL-terminated: only the given lengths are read */
    assert_int_equal(ks_requestinfo_parse_n("GETX", 3, "/api/v1/pods/p1XXXX", 15, "watch=1XX",
                                            7, ri, err, sizeof(err)),
                     KS_OK);
    assert_string_equal(ri->verb, "get");
    assert_string_equal(ri->name, "p1");
    assert_int_equal(ks_requestinfo_parse_n("GET", 3, "/api/v1/pods", 12, NULL, 3, ri, err,
                                            sizeof(err)),
                     KS_ERR_INVALID);
    free(ri);
}

static void test_arguments_and_err(void **state)
{
    ks_requestinfo *ri = new_ri();
    char err[8];

    assert_int_equal(ks_requestinfo_parse(NULL, "/", NULL, ri, NULL, 0), KS_ERR_INVALID);
    assert_int_equal(ks_requestinfo_parse("GET", NULL, NULL, ri, NULL, 0), KS_ERR_INVALID);
    assert_int_equal(ks_requestinfo_parse("GET", "/", NULL, NULL, NULL, 0), KS_ERR_INVALID);
    /* errcap 0 and a NULL err are fine; a small err is cut and terminated */
    assert_int_equal(ks_requestinfo_parse("GET", "/..", NULL, ri, NULL, 0), KS_ERR_INVALID);
    memset(err, 'x', sizeof(err));
    assert_int_equal(ks_requestinfo_parse("GET", "/..", NULL, ri, err, sizeof(err)),
                     KS_ERR_INVALID);
    assert_int_equal(strlen(err), sizeof(err) - 1);
    /* err untouched on success */
    memcpy(err, "keep", 5);
    assert_int_equal(ks_requestinfo_parse("GET", "/", "", ri, err, sizeof(err)), KS_OK);
    assert_string_equal(err, "keep");
    assert_string_equal(ri->path, "/");
    assert_int_equal(ks_requestinfo_http_code(KS_OK), 200);
    assert_int_equal(ks_requestinfo_http_code(KS_ERR_INTERNAL), 500);
    free(ri);
}

/* raw_path: what to forward, still encoded, cluster segments removed. */
static void test_raw_path(void **state)
{
    ks_requestinfo *ri = new_ri();
    char err[128];

    assert_int_equal(ks_requestinfo_parse("GET", "/clusters/host/api/v1/namespaces/n%73/pods/a%3Ab",
                                          NULL, ri, err, sizeof(err)),
                     KS_OK);
    assert_string_equal(ri->raw_path, "/api/v1/namespaces/n%73/pods/a%3Ab");
    assert_string_equal(ri->path, "/api/v1/namespaces/ns/pods/a:b");
    assert_string_equal(ri->cluster, "host");
    assert_int_equal(ks_requestinfo_parse("GET", "/kapis/clusters/c%31/g.io/v1/x/", NULL, ri, err,
                                          sizeof(err)),
                     KS_OK);
    assert_string_equal(ri->raw_path, "/kapis/g.io/v1/x/");
    assert_string_equal(ri->cluster, "c1");
    assert_int_equal(ks_requestinfo_parse("GET", "/", NULL, ri, err, sizeof(err)), KS_OK);
    assert_string_equal(ri->raw_path, "/");
    assert_int_equal(ri->nparts, 0);
    free(ri);
}

/* A copy points into itself, not into the original. */
static void test_copy(void **state)
{
    ks_requestinfo *a = new_ri(), *b = new_ri();
    char err[128];

    assert_int_equal(ks_requestinfo_parse("GET", "/clusters/host/api/v1/namespaces/ns/pods",
                                          "fieldSelector=metadata.name%3Dp9", a, err,
                                          sizeof(err)),
                     KS_OK);
    ks_requestinfo_copy(b, a);
    memset(a, 0, sizeof(*a));
    free(a);
    assert_string_equal(b->path, "/api/v1/namespaces/ns/pods");
    assert_string_equal(b->raw_path, "/api/v1/namespaces/ns/pods");
    assert_string_equal(b->verb, "list");
    assert_string_equal(b->namespace, "ns");
    assert_string_equal(b->resource, "pods");
    assert_string_equal(b->name, "p9");
    assert_string_equal(b->cluster, "host");
    assert_string_equal(b->resource_scope, "Namespace");
    assert_int_equal(b->nparts, 1);
    assert_string_equal(b->parts[0], "pods");

    a = new_ri();
    assert_int_equal(ks_requestinfo_parse("MKCOL", "/dav", NULL, b, err, sizeof(err)), KS_OK);
    ks_requestinfo_copy(a, b);
    memset(b, 0, sizeof(*b));
    assert_string_equal(a->verb, "mkcol");
    assert_string_equal(a->path, "/dav");
    free(a);
    free(b);
}

/* to_proto points into the struct; packed and unpacked, every field survives. */
static void test_to_proto(void **state)
{
    ks_requestinfo *ri = new_ri();
    Kscore__V1__RequestInfo pb, *back;
    uint8_t buf[2048];
    size_t n;
    char err[128];

    assert_int_equal(
        ks_requestinfo_parse("PUT",
                             "/clusters/host/kapis/iam.kubesphere.io/v1beta1/workspaces/ws1/"
                             "namespaces/ns1/members/u1/roles",
                             NULL, ri, err, sizeof(err)),
        KS_OK);
    ks_requestinfo_to_proto(ri, &pb);
    assert_ptr_equal(pb.path, ri->path);
    n = kscore__v1__request_info__get_packed_size(&pb);
    assert_true(n <= sizeof(buf));
    assert_int_equal(kscore__v1__request_info__pack(&pb, buf), n);
    back = kscore__v1__request_info__unpack(NULL, n, buf);
    assert_non_null(back);
    assert_true(back->is_resource_request);
    assert_false(back->is_kube_request);
    assert_string_equal(back->path, "/kapis/iam.kubesphere.io/v1beta1/workspaces/ws1/namespaces/"
                                    "ns1/members/u1/roles");
    assert_string_equal(back->verb, "update");
    assert_string_equal(back->api_prefix, "kapis");
    assert_string_equal(back->api_group, "iam.kubesphere.io");
    assert_string_equal(back->api_version, "v1beta1");
    assert_string_equal(back->namespace_, "ns1");
    assert_string_equal(back->resource, "members");
    assert_string_equal(back->name, "u1");
    assert_string_equal(back->subresource, "roles");
    assert_string_equal(back->workspace, "ws1");
    assert_string_equal(back->cluster, "host");
    assert_string_equal(back->devops, "");
    assert_string_equal(back->resource_scope, "Namespace");
    assert_int_equal(back->n_parts, 3);
    assert_string_equal(back->parts[0], "members");
    assert_string_equal(back->parts[2], "roles");
    kscore__v1__request_info__free_unpacked(back, NULL);

    /* a non-resource request: no parts, empty strings */
    assert_int_equal(ks_requestinfo_parse("GET", "/healthz", NULL, ri, err, sizeof(err)), KS_OK);
    ks_requestinfo_to_proto(ri, &pb);
    assert_int_equal(pb.n_parts, 0);
    assert_null(pb.parts);
    assert_string_equal(pb.resource_scope, "");
    n = kscore__v1__request_info__get_packed_size(&pb);
    assert_int_equal(kscore__v1__request_info__pack(&pb, buf), n);
    back = kscore__v1__request_info__unpack(NULL, n, buf);
    assert_non_null(back);
    assert_string_equal(back->path, "/healthz");
    assert_string_equal(back->verb, "get");
    kscore__v1__request_info__free_unpacked(back, NULL);
    free(ri);
}

/* Table sizes the issue asks for. */
static void test_table_sizes(void **state)
{
    assert_true(sizeof(ok_cases) / sizeof(ok_cases[0]) >= 80);
    assert_true(sizeof(bad_cases) / sizeof(bad_cases[0]) >= 25);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepted),
        cmocka_unit_test(test_rejected),
        cmocka_unit_test(test_caps),
        cmocka_unit_test(test_lengths_and_nul),
        cmocka_unit_test(test_arguments_and_err),
        cmocka_unit_test(test_raw_path),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_to_proto),
        cmocka_unit_test(test_table_sizes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
