/* authn.c: logins (iam_login) and ks.iam.authn (docs/iam.md "Authentication").
 *
 * A login never blocks the thread that asks: the user, its state and the
 * guard are checked at once from the mirror, and the password is verified
 * on the password pool, whose callback finishes the login. ks.iam.authn
 * answers a bearer token at once (HS256 check, revocation set, the user in
 * the mirror) and basic credentials from the pool callback, publishing the
 * AuthnResponse to the request's reply subject (copied: the micro handler's
 * message is gone by then). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "iam.h"
#include "kscore/v1/iam.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "micro.h"

#define AUTHN_SUBJECT "ks.iam.authn"
#define AUTHN_MAX_REQUEST (64u * 1024u)
#define LOGIN_FIELD_MAX 512

#define REASON_OK "authenticated successfully"
#define REASON_BAD_PASSWORD "incorrect password"

typedef struct {
    iam *s;
    iam_login_fn fn;
    void *arg;
    iam_identity who;
    char type[16];
    char ip[LOGIN_FIELD_MAX];
    char ua[LOGIN_FIELD_MAX];
} login_ctx;

static ks_metric *m_login(const char *result)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "result=\"%s\"", result);
    return ks_metrics_counter("ks_iam_logins_total", "password logins by result", labels);
}

static void identity_from_user(const json_t *user, iam_identity *who)
{
    const char *groups[16];
    const char *name =
        json_string_value(json_object_get(json_object_get(user, "metadata"), "name"));
    const char *uid = json_string_value(json_object_get(json_object_get(user, "metadata"), "uid"));
    size_t n = iam_user_groups(user, groups, 16);

    memset(who, 0, sizeof(*who));
    snprintf(who->username, sizeof(who->username), "%s", name ? name : "");
    snprintf(who->uid, sizeof(who->uid), "%s", uid ? uid : "");
    for (size_t i = 0; i < n; i++) {
        if (strlen(groups[i]) >= sizeof(who->groups[0])) {
            ks_warn("user %s: group name over %zu bytes left out of the identity", who->username,
                    sizeof(who->groups[0]) - 1);
            continue;
        }
        snprintf(who->groups[who->ngroups++], sizeof(who->groups[0]), "%s", groups[i]);
    }
}

static void login_done(ks_status result, const char *hash, void *arg)
{
    login_ctx *c = arg;

    (void)hash;
    switch (result) {
    case KS_OK:
        ks_metric_inc(m_login("ok"));
        iam_guard_record(c->s, c->who.username, c->type, 1, REASON_OK, c->ip, c->ua);
        c->fn(IAM_LOGIN_OK, &c->who, c->arg);
        break;
    case KS_ERR_DENIED:
        ks_metric_inc(m_login("bad_password"));
        ks_info("login of %s failed: %s", c->who.username, REASON_BAD_PASSWORD);
        iam_guard_record(c->s, c->who.username, c->type, 0, REASON_BAD_PASSWORD, c->ip, c->ua);
        c->fn(IAM_LOGIN_BAD_CREDENTIALS, NULL, c->arg);
        break;
    case KS_ERR_INVALID:
        ks_error("user %s: the stored password hash is not supported", c->who.username);
        ks_metric_inc(m_login("bad_hash"));
        c->fn(IAM_LOGIN_BAD_CREDENTIALS, NULL, c->arg);
        break;
    default:
        ks_metric_inc(m_login("error"));
        c->fn(IAM_LOGIN_ERROR, NULL, c->arg);
        break;
    }
    free(c);
}

void iam_login(iam *s, const char *name_or_email, const char *password, const char *type,
               const char *source_ip, const char *user_agent, iam_login_fn fn, void *arg)
{
    json_t *user = NULL;
    const char *hash;
    login_ctx *c = NULL;
    ks_status st;

    /* A replica that just started answers once its users are loaded. */
    if (!ks_mirror_cache_synced(s->mirror) &&
        ks_mirror_cache_wait_synced(s->mirror, (int)s->cfg->read_wait_ms) != KS_OK) {
        ks_metric_inc(m_login("error"));
        fn(IAM_LOGIN_ERROR, NULL, arg);
        return;
    }
    if (name_or_email == NULL || name_or_email[0] == '\0' || password == NULL ||
        password[0] == '\0' || iam_user_find(s, name_or_email, &user) != KS_OK) {
        ks_metric_inc(m_login("unknown_user"));
        fn(IAM_LOGIN_BAD_CREDENTIALS, NULL, arg);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        json_decref(user);
        fn(IAM_LOGIN_ERROR, NULL, arg);
        return;
    }
    c->s = s;
    c->fn = fn;
    c->arg = arg;
    identity_from_user(user, &c->who);
    snprintf(c->type, sizeof(c->type), "%s", type ? type : "Token");
    snprintf(c->ip, sizeof(c->ip), "%s", source_ip ? source_ip : "");
    snprintf(c->ua, sizeof(c->ua), "%s", user_agent ? user_agent : "");
    if (json_object_get(json_object_get(user, "metadata"), "deletionTimestamp") != NULL) {
        ks_metric_inc(m_login("unknown_user"));
        fn(IAM_LOGIN_BAD_CREDENTIALS, NULL, arg);
        goto out;
    }
    if (strcmp(iam_user_state(user), "Disabled") == 0) {
        ks_metric_inc(m_login("disabled"));
        ks_info("login of %s refused: the account is disabled", c->who.username);
        fn(IAM_LOGIN_DISABLED, NULL, arg);
        goto out;
    }
    if (iam_guard_blocked(s, c->who.username)) {
        ks_metric_inc(m_login("blocked"));
        ks_info("login of %s refused: too many failed attempts", c->who.username);
        fn(IAM_LOGIN_BLOCKED, NULL, arg);
        goto out;
    }
    hash = json_string_value(json_object_get(json_object_get(user, "spec"), "password"));
    if (hash == NULL || !ks_password_is_hash(hash)) {
        /* no password, or plain text the user controller has not hashed */
        ks_metric_inc(m_login("no_password"));
        ks_info("login of %s refused: the user has no usable password", c->who.username);
        fn(IAM_LOGIN_BAD_CREDENTIALS, NULL, arg);
        goto out;
    }
    st = ks_password_pool_submit(s->passwords, KS_PASSWORD_OP_VERIFY, password, hash, 0,
                                 login_done, c);
    if (st == KS_OK) {
        c = NULL; /* login_done owns it */
        goto out;
    }
    if (st == KS_ERR_UNAVAILABLE) {
        ks_metric_inc(m_login("busy"));
        fn(IAM_LOGIN_BUSY, NULL, arg);
    } else if (st == KS_ERR_INVALID) {
        ks_error("user %s: the stored password hash is not supported", c->who.username);
        ks_metric_inc(m_login("bad_hash"));
        fn(IAM_LOGIN_BAD_CREDENTIALS, NULL, arg);
    } else {
        ks_metric_inc(m_login("error"));
        fn(IAM_LOGIN_ERROR, NULL, arg);
    }
