/* rbac.h: KubeSphere's authorizer as an in-memory policy store.
 *
 * The store holds the iam.kubesphere.io/v1beta1 roles and bindings
 * (GlobalRole(Binding), WorkspaceRole(Binding), ClusterRole(Binding),
 * Role(Binding)), the workspace label of every namespace and the groups of
 * every User (spec.groups). The iam service feeds it from the mirror's change
 * callbacks (ks_rbac_apply / ks_rbac_remove / ks_rbac_set_*) and asks it for
 * decisions (ks_rbac_decide). No I/O, no NATS, no kube: pure data.
 *
 * Decisions follow KubeSphere's pkg/apiserver/authorization/rbac: the
 * GlobalRoleBindings of the user and their groups first; at Global scope
 * nothing else. Then the WorkspaceRoleBindings of the request's workspace
 * (Workspace scope: the request's workspace; Namespace scope: the
 * namespace's kubesphere.io/workspace label); then, at Namespace scope, the
 * RoleBindings of the namespace; then the ClusterRoleBindings (every scope
 * but Global). The first rule that allows wins. Non-resource requests (a
 * path, no resource) are checked against GlobalRoleBindings then
 * ClusterRoleBindings, whatever their scope. Rules match as Kubernetes'
 * VerbMatches / APIGroupMatches / ResourceMatches / ResourceNameMatches /
 * NonResourceURLMatches, except that the verbs of a rule with
 * nonResourceURLs and the verb of a non-resource request compare
 * case-insensitively (docs/rbac.md says why).
 *
 * Bindings are indexed by subject (User name, Group name) and scope, so a
 * decision looks only at the bindings of the user and their groups. Roles
 * are compiled on apply (interned strings, id sets); a decision allocates
 * nothing and touches no JSON.
 *
 * Thread safety: every function may be called from any thread. Decisions
 * take a read lock and run concurrently with each other; changes take the
 * write lock (writer-preferring, so a steady stream of decisions does not
 * starve the mirror's updates). docs/rbac.md has the details and figures. */
#ifndef KS_RBAC_H
#define KS_RBAC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct ks_rbac ks_rbac;

/* RequestInfo.resource_scope. */
typedef enum {
    KS_RBAC_SCOPE_GLOBAL = 0,
    KS_RBAC_SCOPE_CLUSTER,
    KS_RBAC_SCOPE_WORKSPACE,
    KS_RBAC_SCOPE_NAMESPACE,
} ks_rbac_scope;

/* Which step of the order allowed a request (KS_RBAC_PHASE_NONE: denied). */
typedef enum {
    KS_RBAC_PHASE_NONE = 0,
    KS_RBAC_PHASE_GLOBAL,    /* a GlobalRoleBinding */
    KS_RBAC_PHASE_WORKSPACE, /* a WorkspaceRoleBinding */
    KS_RBAC_PHASE_NAMESPACE, /* a RoleBinding */
    KS_RBAC_PHASE_CLUSTER,   /* a ClusterRoleBinding */
} ks_rbac_phase;

/* Longest group list a decision accepts (token groups plus User.spec.groups
 * plus the implicit group). */
#define KS_RBAC_MAX_GROUPS 256

/* Size of ks_rbac_decision.reason, NUL included. A longer reason is cut and
 * ends in "...". */
#define KS_RBAC_REASON_MAX 512

/* Who asks. name NULL, "" or "system:anonymous" is the anonymous user: it
 * gets the implicit group "system:unauthenticated" and no User.spec.groups.
 * Anybody else gets "system:authenticated" and the groups last given to
 * ks_rbac_set_user_groups for that name, merged with groups[] (the token's
 * or the authenticator's groups). groups may be NULL when ngroups is 0. */
typedef struct {
    const char *name;
    const char *const *groups;
    size_t ngroups;
} ks_rbac_user;

/* What is asked: the fields of RequestInfo that authorization reads. Every
 * string may be NULL, which reads as "". For a resource request: verb,
 * api_group ("" is the core group), resource, subresource, name, and the
 * scope with namespace (Namespace) or workspace (Workspace). For a
 * non-resource request: verb and path; the scope is ignored. cluster is
 * accepted and ignored (one cluster, "host"; DESIGN.md). */
typedef struct {
    bool is_resource_request;
    const char *verb;
    const char *api_group;
    const char *resource;
    const char *subresource;
    const char *name;
    const char *namespace;
    const char *workspace;
    const char *cluster;
    const char *path;
    ks_rbac_scope scope;
} ks_rbac_request;

/* The answer. reason names the binding, role and subject that allowed
 * ("RBAC: allowed by RoleBinding \"ns/rb\" of Role \"viewer\" to User
 * \"alice\""), or for a deny what was asked, what was checked and which
 * bindings refer to a missing role. */
typedef struct {
    bool allowed;
    ks_rbac_phase phase;
    char reason[KS_RBAC_REASON_MAX];
} ks_rbac_decision;

/* Counters of what the store holds (for metrics and the benchmark). */
typedef struct {
    size_t roles;            /* compiled roles, all four kinds */
    size_t rules;            /* rules in those roles */
    size_t bindings;         /* bindings, all four kinds */
    size_t missing_roles;    /* distinct role references with no role */
    size_t index_keys;       /* (subject, scope) keys of the binding index */
    size_t strings;          /* interned strings */
    size_t namespaces;       /* namespaces with a workspace */
    size_t users_with_groups;/* users with User.spec.groups */
} ks_rbac_stats;

