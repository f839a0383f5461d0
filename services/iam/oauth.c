/* oauth.c: the OAuth2 token endpoint ks.iam.token and POST /oauth/logout
 * (docs/iam.md "Tokens").
 *
 * The gateway turns POST /oauth/token (form-encoded) into a TokenRequest
 * and the TokenResponse back into RFC 6749 JSON with http_code as the HTTP
 * status (and Retry-After from retry_after_s). grant_type=password logs in
 * asynchronously (the answer is published from the password pool's
 * callback to the copied reply subject); grant_type=refresh_token is
 * answered at once and rotates the refresh token: its jti is revoked with a
 * KV create, so of two concurrent uses on any replicas exactly one wins. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec.h"
#include "iam.h"
#include "kscore/v1/iam.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "micro.h"

#define TOKEN_SUBJECT "ks.iam.token"
#define TOKEN_MAX_REQUEST (64u * 1024u)
#define EXTRA_JTI "kscore.io/token-jti"
#define EXTRA_EXP "kscore.io/token-exp"

typedef struct {
    const char *error;       /* NULL on success */
    const char *description;
    int http_code;
    int retry_after_s;
    char *access_token;
    char *refresh_token;
    int64_t expires_in;
} token_answer;

static ks_metric *m_tokens(const char *grant, const char *result)
{
    char labels[96];
    snprintf(labels, sizeof(labels), "grant=\"%s\",result=\"%s\"", grant, result);
    return ks_metrics_counter("ks_iam_token_requests_total", "ks.iam.token answers", labels);
}

static void token_send(iam *s, const char *reply, const token_answer *a)
{
    Kscore__V1__TokenResponse out = KSCORE__V1__TOKEN_RESPONSE__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;

    if (a->error == NULL) {
        out.access_token = a->access_token;
        out.refresh_token = a->refresh_token;
        out.token_type = "Bearer";
        out.expires_in = a->expires_in;
        out.http_code = 200;
    } else {
        out.error = (char *)a->error;
        out.error_description = (char *)(a->description ? a->description : "");
        out.http_code = a->http_code;
        out.retry_after_s = a->retry_after_s;
    }
    if (ks_codec_pack(&out.base, &buf, &len) != KS_OK ||
        ks_bus_publish(s->bus, reply, buf, len) != KS_OK)
        ks_warn("ks.iam.token: cannot answer: %s", ks_status_last());
    free(buf);
}

static void token_error(iam *s, const char *reply, const char *error, const char *desc,
                        int code, int retry)
{
    token_answer a = {.error = error, .description = desc, .http_code = code,
                      .retry_after_s = retry};
    token_send(s, reply, &a);
}

/* Sign an access and a refresh token for user (a User object). */
static ks_status issue(iam *s, const json_t *user, token_answer *a)
{
    const char *groups[KS_JWT_MAX_GROUPS];
    const char *name =
        json_string_value(json_object_get(json_object_get(user, "metadata"), "name"));
    char ajti[KS_JWT_JTI_SIZE], rjti[KS_JWT_JTI_SIZE];
    ks_jwt_claims c;
    int64_t iat = iam_now_unix(), floor_;
    ks_status st;

    if (name == NULL)
        return KS_FAIL(KS_ERR_INVALID, "a user without a name");
    /* Never issue a token that an earlier revocation of the user covers. */
    floor_ = iam_revocation_floor(s, name);
    if (floor_ > iat)
        iat = floor_;
    if ((st = ks_jwt_new_jti(ajti)) || (st = ks_jwt_new_jti(rjti)))
        return st;
    memset(&c, 0, sizeof(c));
    c.iss = s->cfg->issuer;
    c.sub = name;
    c.username = name;
    c.groups = groups;
    c.ngroups = iam_user_groups(user, groups, KS_JWT_MAX_GROUPS);
    c.iat = iat;
    c.token_type = KS_JWT_ACCESS_TOKEN;
    c.jti = ajti;
    c.exp = iat + s->cfg->access_ttl_ms / 1000;
    st = ks_jwt_sign_key(s->jwt, &c, &a->access_token);
    if (st)
        return st;
    c.token_type = KS_JWT_REFRESH_TOKEN;
    c.jti = rjti;
    c.exp = iat + s->cfg->refresh_ttl_ms / 1000;
    st = ks_jwt_sign_key(s->jwt, &c, &a->refresh_token);
    if (st) {
        free(a->access_token);
        a->access_token = NULL;
        return st;
    }
    a->expires_in = s->cfg->access_ttl_ms / 1000;
    return KS_OK;
}

