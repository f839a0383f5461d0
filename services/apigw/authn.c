/* authn.c: the gateway's authentication stage (gw.h; docs/gateway-auth.md).
 *
 *   Authorization: Bearer <jwt>  verified here, in process: HS256 with the
 *                                shared secret (lib/jwt: alg none and
 *                                algorithm confusion refused), exp/nbf/iat
 *                                with 10 s of skew, token_type access_token,
 *                                then the revocation set (revoked.c). While
 *                                that set is not loaded, iam confirms the
 *                                token (ks.iam.authn, asynchronously).
 *   Authorization: Basic <b64>   ks.iam.authn with the user name and
 *                                password, asynchronously: the request is
 *                                suspended and continues from the reply.
 *   nothing                      system:anonymous, group
 *                                system:unauthenticated.
 * A user who authenticates gets the group system:authenticated.
 *
 * A failure answers 401 with WWW-Authenticate and a message that says why
 * (expired, revoked, bad signature, ...) and never the token. On a public
 * path (gw_auth_path_is_public) a failure is not an answer: the request
 * goes on as anonymous, and Basic credentials are left alone for the
 * endpoint (they may be OAuth client credentials for /oauth/token).
 *
 * Tokens and passwords are never logged; buffers that held a password are
 * wiped before they are freed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "auth.h"
#include "codec.h"
#include "gw.h"
#include "jwt.h"
#include "kscore/v1/iam.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "mirror_cache.h"
#include "requestinfo.h"

#define AUTHN_SUBJECT "ks.iam.authn"
#define AUTHN_REALM "kscore"
#define AUTHN_BASIC_MAX 1024           /* decoded "user:password" bytes */
#define AUTHN_MAX_REPLY (64u * 1024u)
#define AUTHN_USERS "iam.kubesphere.io/users"

/* Why a request was refused: the JWT reasons, then ours. Each is a label
 * value of ks_gateway_authn_failures_total. */
enum {
    AF_REVOKED = KS_JWT_REASON_COUNT,
    AF_WRONG_TYPE,     /* a refresh token used as a bearer token */
    AF_BAD_SCHEME,     /* an Authorization header of another scheme */
    AF_BAD_BASIC,      /* Basic credentials that do not decode */
    AF_BAD_IDENTITY,   /* a user name we cannot carry (too long) */
    AF_USER_GONE,      /* the token's user is not in the (synced) mirror */
    AF_USER_DISABLED,  /* the token's user is Disabled */
    AF_REJECTED,       /* iam said no */
    AF_BLOCKED,        /* iam said 429 (brute-force guard, busy) */
    AF_UNAVAILABLE,    /* nobody answers ks.iam.authn */
    AF_TIMEOUT,        /* iam did not answer in time */
    AF_BAD_REPLY,      /* iam answered something unreadable */
    AF_COUNT
};

static const char *const af_names[AF_COUNT - KS_JWT_REASON_COUNT] = {
    "revoked",  "wrong_token_type", "unsupported_scheme", "bad_basic_credentials",
    "bad_identity", "user_not_found", "user_disabled", "rejected", "blocked", "iam_unavailable", "iam_timeout", "iam_bad_reply",
};

/* Metric handles live for the process, so a reply that arrives after stop
 * may still count. */
static ks_metric *m_fail[AF_COUNT];
static ks_metric *m_ok_bearer, *m_ok_basic, *m_ok_iam_token, *m_anonymous, *m_groups_cut;
static ks_metric *m_rtt;

typedef struct {
    ks_jwt_key *key;
    gw_revoked *revoked;
    ks_mirror_cache *mirror;
    ks_bus *bus;
    int timeout_ms;
} gw_authn;

/* A request waiting on ks.iam.authn. The reply callback reads only this
 * and the static metric handles, never the gw_authn (it may be stopped). */
typedef struct {
    gw_request *r;
    int basic;                 /* 1: Basic credentials; 0: a bearer token */
    int pub;                   /* public path: a refusal is not an answer */
    struct timespec t0;
} authn_wait;