out:
    free(c);
    json_decref(user);
}

/* ---- ks.iam.authn ---- */

typedef struct {
    iam *s;
    char reply[256];
} authn_ctx;

/* Answer: who NULL means not authenticated with code/reason/message. */
static void authn_answer(iam *s, const char *reply, const iam_identity *who,
                         const char *const *extra_groups, size_t nextra, int code,
                         const char *reason, const char *message, int retry_after)
{
    Kscore__V1__AuthnResponse out = KSCORE__V1__AUTHN_RESPONSE__INIT;
    Kscore__V1__UserInfo user = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__Status err = KSCORE__V1__STATUS__INIT;
    char *groups[16 + KS_JWT_MAX_GROUPS];
    size_t ng = 0;
    uint8_t *buf = NULL;
    size_t len = 0;

    if (who != NULL) {
        out.authenticated = 1;
        user.username = (char *)who->username;
        user.uid = (char *)who->uid;
        for (size_t i = 0; i < who->ngroups; i++)
            groups[ng++] = (char *)who->groups[i];
        for (size_t i = 0; i < nextra; i++) {
            int dup = 0;
            for (size_t j = 0; j < ng && !dup; j++)
                dup = strcmp(groups[j], extra_groups[i]) == 0;
            if (!dup)
                groups[ng++] = (char *)extra_groups[i];
        }
        user.groups = groups;
        user.n_groups = ng;
        out.user = &user;
    } else {
        err.code = code;
        err.reason = (char *)reason;
        err.message = (char *)message;
        err.status = "Failure";
        out.error = &err;
        out.retry_after_s = retry_after;
    }
    if (ks_codec_pack(&out.base, &buf, &len) != KS_OK ||
        ks_bus_publish(s->bus, reply, buf, len) != KS_OK)
        ks_warn("ks.iam.authn: cannot answer: %s", ks_status_last());
    free(buf);
}

static void basic_done(iam_login_result result, const iam_identity *who, void *arg)
{
    authn_ctx *c = arg;
    iam *s = c->s;

    switch (result) {
    case IAM_LOGIN_OK:
        authn_answer(s, c->reply, who, NULL, 0, 200, "", "", 0);
        break;
    case IAM_LOGIN_DISABLED:
        authn_answer(s, c->reply, NULL, NULL, 0, 401, "Unauthorized", "Account suspended", 0);
        break;
    case IAM_LOGIN_BLOCKED:
        authn_answer(s, c->reply, NULL, NULL, 0, 429, "TooManyRequests",
                     "too many failed login attempts", (int)(s->cfg->login_window_ms / 1000));
        break;
    case IAM_LOGIN_BUSY:
        authn_answer(s, c->reply, NULL, NULL, 0, 429, "TooManyRequests",
                     "too many logins in progress",
                     (int)ks_password_pool_retry_after_s(s->passwords));
        break;
    case IAM_LOGIN_ERROR:
        authn_answer(s, c->reply, NULL, NULL, 0, 503, "ServiceUnavailable",
                     "the login could not be checked", 1);
        break;
    default:
        authn_answer(s, c->reply, NULL, NULL, 0, 401, "Unauthorized",
                     "invalid username or password", 0);
        break;
    }
    free(c);
}

