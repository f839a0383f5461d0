/* authz.c: ks.iam.authz (queue group "iam"): AuthzRequest {user, info} ->
 * AuthzResponse {decision, reason, cache_ttl_ms}. docs/iam-rbac.md has the
 * contract the gateway relies on.
 *
 * The hot path allocates nothing but the request's unpacking: the user's
 * groups are passed to the store as they came, and the answer is packed
 * into a buffer on the stack. */
#include <stdio.h>
#include <string.h>

#include "authz.h"
#include "codec.h"
#include "kscore/v1/iam.pb-c.h"
#include "log.h"
#include "metrics.h"

#define AUTHZ_SUBJECT "ks.iam.authz"
#define AUTHZ_QUEUE "iam"
#define AUTHZ_ENDPOINTS 2                  /* delivery threads */
#define AUTHZ_MAX_REQUEST (64u * 1024u)    /* an AuthzRequest is a few hundred bytes */
#define AUTHZ_TTL_ALLOW_MS 5000            /* how long the gateway may cache an allow */
#define AUTHZ_TTL_DENY_MS 1000             /* ... and a deny: a new binding shows soon */
#define AUTHZ_SYNC_WAIT_MS 1000            /* wait for the mirror's initial values */

static ks_metric *m_allow, *m_deny, *m_error;

static const char *nz(const char *s)
{
    return s != NULL ? s : "";
}

static int anonymous(const ks_rbac_user *u)
{
    return u->name == NULL || u->name[0] == '\0' || strcmp(u->name, "system:anonymous") == 0;
}

static int one_of(const char *s, const char *const *set)
{
    for (; *set != NULL; set++)
        if (strcmp(s, *set) == 0)
            return 1;
    return 0;
}

/* KubeSphere's Rego override on the GlobalRole `authenticated`: a user may
 * act on their own User. Narrowed here to reading and editing it (no
 * delete), its password and its login records. */
static int self_user_rule(const ks_rbac_user *u, const ks_rbac_request *r)
{
    static const char *const edit[] = {"get", "update", "patch", NULL};
    static const char *const pw[] = {"update", "patch", "create", NULL};
    static const char *const read[] = {"get", "list", NULL};
    const char *sub = nz(r->subresource), *verb = nz(r->verb);

    if (!r->is_resource_request || anonymous(u) ||
        strcmp(nz(r->api_group), IAM_GROUP) != 0 || strcmp(nz(r->resource), "users") != 0 ||
        strcmp(nz(r->name), u->name) != 0)
        return 0;
    if (sub[0] == '\0')
        return one_of(verb, edit);
    if (strcmp(sub, "password") == 0)
        return one_of(verb, pw);
    if (strcmp(sub, "loginrecords") == 0)
        return one_of(verb, read);
    return 0;
}

/* The other override: any signed-in user may list workspaces; the tenant
 * API answers with the workspaces the user belongs to. */
static int list_workspaces_rule(const ks_rbac_user *u, const ks_rbac_request *r)
{
    const char *res = nz(r->resource);

    return r->is_resource_request && !anonymous(u) && strcmp(nz(r->verb), "list") == 0 &&
           strcmp(nz(r->api_group), "tenant.kubesphere.io") == 0 &&
           (strcmp(res, "workspaces") == 0 || strcmp(res, "workspacetemplates") == 0) &&
           nz(r->name)[0] == '\0' && nz(r->subresource)[0] == '\0';
}

ks_status iam_authz_decide(iam *s, const ks_rbac_user *user, const ks_rbac_request *req,
                           ks_rbac_decision *out)
{
    ks_status st = ks_rbac_decide(s->rbac, user, req, out);

    if (st || out->allowed)
        return st;
    if (self_user_rule(user, req)) {
        out->allowed = true;
        out->phase = KS_RBAC_PHASE_GLOBAL;
        snprintf(out->reason, sizeof(out->reason),
                 "RBAC: allowed by kscore's built-in rule: a user may read and edit their own "
                 "User");
    } else if (list_workspaces_rule(user, req)) {
        out->allowed = true;
        out->phase = KS_RBAC_PHASE_GLOBAL;
        snprintf(out->reason, sizeof(out->reason),
                 "RBAC: allowed by kscore's built-in rule: a user may list their workspaces");
    }
    return KS_OK;
}

/* The scope of a resource request: RequestInfo.resource_scope, or when the
 * gateway left it empty, what the namespace and workspace imply. */
static ks_status scope_of(const Kscore__V1__RequestInfo *info, ks_rbac_scope *out)
{
    const char *sc = nz(info->resource_scope);

    if (sc[0] != '\0')
        return ks_rbac_scope_parse(sc, out);
    if (nz(info->namespace_)[0] != '\0')
        *out = KS_RBAC_SCOPE_NAMESPACE;
    else if (nz(info->workspace)[0] != '\0')
        *out = KS_RBAC_SCOPE_WORKSPACE;
    else
        *out = KS_RBAC_SCOPE_CLUSTER;
    return KS_OK;
}