static void authn_destroy(gw_authn *a)
{
    if (a == NULL)
        return;
    gw_revoked_destroy(a->revoked);
    ks_jwt_key_destroy(a->key);
    free(a);
}

static double since_s(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static const char *request_path(gw_request *r)
{
    const ks_requestinfo *ri = r->info;
    return ri != NULL ? ri->path : r->url;
}

/* ---- identities ---- */

static void set_anonymous(gw_request *r)
{
    snprintf(r->username, sizeof(r->username), "%s", GW_USER_ANONYMOUS);
    r->uid[0] = '\0';
    snprintf(r->groups[0], sizeof(r->groups[0]), "%s", GW_GROUP_UNAUTHENTICATED);
    r->ngroups = 1;
    r->authenticated = 0;
    r->jti[0] = '\0';
}

/* Fill r with an authenticated user. Groups that do not fit are dropped,
 * never cut (a cut name could be another group); dropping only ever takes
 * permissions away, RBAC having no deny rules. The system groups cannot be
 * claimed. Returns 0, or -1 when the user name does not fit. */
static int set_identity(gw_request *r, const char *username, const char *uid,
                        const char *const *groups, size_t ngroups)
{
    size_t n = 0, dropped = 0;

    if (username == NULL || username[0] == '\0' || strlen(username) >= sizeof(r->username))
        return -1;
    memcpy(r->username, username, strlen(username) + 1);
    if (uid != NULL && strlen(uid) < sizeof(r->uid))
        memcpy(r->uid, uid, strlen(uid) + 1);
    else
        r->uid[0] = '\0';
    for (size_t i = 0; i < ngroups; i++) {
        const char *g = groups[i];
        size_t len = g ? strlen(g) : 0;
        if (len == 0 || strcmp(g, GW_GROUP_AUTHENTICATED) == 0 ||
            strcmp(g, GW_GROUP_UNAUTHENTICATED) == 0)
            continue;
        if (len >= sizeof(r->groups[0]) || n == GW_MAX_GROUPS - 1) {
            dropped++;
            continue;
        }
        memcpy(r->groups[n++], g, len + 1);
    }
    memcpy(r->groups[n++], GW_GROUP_AUTHENTICATED, sizeof(GW_GROUP_AUTHENTICATED));
    r->ngroups = n;
    r->authenticated = 1;
    if (dropped > 0) {
        ks_metric_add(m_groups_cut, (double)dropped);
        ks_warn("authn: request %s: %zu groups of the user were not kept (at most %d, of "
                "fewer than %zu bytes)",
                r->request_id, dropped, GW_MAX_GROUPS - 1, sizeof(r->groups[0]));
    }
    return 0;
}

/* The token's user in the mirror, as iam checks it for ks.iam.authn: it
 * exists and is not Disabled (a disable or a delete also revokes the
 * user's tokens; this covers the moment before the revocation arrives).
 * Fills r->uid. Returns 0, AF_USER_GONE or AF_USER_DISABLED; 0 as well
 * while the mirror is still loading, when it cannot know. */
static int check_user(gw_authn *a, gw_request *r)
{
    json_t *u = NULL;
    const char *uid, *state;
    int rc = 0;

    if (a->mirror == NULL)
        return 0;
    if (ks_mirror_cache_get(a->mirror, AUTHN_USERS, NULL, r->username, &u, NULL) != KS_OK)
        return ks_mirror_cache_synced(a->mirror) ? AF_USER_GONE : 0;
    uid = json_string_value(json_object_get(json_object_get(u, "metadata"), "uid"));
    if (uid != NULL && strlen(uid) < sizeof(r->uid))
        memcpy(r->uid, uid, strlen(uid) + 1);
    state = json_string_value(json_object_get(json_object_get(u, "status"), "state"));
    if (state != NULL && strcmp(state, "Disabled") == 0)
        rc = AF_USER_DISABLED;
    json_decref(u);
    return rc;
}

/* ---- refusals ---- */

static const char *jwt_message(ks_jwt_reason why)
{
    switch (why) {
    case KS_JWT_ERR_EXPIRED:
        return "the token has expired";
    case KS_JWT_ERR_NOT_YET_VALID:
        return "the token is not valid yet";
    case KS_JWT_ERR_ISSUED_IN_FUTURE:
        return "the token was issued in the future";
    case KS_JWT_ERR_SIGNATURE:
        return "the token's signature is invalid";
    case KS_JWT_ERR_ALG_MISSING:
    case KS_JWT_ERR_ALG_NOT_STRING:
    case KS_JWT_ERR_ALG_NONE:
    case KS_JWT_ERR_ALG_UNSUPPORTED:
        return "the token's signing algorithm is not accepted (only HS256 is)";
    case KS_JWT_ERR_TOO_LARGE:
        return "the token is too large";
    case KS_JWT_ERR_CLAIM_MISSING:
    case KS_JWT_ERR_CLAIM_INVALID:
        return "the token's claims are invalid";
    default:
        return "the token is malformed";
    }
}

static const char *af_message(int reason)
{
    switch (reason) {
    case AF_REVOKED:
        return "the token has been revoked";
    case AF_WRONG_TYPE:
        return "only an access token authenticates a request, not a refresh token";
    case AF_BAD_SCHEME:
        return "the Authorization header must use the Bearer or the Basic scheme";
    case AF_BAD_BASIC:
        return "the Basic credentials are malformed";
    case AF_BAD_IDENTITY:
        return "the user name is too long";
    case AF_USER_GONE:
        return "the token's user does not exist";
    case AF_USER_DISABLED:
        return "the user is disabled";
    default:
        return "invalid credentials";
    }
}

static void count_failure(int reason)
{
    if (reason >= 0 && reason < AF_COUNT)
        ks_metric_inc(m_fail[reason]);
}

/* Answer 401 for reason; scheme_basic selects the challenge. */
static void refuse(gw_request *r, int reason, int scheme_basic, const char *message)
{
    char challenge[256], desc[128];
    size_t n = 0;

    count_failure(reason);
    if (message == NULL)
        message = reason < KS_JWT_REASON_COUNT ? jwt_message((ks_jwt_reason)reason)
                                               : af_message(reason);
    /* error_description is a quoted-string of printable ASCII without '"'
     * and '\\' (RFC 6750 §3): iam's message is copied with those replaced. */
    for (const char *p = message; *p != '\0' && n + 1 < sizeof(desc); p++)
        desc[n++] = *p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\' ? *p : '\'';
    desc[n] = '\0';
    if (scheme_basic)
        snprintf(challenge, sizeof(challenge), "Basic realm=\"%s\", charset=\"UTF-8\"",
                 AUTHN_REALM);
    else if (reason == AF_BAD_SCHEME)
        snprintf(challenge, sizeof(challenge), "Bearer realm=\"%s\"", AUTHN_REALM);
    else
        snprintf(challenge, sizeof(challenge),
                 "Bearer realm=\"%s\", error=\"invalid_token\", error_description=\"%s\"",
                 AUTHN_REALM, desc);
    ks_debug("authn: request %s refused: %s", r->request_id,
             reason < KS_JWT_REASON_COUNT ? ks_jwt_reason_name((ks_jwt_reason)reason)
                                          : af_names[reason - KS_JWT_REASON_COUNT]);
    gw_add_header(r, "WWW-Authenticate", challenge);
    gw_respond_status(r, 401, "Unauthorized", "Unauthorized: %s", message);
}

/* On a public path a refusal lets the request through as anonymous. */
static void refuse_or_pass(gw_request *r, int pub, int reason, int scheme_basic)
{
    if (pub) {
        count_failure(reason);
        set_anonymous(r);
        gw_next(r);
        return;
    }
    refuse(r, reason, scheme_basic, NULL);
}

/* ---- asking iam ---- */

static int abandoned(gw_request *r)
{
    int gone;

    pthread_mutex_lock(&r->mu);
    gone = r->abandoned;
    pthread_mutex_unlock(&r->mu);
    return gone;
}

static void on_iam_reply(ks_status st, ks_bus_msg *reply, void *arg)
{
    authn_wait *w = arg;
    gw_request *r = w->r;
    int basic = w->basic, pub = w->pub, code;
    Kscore__V1__AuthnResponse *resp = NULL;
    const Kscore__V1__Status *err;

    ks_metric_observe(m_rtt, since_s(&w->t0));
    free(w);
    if (abandoned(r)) {
        /* The client left; answering frees the request (server.c). */
        ks_bus_msg_destroy(reply);
        gw_respond_status(r, 499, "ClientClosedRequest", "the client closed the connection");
        return;
    }
    if (st == KS_ERR_TIMEOUT) {
        count_failure(AF_TIMEOUT);
        gw_respond_status(r, 504, "Timeout",
                          "the authentication service (iam) did not answer in time");
        return;
    }
    if (st != KS_OK) {
        count_failure(AF_UNAVAILABLE);
        gw_respond_status(r, 503, "ServiceUnavailable",
                          "the authentication service (iam) is not available");
        return;
    }
    st = ks_codec_unpack(&kscore__v1__authn_response__descriptor, ks_bus_msg_data(reply),
                         ks_bus_msg_len(reply), AUTHN_MAX_REPLY, (ProtobufCMessage **)&resp);
    ks_bus_msg_destroy(reply);
    if (st) {
        count_failure(AF_BAD_REPLY);
        ks_warn("authn: request %s: unreadable answer from %s: %s", r->request_id,
                AUTHN_SUBJECT, ks_status_last());
        gw_respond_status(r, 502, "InternalError",
                          "the authentication service (iam) answered something unreadable");
        return;
    }
    if (resp->authenticated && resp->user != NULL) {
        const Kscore__V1__UserInfo *u = resp->user;
        if (set_identity(r, u->username, u->uid, (const char *const *)u->groups,
                         u->n_groups) != 0) {
            ks_codec_free(&resp->base);
            refuse_or_pass(r, pub, AF_BAD_IDENTITY, basic);
            return;
        }
        ks_codec_free(&resp->base);
        ks_metric_inc(basic ? m_ok_basic : m_ok_iam_token);
        gw_next(r);
        return;
    }
    err = resp->error;
    code = err != NULL && err->code >= 400 && err->code <= 599 ? err->code : 401;
    if (pub && (code == 401 || code == 403)) {
        ks_codec_free(&resp->base);
        refuse_or_pass(r, pub, AF_REJECTED, basic);
        return;
    }
    if (code == 401) {
        refuse(r, AF_REJECTED, basic,
               err != NULL && err->message != NULL && err->message[0] != '\0'
                   ? err->message
                   : (basic ? "invalid user name or password" : "the token is not valid"));
    } else {
        count_failure(code == 429 ? AF_BLOCKED : AF_REJECTED);
        if (code == 429 || code == 503) {
            char ra[16];
            snprintf(ra, sizeof(ra), "%d", resp->retry_after_s > 0 ? resp->retry_after_s : 1);
            gw_add_header(r, "Retry-After", ra);
        }
        gw_respond_status(r, code,
                          err != NULL && err->reason != NULL && err->reason[0] != '\0'
                              ? err->reason
                              : "Unauthorized",
                          "%s",
                          err != NULL && err->message != NULL ? err->message
                                                              : "authentication failed");
    }
    ks_codec_free(&resp->base);
}

/* The NATS deadline of a request: the service's request timeout, or less
 * when the request's own deadline is nearer. */
static int nats_timeout(gw_request *r, int configured)
{
    int64_t left = gw_ms_left(r);
    return left > 0 && left < configured ? (int)left : configured;
}

/* Send req to ks.iam.authn; the request continues in on_iam_reply. */
static void ask_iam(gw_authn *a, gw_request *r, Kscore__V1__AuthnRequest *req, int basic,
                    int pub)
{
    const char *ua = gw_header(r, "User-Agent");
    uint8_t *buf = NULL;
    size_t len = 0;
    authn_wait *w;
    ks_status st;

    req->source_ip = r->source_ip;
    req->user_agent = (char *)(ua != NULL && strlen(ua) <= 512 ? ua : "");
    st = ks_codec_pack(&req->base, &buf, &len);
    if (st) {
        gw_respond_status(r, 500, "InternalError", "cannot build the authentication request");
        return;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        explicit_bzero(buf, len);
        free(buf);
        gw_respond_status(r, 500, "InternalError", "out of memory");
        return;
    }
    w->r = r;
    w->basic = basic;
    w->pub = pub;
    clock_gettime(CLOCK_MONOTONIC, &w->t0);
    st = ks_bus_request_async(a->bus, AUTHN_SUBJECT, buf, len, nats_timeout(r, a->timeout_ms),
                              on_iam_reply, w);
    explicit_bzero(buf, len); /* it may hold a password */
    free(buf);
    if (st != KS_OK) {
        free(w);
        count_failure(st == KS_ERR_TIMEOUT ? AF_TIMEOUT : AF_UNAVAILABLE);
        gw_respond_status(r, 503, "ServiceUnavailable",
                          "the authentication service (iam) is not available");
    }
}

/* ---- the schemes ---- */

static void authn_bearer(gw_authn *a, gw_request *r, const char *token, size_t len, int pub)
{
    ks_jwt_claims c = {0};
    ks_jwt_reason why = KS_JWT_OK;
    ks_status st;
    int bad;

    st = ks_jwt_verify_key(a->key, token, len, (int64_t)time(NULL), KS_JWT_DEFAULT_SKEW_S, &c,
                           &why);
    if (st == KS_ERR_DENIED || st == KS_ERR_INVALID) {
        refuse_or_pass(r, pub, why != KS_JWT_OK ? (int)why : (int)KS_JWT_ERR_MALFORMED, 0);
        return;
    }
    if (st != KS_OK) {
        count_failure(KS_JWT_ERR_INTERNAL);
        gw_respond_status(r, 500, "InternalError", "the token could not be checked");
        return;
    }
    if (!ks_jwt_claims_is_access(&c)) {
        ks_jwt_claims_clear(&c);
        refuse_or_pass(r, pub, AF_WRONG_TYPE, 0);
        return;
    }
    if (gw_revoked_check(a->revoked, c.jti, c.username, c.iat)) {
        ks_jwt_claims_clear(&c);
        refuse_or_pass(r, pub, AF_REVOKED, 0);
        return;
    }
    if (set_identity(r, c.username, NULL, c.groups, c.ngroups) != 0) {
        ks_jwt_claims_clear(&c);
        refuse_or_pass(r, pub, AF_BAD_IDENTITY, 0);
        return;
    }
    snprintf(r->jti, sizeof(r->jti), "%s", strlen(c.jti) < sizeof(r->jti) ? c.jti : "");
    ks_jwt_claims_clear(&c);
    if ((bad = check_user(a, r)) != 0) {
        refuse_or_pass(r, pub, bad, 0);
        return;
    }
    if (!pub && !gw_revoked_ready(a->revoked)) {
        /* The revocation set is still loading (or overflowed): iam, which
         * has it, confirms the token. */
        Kscore__V1__AuthnRequest req = KSCORE__V1__AUTHN_REQUEST__INIT;
        char copy[KS_JWT_MAX_TOKEN + 1];
        memcpy(copy, token, len); /* verified: len <= KS_JWT_MAX_TOKEN */
        copy[len] = '\0';
        req.credentials_case = KSCORE__V1__AUTHN_REQUEST__CREDENTIALS_TOKEN;
        req.token = copy;
        ask_iam(a, r, &req, 0, pub);
        return;
    }
    ks_metric_inc(m_ok_bearer);
    gw_next(r);
}

/* Strict standard base64 (RFC 4648 §4), padding optional. Returns the
 * decoded length, or -1. */
static long b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    unsigned acc = 0;
    int bits = 0;
    size_t o = 0;

    while (n > 0 && in[n - 1] == '=')
        n--;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)in[i];
        int v = ch >= 'A' && ch <= 'Z'   ? ch - 'A'
                : ch >= 'a' && ch <= 'z' ? ch - 'a' + 26
                : ch >= '0' && ch <= '9' ? ch - '0' + 52
                : ch == '+'              ? 62
                : ch == '/'              ? 63
                                         : -1;
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (bits >= 6)
        return -1; /* a lone sextet cannot end a valid encoding */
    return (long)o;
}