/* Create an empty store into *out. KS_ERR_NOMEM or KS_ERR_INTERNAL (lock
 * set-up) leave *out untouched. */
ks_status ks_rbac_create(ks_rbac **out) __attribute__((warn_unused_result));

/* Free the store and everything in it. NULL is a no-op. No call on the
 * store may run concurrently or follow. */
void ks_rbac_destroy(ks_rbac *store);

/* Insert or replace one role or binding from its JSON object (shaped as the
 * CRD: metadata.name, metadata.namespace for Role and RoleBinding,
 * metadata.labels["kubesphere.io/workspace"] for the workspace kinds; roles
 * with top-level `rules`, bindings with `subjects` and `roleRef`). kind is
 * one of "GlobalRole", "GlobalRoleBinding", "WorkspaceRole",
 * "WorkspaceRoleBinding", "ClusterRole", "ClusterRoleBinding", "Role",
 * "RoleBinding"; if obj has a "kind" it must be the same. The object is read,
 * never kept: the caller still owns it.
 *
 * Returns KS_OK and bumps the generation. KS_ERR_INVALID (unknown kind,
 * missing name or namespace, a field of the wrong JSON type, a string that is
 * empty where a value is required) and KS_ERR_NOMEM leave the store exactly
 * as it was, including a previous version of the object. A binding whose
 * roleRef names a role that is not there is stored and grants nothing until
 * the role arrives. A WorkspaceRoleBinding without the workspace label is
 * stored and grants nothing. Subjects of a kind other than User and Group
 * (ServiceAccount) are ignored. */
ks_status ks_rbac_apply(ks_rbac *store, const char *kind, const json_t *obj)
    __attribute__((warn_unused_result));

/* Delete one role or binding. namespace is read for Role and RoleBinding
 * only (may be NULL otherwise). KS_OK (generation bumped), KS_ERR_NOT_FOUND
 * when absent, KS_ERR_INVALID for an unknown kind or a missing name. */
ks_status ks_rbac_remove(ks_rbac *store, const char *kind, const char *namespace,
                         const char *name) __attribute__((warn_unused_result));

/* Record the kubesphere.io/workspace label of namespace ns; workspace NULL or
 * "" forgets it (the namespace left its workspace or was deleted). KS_OK
 * (generation bumped), KS_ERR_INVALID (ns NULL or ""), KS_ERR_NOMEM (store
 * unchanged). */
ks_status ks_rbac_set_namespace_workspace(ks_rbac *store, const char *ns, const char *workspace)
    __attribute__((warn_unused_result));

/* Record User.spec.groups of user; n 0 forgets them (the user was deleted or
 * has no groups). The strings are copied. At most KS_RBAC_MAX_GROUPS groups
 * (KS_ERR_TOO_LARGE); empty or NULL group names are KS_ERR_INVALID. KS_OK
 * bumps the generation; any error leaves the store unchanged. */
ks_status ks_rbac_set_user_groups(ks_rbac *store, const char *user, const char *const *groups,
                                  size_t n) __attribute__((warn_unused_result));

/* Decide whether user may do req. Fills *out and returns KS_OK, whatever the
 * decision. KS_ERR_INVALID (a NULL argument, a resource request's scope out
 * of range) and KS_ERR_TOO_LARGE (more than KS_RBAC_MAX_GROUPS groups in
 * user->groups) leave *out untouched. Allocates nothing. */
ks_status ks_rbac_decide(ks_rbac *store, const ks_rbac_user *user, const ks_rbac_request *req,
                         ks_rbac_decision *out) __attribute__((warn_unused_result));

/* The same decision by the naive method: scan every binding of the store
 * and keep those whose subjects name the user or one of their groups, as
 * KubeSphere does with its informer lists. O(bindings). For the benchmark's
 * baseline and for tests that cross-check the index; `allowed` and `phase`
 * always equal ks_rbac_decide's, the reason may name another binding when
 * several allow. */
ks_status ks_rbac_decide_scan(ks_rbac *store, const ks_rbac_user *user,
                              const ks_rbac_request *req, ks_rbac_decision *out)
    __attribute__((warn_unused_result));

/* A counter bumped by every successful change (apply, remove, set_*), so a
 * decision cache can tell whether it is stale. Starts at 0. */
uint64_t ks_rbac_generation(ks_rbac *store);

/* Fill *out with the store's counters. */
void ks_rbac_stats_get(ks_rbac *store, ks_rbac_stats *out);

/* "Global", "Cluster", "Workspace", "Namespace" (RequestInfo.resource_scope,
 * exactly) to a scope. KS_ERR_INVALID for anything else, *out untouched. */
ks_status ks_rbac_scope_parse(const char *s, ks_rbac_scope *out) __attribute__((warn_unused_result));

/* Stable names: "Global", ..., and "none", "global", "workspace",
 * "namespace", "cluster" for phases. Never NULL. */
const char *ks_rbac_scope_name(ks_rbac_scope s);
const char *ks_rbac_phase_name(ks_rbac_phase p);

#endif