/* A bearer token: signature, times, type, issuer, revocation, user. */
static void authn_token(iam *s, const char *reply, const char *token)
{
    ks_jwt_claims claims;
    ks_jwt_reason why = KS_JWT_OK;
    iam_identity who;
    json_t *user = NULL;
    const char *msg = NULL;

    memset(&claims, 0, sizeof(claims));
    /* Fail closed while this replica cannot know what was revoked. */
    if (!iam_revocations_loaded(s, (int)s->cfg->read_wait_ms) ||
        (!ks_mirror_cache_synced(s->mirror) &&
         ks_mirror_cache_wait_synced(s->mirror, (int)s->cfg->read_wait_ms) != KS_OK)) {
        authn_answer(s, reply, NULL, NULL, 0, 503, "ServiceUnavailable",
                     "iam is starting: revocations or users not loaded yet", 1);
        return;
    }
    if (ks_jwt_verify_key(s->jwt, token, strlen(token), iam_now_unix(), KS_JWT_DEFAULT_SKEW_S,
                          &claims, &why) != KS_OK) {
        ks_debug("ks.iam.authn: token refused: %s", ks_jwt_reason_name(why));
        msg = "invalid token";
    } else if (!ks_jwt_claims_is_access(&claims)) {
        msg = "not an access token";
    } else if (strcmp(claims.iss, s->cfg->issuer) != 0) {
        msg = "invalid token";
    } else if (iam_is_revoked(s, claims.jti, claims.username, claims.iat)) {
        msg = "token revoked";
    } else if (ks_mirror_cache_get(s->mirror, IAM_RES_USERS, "", claims.username, &user, NULL) !=
               KS_OK) {
        msg = "user not found";
    } else if (strcmp(iam_user_state(user), "Disabled") == 0) {
        msg = "Account suspended";
    }
    if (msg != NULL) {
        authn_answer(s, reply, NULL, NULL, 0, 401, "Unauthorized", msg, 0);
    } else {
        identity_from_user(user, &who);
        authn_answer(s, reply, &who, claims.groups, claims.ngroups, 200, "", "", 0);
    }
    json_decref(user);
    ks_jwt_claims_clear(&claims);
}

static int on_authn(ks_bus *bus, ks_bus_msg *msg, void *arg, char *err, size_t errcap)
{
    iam *s = arg;
    Kscore__V1__AuthnRequest *req = NULL;
    const char *reply = ks_bus_msg_reply(msg);
    authn_ctx *c;
    ks_status st;

    static ks_metric *_Atomic requests;
    ks_metric *m = atomic_load(&requests);

    if (m == NULL) {
        m = ks_metrics_counter("ks_iam_authn_requests_total",
                               "ks.iam.authn requests served by this replica", NULL);
        atomic_store(&requests, m);
    }
    ks_metric_inc(m);

    if (reply == NULL || strlen(reply) >= sizeof(c->reply)) {
        snprintf(err, errcap, "a request without a usable reply subject");
        return 1;
    }
    st = ks_codec_unpack(&kscore__v1__authn_request__descriptor, ks_bus_msg_data(msg),
                         ks_bus_msg_len(msg), AUTHN_MAX_REQUEST, (ProtobufCMessage **)&req);
    if (st) {
        authn_answer(s, reply, NULL, NULL, 0, 400, "BadRequest", "not a valid AuthnRequest", 0);
        return 0;
    }
    switch (req->credentials_case) {
    case KSCORE__V1__AUTHN_REQUEST__CREDENTIALS_TOKEN:
        authn_token(s, reply, req->token ? req->token : "");
        break;
    case KSCORE__V1__AUTHN_REQUEST__CREDENTIALS_BASIC:
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
            authn_answer(s, reply, NULL, NULL, 0, 503, "ServiceUnavailable", "out of memory", 1);
            break;
        }
        c->s = s;
        snprintf(c->reply, sizeof(c->reply), "%s", reply);
        iam_login(s, req->basic && req->basic->username ? req->basic->username : "",
                  req->basic && req->basic->password ? req->basic->password : "", "BasicAuth",
                  req->source_ip, req->user_agent, basic_done, c);
        break;
    default:
        authn_answer(s, reply, NULL, NULL, 0, 401, "Unauthorized", "no credentials", 0);
        break;
    }
    /* token and basic share a union (oneof): look at basic only when set */
    if (req->credentials_case == KSCORE__V1__AUTHN_REQUEST__CREDENTIALS_BASIC &&
        req->basic != NULL && req->basic->password != NULL)
        explicit_bzero(req->basic->password, strlen(req->basic->password));
    ks_codec_free(&req->base);
    return 0;
}

ks_status iam_authn_start(iam *s)
{
    ks_status st;

    /* The parts with no hook of their own in main.c start here (after the
     * revocations, before the API): the LoginRecord writer and the users
     * routes. */
    if ((st = iam_guard_start(s)) || (st = iam_users_start(s)))
        return st;
    return ks_micro_add_endpoint(ks_service_micro(s->svc), "authn", AUTHN_SUBJECT, "iam",
                                 on_authn, s);
}
