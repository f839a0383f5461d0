/* authz.h: the authorization decision of kscore-iam, shared by ks.iam.authz
 * (authz.c) and POST /subjectaccessreviews (roles.c). docs/iam-rbac.md. */
#ifndef IAM_AUTHZ_H
#define IAM_AUTHZ_H

#include "iam.h"

/* Decide as ks_rbac_decide does, then apply the two grants KubeSphere makes
 * with Rego and kscore makes in code (docs/crds.md): a signed-in user may
 * get, update and patch their own User (and its password and loginrecords
 * subresources), and may list workspaces (the tenant API filters the list).
 * Returns what ks_rbac_decide returns; *out is filled only on KS_OK. */
ks_status iam_authz_decide(iam *s, const ks_rbac_user *user, const ks_rbac_request *req,
                           ks_rbac_decision *out) __attribute__((warn_unused_result));

/* roles.c: add the routes of roles, bindings, members and
 * subjectaccessreviews (iam_api_add_routes). Called from iam_authz_start
 * until main.c starts it itself; a second call does nothing. */
ks_status iam_roles_start(iam *s);

#endif
