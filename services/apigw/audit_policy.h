/* audit_policy.h: which level of detail the gateway records per request.
 *
 * The policy is a JSON file (KS_AUDIT_POLICY_FILE), shaped like Kubernetes'
 * audit.k8s.io/v1 Policy, in JSON:
 *   {
 *     "level": "Metadata",                 default for requests no rule matches
 *     "rules": [                           the first rule that matches wins
 *       {"level": "None" | "Metadata" | "Request" | "RequestResponse",
 *        "users": ["alice", ...],          user names (any if absent or empty)
 *        "userGroups": ["devs", ...],      any of the user's groups
 *        "verbs": ["get", "list", ...],    request verbs (lower-case)
 *        "resources": ["users", "secrets", "users/password",
 *                      {"group": "iam.kubesphere.io", "resources": ["users"]}],
 *                                          a string is "resource" or
 *                                          "resource/subresource", any group;
 *                                          "*" (any resource) and "resource/ *"
 *                                          (any subresource, written without
 *                                          the space) are wildcards;
 *                                          an object limits the API group too
 *                                          ("" is the core group)
 *        "namespaces": ["kube-system", ...], "" matches cluster-scoped ones
 *        "nonResourceURLs": ["/healthz", "/oauth/ *"] (no space): a
 *                                          trailing "*" makes a prefix; only non-resource requests
 *       }, ...]
 *   }
 * A rule with "resources" or "namespaces" matches resource requests only; one
 * with "nonResourceURLs" matches non-resource requests only (a rule with both
 * is an error). Unknown keys and unknown levels are errors, so a typo cannot
 * silently widen or narrow what is recorded. Without a file every request is
 * recorded at Metadata. Matching is Kubernetes' (audit/policy/checker.go):
 *   - an empty list is the same as none;
 *   - resources: "pods" is the resource without a subresource, "pods/log"
 *     that subresource, "pods/ *" the resource with or without any
 *     subresource, "*" every resource and subresource, "* /log" that
 *     subresource of any resource (all without the space); any other use of
 *     "*" is an error;
 *   - in the object form "group" defaults to "" (the core group, as in
 *     Kubernetes) and a missing or empty "resources" means all of the group;
 *   - nonResourceURLs start with "/" (or are "*"); "*" may only end them;
 *   - verbs must be lower-case; users, userGroups, verbs, resources and
 *     nonResourceURLs entries must not be empty.
 * A top-level "apiVersion" ("audit.k8s.io/v1") and "kind" ("Policy") are
 * accepted, so a Kubernetes policy converted to JSON loads as it is. */
#ifndef GW_AUDIT_POLICY_H
#define GW_AUDIT_POLICY_H

#include <stddef.h>

#include "status.h"

typedef enum {
    GW_AUDIT_NONE = 0,
    GW_AUDIT_METADATA,
    GW_AUDIT_REQUEST,
    GW_AUDIT_REQUEST_RESPONSE,
} gw_audit_level;

typedef struct gw_audit_policy gw_audit_policy;

/* What a rule is matched against. Strings may be NULL (treated as ""). */
typedef struct {
    const char *user;
    const char *const *groups;
    size_t ngroups;
    const char *verb;
    int is_resource_request;
    const char *api_group;
    const char *resource;
    const char *subresource;
    const char *namespace_;
    const char *path;           /* the request path, for nonResourceURLs */
} gw_audit_attrs;

/* Parse a policy from JSON text (len bytes); *out is set only on success.
 * On error KS_ERR_INVALID (KS_ERR_NOMEM when out of memory), and
 * ks_status_last() says where ("rules[2].level: unknown level \"Full\"",
 * "rules[1]: unknown key \"verb\"", "line 3 column 5: ..." for bad JSON). */
ks_status gw_audit_policy_parse(const char *json, size_t len, gw_audit_policy **out)
    __attribute__((warn_unused_result));
/* Read and parse a file (KS_ERR_IO when it cannot be read, KS_ERR_TOO_LARGE
 * above 1 MiB; the path is in every message, parse errors included). path
 * NULL or "": the default policy (everything at Metadata). */
ks_status gw_audit_policy_load(const char *path, gw_audit_policy **out)
    __attribute__((warn_unused_result));
void gw_audit_policy_free(gw_audit_policy *p);   /* NULL is a no-op */

/* The level for a request: the first matching rule's, else the policy's
 * "level". Thread-safe (the policy is read-only), allocation-free. p NULL:
 * Metadata. */
gw_audit_level gw_audit_policy_level(const gw_audit_policy *p, const gw_audit_attrs *a);

/* "None", "Metadata", "Request", "RequestResponse" */
const char *gw_audit_level_name(gw_audit_level l);

#endif