static void authn_basic(gw_authn *a, gw_request *r, const char *cred, size_t len, int pub)
{
    unsigned char buf[AUTHN_BASIC_MAX + 1];
    Kscore__V1__AuthnRequest req = KSCORE__V1__AUTHN_REQUEST__INIT;
    Kscore__V1__BasicCredentials basic = KSCORE__V1__BASIC_CREDENTIALS__INIT;
    long n;
    char *colon;

    if (pub) {
        /* Left for the endpoint (OAuth client credentials); no bcrypt
         * round at iam, no failed-login record. */
        set_anonymous(r);
        gw_next(r);
        return;
    }
    n = len <= (AUTHN_BASIC_MAX / 3 + 1) * 4 ? b64_decode(cred, len, buf, AUTHN_BASIC_MAX) : -1;
    if (n <= 0 || memchr(buf, '\0', (size_t)n) != NULL ||
        (colon = memchr(buf, ':', (size_t)n)) == NULL || colon == (char *)buf) {
        if (n > 0)
            explicit_bzero(buf, (size_t)n);
        refuse(r, AF_BAD_BASIC, 1, NULL);
        return;
    }
    buf[n] = '\0';
    *colon = '\0';
    if ((size_t)(colon - (char *)buf) >= sizeof(r->username)) {
        explicit_bzero(buf, sizeof(buf));
        refuse(r, AF_BAD_IDENTITY, 1, NULL);
        return;
    }
    basic.username = (char *)buf;
    basic.password = colon + 1;
    req.credentials_case = KSCORE__V1__AUTHN_REQUEST__CREDENTIALS_BASIC;
    req.basic = &basic;
    ask_iam(a, r, &req, 1, pub);
    explicit_bzero(buf, sizeof(buf));
}