static void send_tokens(iam *s, const char *reply, const json_t *user, const char *grant)
{
    token_answer a = {0};

    if (issue(s, user, &a) != KS_OK) {
        ks_error("cannot issue tokens: %s", ks_status_last());
        ks_metric_inc(m_tokens(grant, "error"));
        token_error(s, reply, "server_error", "cannot issue tokens", 500, 0);
        return;
    }
    ks_metric_inc(m_tokens(grant, "ok"));
    token_send(s, reply, &a);
    free(a.access_token);
    free(a.refresh_token);
}

/* ---- grant_type=password ---- */

typedef struct {
    iam *s;
    char reply[256];
} token_ctx;

static void password_done(iam_login_result result, const iam_identity *who, void *arg)
{
    token_ctx *c = arg;
    iam *s = c->s;
    json_t *user = NULL;

    switch (result) {
    case IAM_LOGIN_OK:
        if (iam_user_find(s, who->username, &user) != KS_OK) {
            ks_metric_inc(m_tokens("password", "invalid_grant"));
            token_error(s, c->reply, "invalid_grant", "incorrect username or password", 400, 0);
            break;
        }
        send_tokens(s, c->reply, user, "password");
        json_decref(user);
        break;
    case IAM_LOGIN_DISABLED:
        ks_metric_inc(m_tokens("password", "suspended"));
        token_error(s, c->reply, "invalid_grant", "Account suspended", 400, 0);
        break;
    case IAM_LOGIN_BLOCKED:
        ks_metric_inc(m_tokens("password", "blocked"));
        token_error(s, c->reply, "invalid_grant", "too many failed login attempts", 429,
                    (int)(s->cfg->login_window_ms / 1000));
        break;
    case IAM_LOGIN_BUSY:
        ks_metric_inc(m_tokens("password", "busy"));
        token_error(s, c->reply, "temporarily_unavailable", "too many logins in progress", 429,
                    (int)ks_password_pool_retry_after_s(s->passwords));
        break;
    case IAM_LOGIN_ERROR:
        ks_metric_inc(m_tokens("password", "error"));
        token_error(s, c->reply, "temporarily_unavailable", "the login could not be checked",
                    503, 1);
        break;
    default:
        ks_metric_inc(m_tokens("password", "invalid_grant"));
        token_error(s, c->reply, "invalid_grant", "incorrect username or password", 400, 0);
        break;
    }
    free(c);
}

/* ---- grant_type=refresh_token ---- */

static void refresh(iam *s, const char *reply, const char *token)
{
    ks_jwt_claims claims;
    ks_jwt_reason why = KS_JWT_OK;
    json_t *user = NULL;
    const char *bad = NULL;
    ks_status st;

    memset(&claims, 0, sizeof(claims));
    if (!iam_revocations_loaded(s, (int)s->cfg->read_wait_ms) ||
        (!ks_mirror_cache_synced(s->mirror) &&
         ks_mirror_cache_wait_synced(s->mirror, (int)s->cfg->read_wait_ms) != KS_OK)) {
        ks_metric_inc(m_tokens("refresh_token", "error"));
        token_error(s, reply, "temporarily_unavailable",
                    "iam is starting: revocations or users not loaded yet", 503, 1);
        return;
    }
    if (ks_jwt_verify_key(s->jwt, token, strlen(token), iam_now_unix(), KS_JWT_DEFAULT_SKEW_S,
                          &claims, &why) != KS_OK) {
        ks_debug("refresh token refused: %s", ks_jwt_reason_name(why));
        bad = "invalid refresh token";
    } else if (!ks_jwt_claims_is_refresh(&claims) || strcmp(claims.iss, s->cfg->issuer) != 0) {
        bad = "invalid refresh token";
    } else if (iam_is_revoked(s, claims.jti, claims.username, claims.iat)) {
        bad = "the refresh token was revoked";
    } else if (ks_mirror_cache_get(s->mirror, IAM_RES_USERS, "", claims.username, &user, NULL) !=
                   KS_OK ||
               json_object_get(json_object_get(user, "metadata"), "deletionTimestamp") != NULL) {
        bad = "the user does not exist";
    } else if (strcmp(iam_user_state(user), "Disabled") == 0) {
        bad = "Account suspended";
    }
    if (bad != NULL) {
        ks_metric_inc(m_tokens("refresh_token", "invalid_grant"));
        token_error(s, reply, "invalid_grant", bad, 400, 0);
        goto out;
    }
    st = iam_revoke_token_once(s, claims.jti, claims.exp);
    if (st == KS_ERR_CONFLICT) {
        ks_metric_inc(m_tokens("refresh_token", "reused"));
        ks_warn("a refresh token of %s was used twice", claims.username);
        token_error(s, reply, "invalid_grant", "the refresh token was already used", 400, 0);
        goto out;
    }
    if (st) {
        ks_metric_inc(m_tokens("refresh_token", "error"));
        ks_warn("refresh of %s: cannot rotate: %s", claims.username, ks_status_last());
        token_error(s, reply, "temporarily_unavailable", "cannot rotate the refresh token now",
                    503, 1);
        goto out;
    }
    send_tokens(s, reply, user, "refresh_token");
out:
    json_decref(user);
    ks_jwt_claims_clear(&claims);
}

