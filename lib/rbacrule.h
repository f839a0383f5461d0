/* rbacrule.h: PolicyRules as JSON (rbac.authorization.k8s.io/v1 shape, as
 * the iam.kubesphere.io roles and RoleTemplates carry them): whether a rule
 * is well formed, and whether a set of rules covers a rule.
 *
 * "Covers" means: every request the rule allows, lib/rbac would also allow
 * through one of the owner rules (docs/rbac.md, "Matching a rule"). The rule
 * is broken down, as Kubernetes' validation.Covers does, into atoms (one
 * verb, one API group, one resource, one name or none; or one verb and one
 * non-resource URL) and each atom must be allowed by a single owner rule:
 *   - verbs and apiGroups: the owner holds "*" or the atom's value (an atom
 *     "*" only by "*"); verbs of non-resource atoms compare case-insensitively,
 *     as lib/rbac compares them;
 *   - resources: the owner holds "*", the atom's value, or "*\/sub" for an
 *     atom "res/sub" (an atom "*\/sub" only by "*" or "*\/sub");
 *   - resourceNames: an atom without a name (every name, and requests without
 *     one) only by an owner without names; an atom with a name by an owner
 *     without names or with that name;
 *   - nonResourceURLs: "*", the same string, or an owner ending in '*' whose
 *     text before the trailing stars is a prefix of the atom (of its text
 *     before the trailing stars when the atom is itself a pattern).
 * A union of owner rules never covers more than its members: each atom is a
 * single value or a wildcard, and no finite set of values covers a wildcard.
 * So the check is exact for lib/rbac's semantics, not an approximation.
 *
 * Pure functions over jansson values; thread-safe. */
#ifndef KS_RBACRULE_H
#define KS_RBACRULE_H

#include <jansson.h>
#include <stdbool.h>

#include "status.h"

/* KS_OK when rule is a PolicyRule lib/rbac accepts: an object whose verbs,
 * apiGroups, resources, resourceNames and nonResourceURLs are each absent,
 * null or an array of strings. KS_ERR_INVALID otherwise (raised, naming the
 * field). */
ks_status ks_rbacrule_check(const json_t *rule) __attribute__((warn_unused_result));

/* true when the rules of owner (a JSON array of PolicyRules; NULL, null or
 * not an array is no rules; malformed members are skipped, as they grant
 * nothing) allow everything rule allows. A rule that allows nothing (no
 * verbs, or resources without apiGroups and no URLs) is covered by anything.
 * A malformed rule is never covered. */
bool ks_rbacrule_covers(const json_t *owner, const json_t *rule);

#endif