/* ---- the stage ---- */

void gw_stage_authn(gw_request *r)
{
    gw_authn *a = r->g->authn;
    const char *h = gw_header(r, MHD_HTTP_HEADER_AUTHORIZATION), *cred;
    int pub = gw_auth_path_is_public(request_path(r));
    size_t scheme, n;

    while (h != NULL && (*h == ' ' || *h == '\t'))
        h++;
    if (h == NULL || *h == '\0') {
        /* No credentials (an empty header counts as none, as in Kubernetes). */
        set_anonymous(r);
        ks_metric_inc(m_anonymous);
        gw_next(r);
        return;
    }
    /* "<scheme> <credentials>": the scheme is case-insensitive (RFC 9110 §11.1). */
    for (scheme = 0; h[scheme] != '\0' && h[scheme] != ' ' && h[scheme] != '\t'; scheme++)
        ;
    for (cred = h + scheme; *cred == ' ' || *cred == '\t'; cred++)
        ;
    n = strlen(cred);
    while (n > 0 && (cred[n - 1] == ' ' || cred[n - 1] == '\t'))
        n--;
    if (scheme == 6 && strncasecmp(h, "Bearer", 6) == 0)
        authn_bearer(a, r, cred, n, pub);
    else if (scheme == 5 && strncasecmp(h, "Basic", 5) == 0)
        authn_basic(a, r, cred, n, pub);
    else
        refuse_or_pass(r, pub, AF_BAD_SCHEME, 0);
}

