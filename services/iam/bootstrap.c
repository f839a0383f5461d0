/* bootstrap.c: the user admin and its GlobalRoleBinding to platform-admin
 * (docs/iam.md "Bootstrap").
 *
 * A background thread makes sure, until kube-apiserver answers, that:
 *   - the User admin exists (email admin@kubesphere.io, the password from
 *     KS_ADMIN_PASSWORD hashed here: the plain text never reaches etcd).
 *     An existing admin is left as it is: its password may have changed;
 *   - the GlobalRoleBinding admin binds it to platform-admin.
 * Both creates are idempotent (409 AlreadyExists from another replica is
 * success), so the service starts at once even when kube-apiserver is slow
 * or away. The password is never logged; the default one is warned about. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "iam.h"
#include "log.h"

#define ADMIN_NAME "admin"
#define ADMIN_EMAIL "admin@kubesphere.io"
#define ADMIN_ROLE "platform-admin"
#define DEFAULT_PASSWORD "P@88w0rd"
#define BOOT_TIMEOUT_MS 3000 /* short: the stop joins this thread */
#define HASH_WAIT_MS 60000

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int started;
    pthread_t thread;
    iam *s;
} B = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* GET path: KS_OK (exists), KS_ERR_NOT_FOUND, KS_ERR_CONFLICT (being
 * deleted: try again once it is gone), or another failure. */
static ks_status exists(iam *s, const char *path)
{
    ks_kube_response r;
    ks_status st = ks_kube_request(s->kube, "GET", path, NULL, NULL, BOOT_TIMEOUT_MS, &r);

    if (st == KS_OK && r.body != NULL) {
        json_t *o = json_loadb(r.body, r.body_len, 0, NULL);
        if (json_object_get(json_object_get(o, "metadata"), "deletionTimestamp") != NULL)
            st = KS_FAIL(KS_ERR_CONFLICT, "%s is being deleted", path);
        json_decref(o);
    }
    ks_kube_response_clear(&r);
    return st;
}

static ks_status create(iam *s, const char *path, json_t *obj)
{
    ks_kube_response r;
    char *text = json_dumps(obj, JSON_COMPACT);
    ks_status st;

    if (text == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "bootstrap object");
    st = ks_kube_request(s->kube, "POST", path, text, NULL, BOOT_TIMEOUT_MS, &r);
    explicit_bzero(text, strlen(text));
    free(text);
    if (st == KS_ERR_CONFLICT && r.http_code == 409)
        st = KS_OK; /* another replica was first */
    else if (st && r.http_code > 0)
        st = KS_FAIL(st, "%s: %ld %s", path, r.http_code, r.status.reason);
    ks_kube_response_clear(&r);
    return st;
}

static ks_status ensure_user(iam *s)
{
    const char *plain = s->cfg->admin_password;
    char *hash = NULL, now[32];
    json_t *user;
    ks_status st;

    st = exists(s, IAM_KUBE_PREFIX "/users/" ADMIN_NAME);
    if (st != KS_ERR_NOT_FOUND)
        return st;
    st = ks_password_pool_hash_wait(s->passwords, plain, (int)s->cfg->bcrypt_cost, HASH_WAIT_MS,
                                    &hash);
    if (st)
        return st;
    iam_time_format(iam_now_unix(), now);
    user = json_pack("{s:s, s:s, s:{s:s, s:{s:s, s:s}}, s:{s:s, s:s}}", "apiVersion",
                     IAM_GROUP "/" IAM_VERSION, "kind", "User", "metadata", "name", ADMIN_NAME,
                     "annotations", "iam.kubesphere.io/globalrole", ADMIN_ROLE,
                     "iam.kubesphere.io/last-password-change-time", now, "spec", "email",
                     ADMIN_EMAIL, "password", hash);
    explicit_bzero(hash, strlen(hash));
    free(hash);
    if (user == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "bootstrap user");
    st = create(s, IAM_KUBE_PREFIX "/users", user);
    json_decref(user);
    if (st == KS_OK)
        ks_info("bootstrap: created the user %s", ADMIN_NAME);
    return st;
}

