/* iam.h: the state every part of kscore-iam shares (DESIGN.md §5).
 *
 * iam keeps no authoritative state: users, roles, bindings, workspaces and
 * namespaces come from the mirror (ks_mirror_cache); writes go to
 * kube-apiserver (ks_kube_client). The parts, one file each:
 *   api.c         the REST routes of iam.kubesphere.io/v1beta1 (ks.api.*)
 *   users.c       users, passwords, login records
 *   roles.c       roles, bindings, members, subjectaccessreviews
 *   policy.c      feeds the RBAC store from the mirror
 *   authz.c       ks.iam.authz
 *   authn.c       ks.iam.authn
 *   oauth.c       ks.iam.token (password and refresh_token grants), logout
 *   revocation.c  revoked tokens: KV bucket KS_REVOKED + ks.iam.revoked
 *   guard.c       login records and the brute-force guard
 *   bootstrap.c   the admin user
 *   consistency.c read-your-writes: wait until the mirror has a write */
#ifndef IAM_H
#define IAM_H

#include <stdint.h>

#include "api.h"
#include "bus.h"
#include "jwt.h"
#include "kube.h"
#include "mirror_cache.h"
#include "password.h"
#include "rbac.h"
#include "service.h"

#define IAM_GROUP "iam.kubesphere.io"
#define IAM_VERSION "v1beta1"
#define IAM_API_PREFIX "/kapis/iam.kubesphere.io/v1beta1"
#define IAM_KUBE_PREFIX "/apis/iam.kubesphere.io/v1beta1"

/* Mirror resource names ("<group>/<resource>"). */
#define IAM_RES_USERS "iam.kubesphere.io/users"
#define IAM_RES_LOGINRECORDS "iam.kubesphere.io/loginrecords"
#define IAM_RES_NAMESPACES "/namespaces"
#define IAM_RES_WORKSPACES "tenant.kubesphere.io/workspaces"

typedef struct {
    ks_service_common common;
    char *jwt_secret_file;
    char *issuer;
    long long access_ttl_ms;       /* access tokens: 2 h */
    long long refresh_ttl_ms;      /* refresh tokens: 4 h */
    long long bcrypt_cost;         /* new hashes */
    long long hash_workers;        /* password pool threads */
    long long hash_queue;          /* password pool queue; beyond: 429 */
    long long login_max_failures;  /* brute-force guard: N failures ... */
    long long login_window_ms;     /* ... within this window */
    long long read_wait_ms;        /* read-your-writes deadline */
    char *admin_password;          /* bootstrap admin; secret */
    long long revoked_replicas;    /* replicas of KS_REVOKED when this replica creates it */
} iam_config;

typedef struct iam_revocations iam_revocations;

typedef struct iam {
    const iam_config *cfg;
    ks_service *svc;
    ks_bus *bus;
    ks_kube_client *kube;
    ks_mirror_cache *mirror;
    ks_rbac *rbac;
    ks_password_pool *passwords;
    ks_jwt_key *jwt;
    void *api_private;          /* api.c */
    iam_revocations *revoked;
} iam;

/* ---- api.c: the REST routes, served on ks.api.iam_kubesphere_io.v1beta1 ---- */

/* Add routes (kept by pointer: a static table) before iam_api_start. Each
 * part's start function registers its own. Handlers get the iam as arg. */
ks_status iam_api_add_routes(const ks_api_route *routes, size_t n);

/* ---- users.c ---- */

/* Find a user by name, or by spec.email when no user has that name. *user
 * is a new reference (json_decref). KS_ERR_NOT_FOUND if none. */
ks_status iam_user_find(iam *s, const char *name_or_email, json_t **user);

/* Register the users routes (iam_api_add_routes); called by iam_authn_start,
 * as main.c has no hook of its own for users.c. */
ks_status iam_users_start(iam *s);

/* A deep copy of a User (or a list item) without spec.password: the only
 * form in which a User leaves iam. NULL on NOMEM. */
json_t *iam_user_public(const json_t *user);

/* User.status.state ("" when unset); the user's spec.groups into groups
 * (at most cap, pointers into user); returns the count. */
const char *iam_user_state(const json_t *user);
size_t iam_user_groups(const json_t *user, const char **groups, size_t cap);

/* 1 when the Content-Type ct is exactly the media type mt (case-insensitive,
 * parameters after ';' allowed): "application/json-patch+json" is not
 * "application/json". */
int iam_media_type_is(const char *ct, const char *mt);

/* Clocks and RFC 3339 times ("2024-05-01T10:00:00Z", UTC, seconds). */
int64_t iam_now_unix(void);
int64_t iam_now_ms(void);
void iam_time_format(int64_t unix_s, char out[32]);
/* KS_ERR_INVALID unless s is RFC 3339 (fractions and offsets accepted). */
ks_status iam_time_parse(const char *s, int64_t *unix_s);