/* ---- start and stop ---- */

/* The HMAC secret, read as iam reads it (services/iam/main.c): the file's
 * bytes, trailing newlines dropped, at least 32 bytes. */
static ks_status load_secret(const char *path, ks_jwt_key **out)
{
    unsigned char buf[KS_JWT_MAX_SECRET + 2];
    size_t n;
    FILE *f;
    ks_status st;

    if (path == NULL)
        return KS_FAIL(KS_ERR_INVALID,
                       "KS_JWT_SECRET_FILE (--jwt-secret-file) is required: the gateway "
                       "verifies tokens with the secret iam signs them with");
    f = fopen(path, "rb");
    if (f == NULL)
        return KS_FAIL(KS_ERR_IO, "cannot open the JWT secret file %s", path);
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n < KS_JWT_MIN_SECRET) {
        explicit_bzero(buf, sizeof(buf));
        return KS_FAIL(KS_ERR_INVALID, "the JWT secret in %s is shorter than %d bytes", path,
                       KS_JWT_MIN_SECRET);
    }
    if (n > KS_JWT_MAX_SECRET) {
        explicit_bzero(buf, sizeof(buf));
        return KS_FAIL(KS_ERR_INVALID, "the JWT secret in %s is longer than %d bytes", path,
                       KS_JWT_MAX_SECRET);
    }
    st = ks_jwt_key_create(buf, n, out);
    explicit_bzero(buf, sizeof(buf));
    return st;
}

