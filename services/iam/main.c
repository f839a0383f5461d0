/* kscore-iam: users, passwords, OAuth2 tokens, RBAC decisions (DESIGN.md §5).
 * This file declares the service and starts its parts (iam.h lists them). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iam.h"
#include "log.h"

static iam_config cfg;

static const ks_config_opt iam_options[] = {
    KS_SERVICE_COMMON_OPTIONS(iam_config, "127.0.0.1:9191"),
    {"jwt-secret-file", KS_CFG_PATH, NULL, 0, 0, NULL, offsetof(iam_config, jwt_secret_file),
     "file holding the HMAC secret that signs tokens (required)", 0},
    {"issuer", KS_CFG_STRING, "kubesphere", 0, 0, NULL, offsetof(iam_config, issuer),
     "the iss claim of issued tokens", 0},
    {"access-token-ttl", KS_CFG_DURATION, "2h", 60000, 86400000LL * 30, NULL,
     offsetof(iam_config, access_ttl_ms), "lifetime of access tokens", 0},
    {"refresh-token-ttl", KS_CFG_DURATION, "4h", 60000, 86400000LL * 90, NULL,
     offsetof(iam_config, refresh_ttl_ms), "lifetime of refresh tokens", 0},
    {"bcrypt-cost", KS_CFG_INT, "10", 4, 16, NULL, offsetof(iam_config, bcrypt_cost),
     "bcrypt cost of new password hashes", 0},
    {"hash-workers", KS_CFG_INT, "2", 1, 64, NULL, offsetof(iam_config, hash_workers),
     "threads that hash and verify passwords", 0},
    {"hash-queue", KS_CFG_INT, "64", 1, 100000, NULL, offsetof(iam_config, hash_queue),
     "password checks that may wait; beyond, logins get 429", 0},
    {"login-max-failures", KS_CFG_INT, "5", 1, 1000, NULL,
     offsetof(iam_config, login_max_failures), "failed logins that block an account", 0},
    {"login-window", KS_CFG_DURATION, "10m", 1000, 86400000LL, NULL,
     offsetof(iam_config, login_window_ms), "window of the failure count and of the block", 0},
    {"read-wait", KS_CFG_DURATION, "2s", 0, 60000, NULL, offsetof(iam_config, read_wait_ms),
     "how long a read waits for the mirror to show a write", 0},
    {"admin-password", KS_CFG_STRING, "P@88w0rd", 0, 0, NULL,
     offsetof(iam_config, admin_password), "password of the bootstrap user admin", 1},
    {"revoked-replicas", KS_CFG_INT, "1", 1, 5, NULL, offsetof(iam_config, revoked_replicas),
     "replicas of the revocation bucket KS_REVOKED when this replica creates it (3 in a "
     "3-server NATS cluster)", 0},
};

static iam state;



/* The HMAC secret: the file's bytes, trailing newlines dropped. */
static ks_status load_secret(const char *path, ks_jwt_key **out)
{
    unsigned char buf[4096];
    size_t n;
    FILE *f;
    ks_status st;

    if (path == NULL)
        return KS_FAIL(KS_ERR_INVALID, "KS_JWT_SECRET_FILE (--jwt-secret-file) is required");
    f = fopen(path, "rb");
    if (f == NULL)
        return KS_FAIL(KS_ERR_IO, "cannot open the JWT secret file %s", path);
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n < 32) {
        explicit_bzero(buf, sizeof(buf));
        return KS_FAIL(KS_ERR_INVALID, "the JWT secret in %s is shorter than 32 bytes", path);
    }
    st = ks_jwt_key_create(buf, n, out);
    explicit_bzero(buf, sizeof(buf));
    return st;
}

static void iam_stop(void *arg)
{
    iam *s = arg;

    if (s == NULL)
        return;
    iam_policy_stop(s);
    iam_revocations_stop(s);
    ks_password_pool_destroy(s->passwords);
    s->passwords = NULL;
    ks_kube_client_shutdown(s->kube);
    ks_kube_client_destroy(s->kube);
    s->kube = NULL;
    ks_rbac_destroy(s->rbac);
    s->rbac = NULL;
    ks_jwt_key_destroy(s->jwt);
    s->jwt = NULL;
}

static ks_status iam_start(ks_service *svc, void *cfgp, void **out)
{
    iam *s = &state;
    ks_status st;

    s->cfg = cfgp;
    s->svc = svc;
    s->bus = ks_service_bus(svc);
    s->mirror = ks_service_mirror(svc);
    st = load_secret(s->cfg->jwt_secret_file, &s->jwt);
    if (st)
        goto out;
    st = ks_service_kube_client(&s->cfg->common, &s->kube);
    if (st)
        goto out;
    st = ks_rbac_create(&s->rbac);
    if (st)
        goto out;
    st = ks_password_pool_create((int)s->cfg->hash_workers, (size_t)s->cfg->hash_queue,
                                 &s->passwords);
    if (st)
        goto out;
    /* Parts register their routes and subscriptions; the API starts last so
     * every route is in place before the first request. */
    if ((st = iam_revocations_start(s)) || (st = iam_policy_start(s)) ||
        (st = iam_authz_start(s)) || (st = iam_authn_start(s)) || (st = iam_oauth_start(s)) ||
        (st = iam_api_start(s)) || (st = iam_bootstrap(s)))
        goto out;
    *out = s;
out:
    if (st)
        iam_stop(s);
    return st;
}

int main(int argc, char **argv)
{
    static const char *const meta_keys[] = {"ks.api.groups"};
    static const char *const meta_values[] = {"iam.kubesphere.io/v1beta1"};
    const ks_service_def def = {
        .spec = {.name = "iam", .description = "kscore identity and access management",
                 .meta_keys = meta_keys, .meta_values = meta_values, .nmeta = 1,
                 .mirror_all = 1},
        .program = "kscore-iam",
        .summary = "kscore identity and access management: users, tokens, RBAC decisions",
        .options = iam_options,
        .noptions = sizeof(iam_options) / sizeof(iam_options[0]),
        .cfg = &cfg,
        .common = &cfg.common,
        .start = iam_start,
        .stop = iam_stop,
    };
    return ks_service_main(&def, argc, argv);
}