/* ---- authn.c ---- */

typedef struct {
    char username[256];
    char uid[64];
    char groups[16][128];
    size_t ngroups;
} iam_identity;

typedef enum {
    IAM_LOGIN_OK = 0,
    IAM_LOGIN_BAD_CREDENTIALS,  /* unknown user or wrong password: 400 invalid_grant */
    IAM_LOGIN_DISABLED,         /* 400 "Account suspended" */
    IAM_LOGIN_BLOCKED,          /* brute-force guard: 429 */
    IAM_LOGIN_BUSY,             /* password pool full: 429 with Retry-After */
    IAM_LOGIN_ERROR,            /* kube or bus failure: 503 */
} iam_login_result;

/* Done callback of an asynchronous login; runs on a password-pool thread or
 * on the caller's thread for answers known at once. */
typedef void (*iam_login_fn)(iam_login_result result, const iam_identity *who, void *arg);

/* Check a user name (or email) and password without blocking the caller:
 * the user exists, is not Disabled, is not blocked by the guard, and the
 * password verifies on the password pool. Records the attempt (guard.c).
 * fn is called exactly once. */
void iam_login(iam *s, const char *name_or_email, const char *password, const char *type,
               const char *source_ip, const char *user_agent, iam_login_fn fn, void *arg);

/* ---- revocation.c ---- */

/* Revoke one token until it expires / every token of a user issued before
 * a cutoff. Durable (KV bucket KS_REVOKED, TTL = the longest token
 * lifetime) and published on ks.iam.revoked for the gateways. */
ks_status iam_revoke_token(iam *s, const char *jti, int64_t exp_unix);
ks_status iam_revoke_user(iam *s, const char *username, int64_t issued_before_unix);
/* 1 if a token (jti, username, iat) is revoked. */
int iam_is_revoked(iam *s, const char *jti, const char *username, int64_t iat);
/* Revoke one token only if nobody revoked it before, atomically across
 * replicas (a KV create): the single use of a refresh token. KS_OK,
 * KS_ERR_CONFLICT (already revoked), KS_ERR_UNAVAILABLE (bucket away). */
ks_status iam_revoke_token_once(iam *s, const char *jti, int64_t exp_unix);
/* 1 once the revocations stored in KS_REVOKED are loaded (waits at most
 * wait_ms): before that a token check cannot be trusted. */
int iam_revocations_loaded(iam *s, int wait_ms);
/* The earliest iat a new token of username may carry: a user revocation's
 * cutoff is "now + 1 s", so a token issued in the same second as a
 * password change is not caught by it (0 when no revocation). */
int64_t iam_revocation_floor(iam *s, const char *username);

/* ---- guard.c ---- */

/* 1 when username has reached the failure limit within the window. */
int iam_guard_blocked(iam *s, const char *username);
/* Queue a LoginRecord (type "Token" or "BasicAuth", success, reason) for
 * the writer thread; a failure is also counted at once and announced to the
 * other replicas (ks.iam.loginfailures). KS_ERR_UNAVAILABLE when the queue
 * is full or the writer stopped (logged and counted). */
ks_status iam_guard_record(iam *s, const char *username, const char *type, int success,
                           const char *reason, const char *source_ip, const char *user_agent);
/* The writer thread and the ks.iam.loginfailures subscription. Started by
 * iam_authn_start; stopped by iam_revocations_stop (main.c calls it while
 * the kube client still works), which flushes the queue for at most 1.5 s. */
ks_status iam_guard_start(iam *s);
void iam_guard_stop(iam *s);

/* ---- consistency.c ---- */

/* Wait (at most cfg->read_wait_ms) until the mirror holds resource/ns/name at
 * resourceVersion rv (rv NULL: until the object is gone). KS_ERR_TIMEOUT if
 * it did not arrive; the caller may then read through to kube-apiserver. */
ks_status iam_wait_visible(iam *s, const char *resource, const char *ns, const char *name,
                           const char *rv);

/* Every part's start and stop; each returns KS_OK or a raised error. */
ks_status iam_api_start(iam *s);
ks_status iam_policy_start(iam *s);
void iam_policy_stop(iam *s);
ks_status iam_authz_start(iam *s);
ks_status iam_authn_start(iam *s);
ks_status iam_oauth_start(iam *s);
ks_status iam_revocations_start(iam *s);
void iam_revocations_stop(iam *s);
ks_status iam_bootstrap(iam *s);
/* Join the bootstrap thread (called by iam_revocations_stop). */
void iam_bootstrap_stop(iam *s);

#endif