static int on_token(ks_bus *bus, ks_bus_msg *msg, void *arg, char *err, size_t errcap)
{
    iam *s = arg;
    Kscore__V1__TokenRequest *req = NULL;
    const char *reply = ks_bus_msg_reply(msg);
    const char *grant;
    token_ctx *c;

    if (reply == NULL || strlen(reply) >= sizeof(c->reply)) {
        snprintf(err, errcap, "a request without a usable reply subject");
        return 1;
    }
    if (ks_codec_unpack(&kscore__v1__token_request__descriptor, ks_bus_msg_data(msg),
                        ks_bus_msg_len(msg), TOKEN_MAX_REQUEST,
                        (ProtobufCMessage **)&req) != KS_OK) {
        token_error(s, reply, "invalid_request", "not a valid TokenRequest", 400, 0);
        return 0;
    }
    grant = req->grant_type ? req->grant_type : "";
    if (strcmp(grant, "password") == 0) {
        if (req->username == NULL || req->username[0] == '\0' || req->password == NULL ||
            req->password[0] == '\0') {
            token_error(s, reply, "invalid_request", "username and password are required", 400,
                        0);
        } else if ((c = calloc(1, sizeof(*c))) == NULL) {
            token_error(s, reply, "server_error", "out of memory", 500, 0);
        } else {
            c->s = s;
            snprintf(c->reply, sizeof(c->reply), "%s", reply);
            iam_login(s, req->username, req->password, "Token", req->source_ip,
                      req->user_agent, password_done, c);
        }
    } else if (strcmp(grant, "refresh_token") == 0) {
        if (req->refresh_token == NULL || req->refresh_token[0] == '\0')
            token_error(s, reply, "invalid_request", "refresh_token is required", 400, 0);
        else
            refresh(s, reply, req->refresh_token);
    } else if (grant[0] == '\0') {
        token_error(s, reply, "invalid_request", "grant_type is required", 400, 0);
    } else {
        token_error(s, reply, "unsupported_grant_type",
                    "grant_type must be password or refresh_token", 400, 0);
    }
    if (req->password != NULL)
        explicit_bzero(req->password, strlen(req->password));
    ks_codec_free(&req->base);
    return 0;
}

/* ---- POST /oauth/logout ---- */

/* Value of key in a form body (a=b&c=d), decoded into out. */
static int form_value(const uint8_t *body, size_t len, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key), i = 0;

    while (i < len) {
        size_t end = i;
        const uint8_t *eq;
        while (end < len && body[end] != '&')
            end++;
        eq = memchr(body + i, '=', end - i);
        if (eq != NULL && (size_t)(eq - (body + i)) == klen && memcmp(body + i, key, klen) == 0)
            return ks_api_unescape((const char *)eq + 1, (size_t)(body + end - eq - 1), 1, out,
                                   cap) == KS_OK;
        i = end + 1;
    }
    return 0;
}

/* Verify a token given in the body and revoke its jti. 0 with resp filled. */
static int logout_token(iam *s, const char *token, int *revoked, ks_api_response *resp)
{
    ks_jwt_claims claims;
    ks_jwt_reason why = KS_JWT_OK;
    ks_status st;
    int ok = 1;

    memset(&claims, 0, sizeof(claims));
    st = ks_jwt_verify_key(s->jwt, token, strlen(token), iam_now_unix(), KS_JWT_DEFAULT_SKEW_S,
                           &claims, &why);
    if (st == KS_ERR_DENIED && why == KS_JWT_ERR_EXPIRED)
        return 1; /* nothing left to revoke */
    if (st) {
        ks_api_status(resp, 400, "BadRequest", "invalid token");
        return 0;
    }
    if (iam_revoke_token(s, claims.jti, claims.exp) != KS_OK) {
        ks_api_status(resp, 503, "ServiceUnavailable",
                      "the token is revoked on this replica but could not be stored yet; retry");
        ok = 0;
    } else {
        (*revoked)++;
    }
    ks_jwt_claims_clear(&claims);
    return ok;
}