static int respond(ks_bus *bus, ks_bus_msg *msg, Kscore__V1__AuthzResponse__Decision decision,
                   const char *reason, int64_t ttl_ms, char *err, size_t errcap)
{
    Kscore__V1__AuthzResponse out = KSCORE__V1__AUTHZ_RESPONSE__INIT;
    uint8_t buf[2048];
    size_t need, got;

    out.decision = decision;
    out.reason = (char *)reason;
    out.cache_ttl_ms = ttl_ms;
    need = protobuf_c_message_get_packed_size(&out.base);
    if (need > sizeof(buf)) {
        snprintf(err, errcap, "authz answer of %zu bytes", need);
        return 1;
    }
    got = protobuf_c_message_pack(&out.base, buf);
    if (got != need) {
        snprintf(err, errcap, "authz answer packed %zu of %zu bytes", got, need);
        return 1;
    }
    if (ks_bus_msg_reply(msg) == NULL)
        return 0;
    if (ks_bus_respond(bus, msg, buf, got) != KS_OK) {
        snprintf(err, errcap, "cannot answer: %s", ks_status_last());
        return 1;
    }
    return 0;
}

static int on_authz(ks_bus *bus, ks_bus_msg *msg, void *arg, char *err, size_t errcap)
{
    iam *s = arg;
    Kscore__V1__AuthzRequest *req = NULL;
    const Kscore__V1__RequestInfo *info;
    ks_rbac_user user = {0};
    ks_rbac_request r = {0};
    ks_rbac_decision d;
    char why[KS_RBAC_REASON_MAX];
    int rc;
    ks_status st;

    st = ks_codec_unpack(&kscore__v1__authz_request__descriptor, ks_bus_msg_data(msg),
                         ks_bus_msg_len(msg), AUTHZ_MAX_REQUEST, (ProtobufCMessage **)&req);
    if (st) {
        ks_metric_inc(m_error);
        return respond(bus, msg, KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_DENY,
                       st == KS_ERR_TOO_LARGE ? "iam: the AuthzRequest is too large"
                                              : "iam: not a valid AuthzRequest",
                       0, err, errcap);
    }
    info = req->info;
    if (info == NULL) {
        snprintf(why, sizeof(why), "iam: the AuthzRequest has no RequestInfo");
        goto deny;
    }
    if (!ks_mirror_cache_synced(s->mirror) &&
        ks_mirror_cache_wait_synced(s->mirror, AUTHZ_SYNC_WAIT_MS) != KS_OK) {
        snprintf(why, sizeof(why), "iam is not ready: the policy is still loading");
        goto deny;
    }
    if (req->user != NULL) {
        user.name = req->user->username;
        user.groups = (const char *const *)req->user->groups;
        user.ngroups = req->user->n_groups;
    }
    if (user.ngroups > KS_RBAC_MAX_GROUPS) {
        snprintf(why, sizeof(why), "iam: the user has %zu groups, more than %d", user.ngroups,
                 KS_RBAC_MAX_GROUPS);
        goto deny;
    }
    r.is_resource_request = info->is_resource_request;
    r.verb = info->verb;
    r.api_group = info->api_group;
    r.resource = info->resource;
    r.subresource = info->subresource;
    r.name = info->name;
    r.namespace = info->namespace_;
    r.workspace = info->workspace;
    r.cluster = info->cluster;
    r.path = info->path;
    if (r.is_resource_request && scope_of(info, &r.scope) != KS_OK) {
        snprintf(why, sizeof(why), "iam: unknown resource scope \"%.64s\"",
                 nz(info->resource_scope));
        goto deny;
    }
    if (iam_authz_decide(s, &user, &r, &d) != KS_OK) {
        snprintf(why, sizeof(why), "iam: cannot decide: %.400s", ks_status_last());
        goto deny;
    }
    ks_metric_inc(d.allowed ? m_allow : m_deny);
    rc = respond(bus, msg,
                 d.allowed ? KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_ALLOW
                           : KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_DENY,
                 d.reason, d.allowed ? AUTHZ_TTL_ALLOW_MS : AUTHZ_TTL_DENY_MS, err, errcap);
    ks_codec_free(&req->base);
    return rc;
deny:
    /* Not a decision on the policy: never cached. */
    ks_metric_inc(m_error);
    ks_debug("authz: deny without a decision: %s", why);
    rc = respond(bus, msg, KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_DENY, why, 0, err,
                 errcap);
    ks_codec_free(&req->base);
    return rc;
}

ks_status iam_authz_start(iam *s)
{
    ks_status st;

    m_allow = ks_metrics_counter("ks_iam_authz_decisions_total",
                                 "ks.iam.authz answers by outcome", "decision=\"allow\"");
    m_deny = ks_metrics_counter("ks_iam_authz_decisions_total", NULL, "decision=\"deny\"");
    m_error = ks_metrics_counter("ks_iam_authz_decisions_total", NULL, "decision=\"error\"");
    for (int i = 0; i < AUTHZ_ENDPOINTS; i++) {
        char name[32];
        snprintf(name, sizeof(name), "authz-%d", i);
        st = ks_micro_add_endpoint(ks_service_micro(s->svc), name, AUTHZ_SUBJECT, AUTHZ_QUEUE,
                                   on_authz, s);
        if (st)
            return st;
    }
    ks_info("authz: serving %s (queue %s)", AUTHZ_SUBJECT, AUTHZ_QUEUE);
    /* The REST side of roles and bindings (roles.c), before iam_api_start. */
    return iam_roles_start(s);
}