static ks_status ensure_binding(iam *s)
{
    json_t *grb;
    ks_status st = exists(s, IAM_KUBE_PREFIX "/globalrolebindings/" ADMIN_NAME);

    if (st != KS_ERR_NOT_FOUND)
        return st;
    grb = json_pack("{s:s, s:s, s:{s:s, s:{s:s}}, s:{s:s, s:s, s:s}, s:[{s:s, s:s, s:s}]}",
                    "apiVersion", IAM_GROUP "/" IAM_VERSION, "kind", "GlobalRoleBinding",
                    "metadata", "name", ADMIN_NAME, "labels", "iam.kubesphere.io/user-ref",
                    ADMIN_NAME, "roleRef", "apiGroup", IAM_GROUP, "kind", "GlobalRole", "name",
                    ADMIN_ROLE, "subjects", "apiGroup", IAM_GROUP, "kind", "User", "name",
                    ADMIN_NAME);
    if (grb == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "bootstrap binding");
    st = create(s, IAM_KUBE_PREFIX "/globalrolebindings", grb);
    json_decref(grb);
    if (st == KS_OK)
        ks_info("bootstrap: bound the user %s to %s", ADMIN_NAME, ADMIN_ROLE);
    return st;
}

static void *boot_thread(void *arg)
{
    iam *s = arg;
    int64_t backoff = 250;
    int user_done = 0, warned = 0;

    for (;;) {
        ks_status st = KS_OK;
        struct timespec until;

        if (!user_done && (st = ensure_user(s)) == KS_OK)
            user_done = 1;
        if (user_done && (st = ensure_binding(s)) == KS_OK) {
            ks_info("bootstrap: the user %s is in place", ADMIN_NAME);
            break;
        }
        if (st == KS_ERR_CLOSED)
            break;
        if (!warned || backoff >= 10000)
            ks_warn("bootstrap: not done yet (retrying): %s", ks_status_last());
        warned = 1;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += backoff / 1000;
        until.tv_nsec += (backoff % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        backoff = backoff * 2 > 10000 ? 10000 : backoff * 2;
        pthread_mutex_lock(&B.mu);
        if (!B.stop)
            pthread_cond_timedwait(&B.cv, &B.mu, &until);
        st = B.stop ? KS_ERR_CLOSED : KS_OK;
        pthread_mutex_unlock(&B.mu);
        if (st)
            break;
    }
    return NULL;
}

ks_status iam_bootstrap(iam *s)
{
    const char *pw = s->cfg->admin_password;
    char why[256];

    if (pw == NULL || pw[0] == '\0') {
        ks_info("bootstrap: no admin password set (KS_ADMIN_PASSWORD empty): no user %s",
                ADMIN_NAME);
        return KS_OK;
    }
    if (ks_password_policy_check(pw, why, sizeof(why)) != KS_OK) {
        ks_error("bootstrap: KS_ADMIN_PASSWORD does not meet the password policy (%s): the "
                 "user %s is not created",
                 why, ADMIN_NAME);
        return KS_OK;
    }
    if (strcmp(pw, DEFAULT_PASSWORD) == 0)
        ks_warn("bootstrap: the user %s gets the default password; set KS_ADMIN_PASSWORD "
                "(and change it after the first login)",
                ADMIN_NAME);
    pthread_mutex_lock(&B.mu);
    B.s = s;
    B.stop = 0;
    if (pthread_create(&B.thread, NULL, boot_thread, s) != 0) {
        pthread_mutex_unlock(&B.mu);
        return KS_FAIL(KS_ERR_INTERNAL, "cannot start the bootstrap thread");
    }
    B.started = 1;
    pthread_mutex_unlock(&B.mu);
    return KS_OK;
}

void iam_bootstrap_stop(iam *s)
{
    (void)s;
    pthread_mutex_lock(&B.mu);
    if (!B.started) {
        pthread_mutex_unlock(&B.mu);
        return;
    }
    B.stop = 1;
    pthread_cond_broadcast(&B.cv);
    pthread_mutex_unlock(&B.mu);
    pthread_join(B.thread, NULL);
    B.started = 0;
}