static const char *user_extra(const ks_api_call *call, const char *key)
{
    const Kscore__V1__UserInfo *u = call->req->user;

    for (size_t i = 0; u != NULL && i < u->n_extra; i++)
        if (u->extra[i]->key && strcmp(u->extra[i]->key, key) == 0)
            return u->extra[i]->value;
    return NULL;
}

static void h_logout(ks_api_call *call, ks_api_response *resp, void *arg)
{
    iam *s = arg;
    const char *jti = user_extra(call, EXTRA_JTI), *exps = user_extra(call, EXTRA_EXP);
    const char *ct = ks_api_header(call, "Content-Type");
    const uint8_t *body = call->req->body.data;
    size_t len = call->req->body.len;
    char *tok = NULL;
    int revoked = 0;

    /* 1. the access token the gateway authenticated this request with */
    if (jti != NULL && jti[0] != '\0') {
        char *end = NULL;
        long long exp = exps ? strtoll(exps, &end, 10) : 0;
        if (exps == NULL || end == exps || *end != '\0' || exp <= 0)
            exp = iam_now_unix() + s->cfg->access_ttl_ms / 1000;
        ks_status st = iam_revoke_token(s, jti, exp);
        if (st == KS_ERR_INVALID) {
            ks_api_status(resp, 400, "BadRequest", "%s is not a token id", EXTRA_JTI);
            return;
        }
        if (st) {
            ks_api_status(resp, 503, "ServiceUnavailable",
                          "the token is revoked on this replica but could not be stored yet; "
                          "retry");
            return;
        }
        revoked++;
    }
    /* 2. tokens in the body: form (refresh_token=..&token=..) or JSON */
    if (len > 0) {
        static const char *const keys[] = {"refresh_token", "token", "access_token"};
        tok = malloc(KS_JWT_MAX_TOKEN + 1);
        if (tok == NULL) {
            ks_api_status(resp, 500, "InternalError", "out of memory");
            return;
        }
        if (ct != NULL && iam_media_type_is(ct, "application/json")) {
            json_error_t e;
            json_t *o = json_loadb((const char *)body, len, 0, &e);
            if (!json_is_object(o)) {
                json_decref(o);
                ks_api_status(resp, 400, "BadRequest", "malformed JSON");
                goto out;
            }
            for (size_t i = 0; i < 3; i++) {
                const char *t = json_string_value(json_object_get(o, keys[i]));
                if (t != NULL && t[0] != '\0' && !logout_token(s, t, &revoked, resp)) {
                    json_decref(o);
                    goto out;
                }
            }
            json_decref(o);
        } else if (ct == NULL ||
                   iam_media_type_is(ct, "application/x-www-form-urlencoded")) {
            for (size_t i = 0; i < 3; i++) {
                if (form_value(body, len, keys[i], tok, KS_JWT_MAX_TOKEN + 1) && tok[0] != '\0' &&
                    !logout_token(s, tok, &revoked, resp))
                    goto out;
            }
        } else {
            ks_api_status(resp, 415, "UnsupportedMediaType",
                          "the body must be application/x-www-form-urlencoded or "
                          "application/json, not %.100s",
                          ct);
            goto out;
        }
    }
    if (revoked == 0 && jti == NULL && len == 0) {
        ks_api_status(resp, 400, "BadRequest",
                      "no token to revoke: sign in with a bearer token or send refresh_token");
        goto out;
    }
    ks_info("logout of %s: %d tokens revoked", call->username[0] ? call->username : "anonymous",
            revoked);
    ks_api_status(resp, 200, "", "logged out");
out:
    free(tok);
}

static const ks_api_route oauth_routes[] = {
    {"POST", "/oauth/logout", h_logout},
    {"GET", "/oauth/logout", h_logout},
};

ks_status iam_oauth_start(iam *s)
{
    ks_status st = iam_api_add_routes(oauth_routes, sizeof(oauth_routes) / sizeof(oauth_routes[0]));

    if (st)
        return st;
    return ks_micro_add_endpoint(ks_service_micro(s->svc), "token", TOKEN_SUBJECT, "iam",
                                 on_token, s);
}