static void register_metrics(void)
{
    static const double rtt_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                        0.025,  0.05,    0.1,    0.25,  0.5,    1,     5};

    for (int i = 0; i < AF_COUNT; i++) {
        char labels[64] = "";
        const char *name = i < KS_JWT_REASON_COUNT ? ks_jwt_reason_name((ks_jwt_reason)i)
                                                   : af_names[i - KS_JWT_REASON_COUNT];
        if (i == KS_JWT_OK)
            continue;
        (void)ks_metrics_label_append(labels, sizeof(labels), "reason", name);
        m_fail[i] = ks_metrics_counter("ks_gateway_authn_failures_total",
                                       "requests refused by authentication, by reason", labels);
    }
    m_ok_bearer = ks_metrics_counter("ks_gateway_authn_total",
                                     "requests authenticated, by method", "method=\"bearer\"");
    m_ok_iam_token = ks_metrics_counter("ks_gateway_authn_total", NULL, "method=\"bearer_iam\"");
    m_ok_basic = ks_metrics_counter("ks_gateway_authn_total", NULL, "method=\"basic\"");
    m_anonymous = ks_metrics_counter("ks_gateway_authn_total", NULL, "method=\"anonymous\"");
    m_groups_cut = ks_metrics_counter("ks_gateway_authn_groups_dropped_total",
                                      "groups of a user that did not fit a request", NULL);
    m_rtt = ks_metrics_histogram("ks_gateway_authn_request_seconds",
                                 "round trip of ks.iam.authn requests", NULL, rtt_bounds,
                                 sizeof(rtt_bounds) / sizeof(rtt_bounds[0]));
}

ks_status gw_authn_start(gw *g)
{
    gw_authn *a = calloc(1, sizeof(*a));
    ks_status st;

    if (a == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "authn");
    a->bus = g->bus;
    a->mirror = ks_service_mirror(g->svc);
    a->timeout_ms = (int)g->cfg->common.request_timeout_ms;
    register_metrics();
    st = load_secret(g->cfg->jwt_secret_file, &a->key);
    if (st == KS_OK)
        st = gw_revoked_create(g->bus, NULL, &a->revoked);
    if (st) {
        authn_destroy(a);
        return st;
    }
    g->authn = a;
    return KS_OK;
}

void gw_authn_stop(gw *g)
{
    gw_authn *a = g->authn;

    g->authn = NULL;
    authn_destroy(a);
}
