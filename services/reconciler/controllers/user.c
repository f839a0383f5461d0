/* user.c: the user controller (docs/controllers.md "user").
 *
 * For each User, level-triggered:
 *   - the finalizer finalizers.kubesphere.io/users;
 *   - a plain-text spec.password becomes a bcrypt hash at the configured
 *     cost, with the annotation iam.kubesphere.io/last-password-change-time;
 *     a replaced earlier password revokes the user's tokens;
 *   - the annotation iam.kubesphere.io/globalrole follows the user's
 *     GlobalRoleBinding;
 *   - status.state: "" -> Active once the password is a hash; Active ->
 *     AuthLimitExceeded when the failed LoginRecords at or after both
 *     lastTransitionTime and now - window reach the maximum; back to Active
 *     when the window has passed (requeued for that moment); Disabled is
 *     left alone;
 *   - on delete: the user's LoginRecords, bindings and group memberships
 *     go, every token of the user is revoked (ks.iam.revoked and the
 *     KS_REVOKED bucket, as services/iam/revocation.c), then the finalizer.
 *
 * A reconcile that writes twice (spec, then status) leaves the version it
 * wrote over in a small memo: when an event brings that older version back
 * before the newer one, the reconcile skips it instead of writing with a
 * stale resourceVersion and failing with 409. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "iamctl.h"
#include "kscore/v1/iam.pb-c.h"
#include "log.h"
#include "password.h"
#include "strmap.h"
#include "subject.h"

#define CTL "user"
#define FINALIZER "finalizers.kubesphere.io/users"
#define ANN_PASSWORD_CHANGE "iam.kubesphere.io/last-password-change-time"
#define ANN_GLOBALROLE "iam.kubesphere.io/globalrole"
#define ANN_LAST_APPLIED "kubectl.kubernetes.io/last-applied-configuration"
#define LABEL_IDP "iam.kubesphere.io/identify-provider"
#define REVOKED_SUBJECT "ks.iam.revoked"
#define REVOKED_BUCKET "KS_REVOKED"
/* How long a revocation entry must be honoured: the longest refresh token
 * iam can be configured to issue (its --refresh-token-ttl is at most 90 d).
 * The bucket's own TTL ends the stored entry earlier when iam's tokens live
 * shorter. */
#define REVOKE_KEEP_S (90LL * 86400)
#define USER_NAME_MAX 256
#define STALE_RVS 4
#define REASON_MAX 512

/* ---- the stale-version memo ---- */

typedef struct {
    char rv[STALE_RVS][64];
    int n;      /* slots in use */
    int next;   /* the slot the next version overwrites when all are used */
} stale_rvs;

static pthread_mutex_t stale_mu = PTHREAD_MUTEX_INITIALIZER;
static ks_strmap *stale;

/* Our write replaced version rv of key. */
static void stale_add(const char *key, const char *rv)
{
    stale_rvs *s;

    pthread_mutex_lock(&stale_mu);
    if (stale == NULL)
        stale = ks_strmap_create(free);
    s = stale ? ks_strmap_get(stale, key) : NULL;
    if (stale != NULL && s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s != NULL && ks_strmap_put(stale, key, s) != KS_OK) {
            free(s);
            s = NULL;
        }
    }
    if (s != NULL) {
        int i = s->n < STALE_RVS ? s->n++ : s->next;
        s->next = (i + 1) % STALE_RVS;
        snprintf(s->rv[i], sizeof(s->rv[i]), "%s", rv);
    }
    pthread_mutex_unlock(&stale_mu);
}

/* 1 when rv is a version of key that our own write already replaced (its
 * successor's event is on its way). Otherwise the memo of key is dropped:
 * the store has caught up. */
static int stale_hit(const char *key, const char *rv)
{
    stale_rvs *s;
    int hit = 0;

    pthread_mutex_lock(&stale_mu);
    s = stale ? ks_strmap_get(stale, key) : NULL;
    for (int i = 0; s != NULL && i < s->n && !hit; i++)
        hit = strcmp(s->rv[i], rv) == 0;
    if (s != NULL && !hit)
        ks_strmap_remove(stale, key);
    pthread_mutex_unlock(&stale_mu);
    return hit;
}

static void stale_forget(const char *key)
{
    pthread_mutex_lock(&stale_mu);
    if (stale != NULL)
        ks_strmap_remove(stale, key);
    pthread_mutex_unlock(&stale_mu);
}

/* ---- revocation ---- */

static pthread_mutex_t kv_mu = PTHREAD_MUTEX_INITIALIZER;
static ks_bus_kv *revoked_kv;

/* Revoke every token of user issued before cutoff (Unix seconds): publish
 * on ks.iam.revoked, then store under "user.<escaped>" in KS_REVOKED,
 * keeping the later cutoff when another writer raced us. A missing bucket
 * means no iam has ever run on this NATS, so no token exists: publishing
 * is then enough. */
static ks_status revoke_user(rec_runtime *rt, const char *user, int64_t cutoff)
{
    Kscore__V1__Revocation rev = KSCORE__V1__REVOCATION__INIT;
    char esc[KS_SUBJECT_ESCAPED_MAX(USER_NAME_MAX)], key[sizeof(esc) + 8];
    ks_bus *bus = rec_bus(rt);
    ks_bus_kv *kv;
    uint8_t *buf = NULL;
    size_t len = 0;
    ks_status st;

    if (strlen(user) > USER_NAME_MAX || ks_subject_escape_token(user, esc, sizeof(esc)) != KS_OK)
        return KS_FAIL(KS_ERR_INVALID, "user name too long to revoke");
    snprintf(key, sizeof(key), "user.%s", esc);
    if (bus == NULL || !ks_bus_is_connected(bus))
        return KS_FAIL(KS_ERR_UNAVAILABLE, "NATS is not connected: cannot revoke the tokens");
    rev.username = (char *)user;
    rev.jti = (char *)"";
    rev.issued_before_unix = cutoff;
    rev.expires_unix = cutoff + REVOKE_KEEP_S;
    st = ks_codec_pack(&rev.base, &buf, &len);
    if (st)
        return st;
    st = ks_bus_publish(bus, REVOKED_SUBJECT, buf, len);
    if (st)
        goto out;
    pthread_mutex_lock(&kv_mu);
    if (revoked_kv == NULL) {
        ks_bus_kv_cfg cfg = {.bucket = REVOKED_BUCKET};
        st = ks_bus_kv_open(bus, &cfg, 0, &revoked_kv);
        if (st == KS_ERR_NOT_FOUND) {
            pthread_mutex_unlock(&kv_mu);
            ks_debug("user %s: no %s bucket (no iam ran yet): revocation published only", user,
                     REVOKED_BUCKET);
            st = KS_OK;
            goto out;
        }
    }
    kv = revoked_kv;
    pthread_mutex_unlock(&kv_mu);
    if (st)
        goto out;
    for (int attempt = 0; attempt < 5; attempt++) {
        void *old = NULL;
        size_t oldlen = 0;
        uint64_t last = 0;

        st = ks_bus_kv_get(kv, key, &old, &oldlen, &last);
        if (st == KS_ERR_NOT_FOUND) {
            last = 0;
        } else if (st) {
            break;
        } else {
            Kscore__V1__Revocation *prev = NULL;
            int newer = 0;
            if (KS_UNPACK(kscore__v1__revocation, old, oldlen, &prev) == KS_OK) {
                newer = prev->issued_before_unix >= cutoff;
                ks_codec_free(&prev->base);
            }
            free(old);
            if (newer) {
                st = KS_OK;
                break;
            }
        }
        st = ks_bus_kv_update(kv, key, buf, len, last, NULL);
        if (st != KS_ERR_CONFLICT)
            break;
    }
out:
    free(buf);
    return st;
}

/* ---- helpers ---- */

static ks_workqueue_result retry_after_error(rec_runtime *rt, const json_t *u, ks_status st,
                                             const char *reason, const char *what)
{
    /* A 409 is the ordinary race of two writers: no Event, just again. */
    if (st != KS_ERR_CONFLICT) {
        ks_warn("user %s: %s: %s", iamx_meta(u, "name"), what, ks_status_last());
        rec_event(rt, u, "Warning", reason, "%s: %s", what, ks_status_last());
    }
    return ks_workqueue_retry();
}

static void format_window(int64_t ms, char *out, size_t cap)
{
    if (ms % 3600000 == 0)
        snprintf(out, cap, "%lldh", (long long)(ms / 3600000));
    else if (ms % 60000 == 0)
        snprintf(out, cap, "%lldm", (long long)(ms / 60000));
    else if (ms % 1000 == 0)
        snprintf(out, cap, "%llds", (long long)(ms / 1000));
    else
        snprintf(out, cap, "%lldms", (long long)ms);
}

/* The role of the user's GlobalRoleBinding: among the bindings whose User
 * subjects name the user, one labelled iam.kubesphere.io/user-ref=<user>
 * first, then the first by name. NULL when there is none. Malloc'd. */
static char *globalrole_of(rec_runtime *rt, const char *user)
{
    iamx_item *items = NULL;
    long n = iamx_index_user(rt, IAMX_IDX_GRB, user, &items);
    const iamx_item *pick = NULL;
    char *role = NULL;

    for (long i = 0; i < n; i++) {
        if (!items[i].listed || items[i].ref[0] == '\0')
            continue;
        if (pick == NULL || (items[i].labelled && !pick->labelled))
            pick = &items[i];
    }
    if (pick != NULL)
        role = strdup(pick->ref);
    free(items);
    return role;
}

/* The annotation kubectl apply keeps holds the applied object, password
 * included: put the hash there too (or drop it when it is not JSON), so the
 * stored object never carries the plain text. */
static void scrub_last_applied(json_t *obj, const char *hash)
{
    const char *la = iamx_annotation(obj, ANN_LAST_APPLIED);
    json_t *an = json_object_get(json_object_get(obj, "metadata"), "annotations");
    json_t *applied;
    char *text;

    if (la == NULL)
        return;
    applied = json_loads(la, 0, NULL);
    if (applied == NULL || !json_is_object(json_object_get(applied, "spec"))) {
        json_decref(applied);
        json_object_del(an, ANN_LAST_APPLIED);
        return;
    }
    if (json_object_get(json_object_get(applied, "spec"), "password") != NULL)
        json_object_set_new(json_object_get(applied, "spec"), "password", json_string(hash));
    text = json_dumps(applied, JSON_COMPACT);
    json_decref(applied);
    if (text == NULL) {
        json_object_del(an, ANN_LAST_APPLIED);
        return;
    }
    /* kubectl writes it with a trailing newline */
    {
        size_t n = strlen(text);
        char *t = realloc(text, n + 2);
        if (t != NULL) {
            text = t;
            text[n] = '\n';
            text[n + 1] = '\0';
        }
    }
    json_object_set_new(an, ANN_LAST_APPLIED, json_string(text));
    explicit_bzero(text, strlen(text));
    free(text);
}

/* PUT status (a new object: state, reason, lastTransitionTime now, and
 * lastLoginTime kept) on u. */
static ks_status put_status(rec_runtime *rt, const char *key, const json_t *u, const char *state,
                            const char *reason, int64_t ltt)
{
    json_t *obj = json_deep_copy(u);
    json_t *old = json_object_get(u, "status");
    json_t *status = json_object();
    char ts[32];
    ks_status st;

    if (obj == NULL || status == NULL) {
        json_decref(obj);
        json_decref(status);
        return KS_FAIL(KS_ERR_NOMEM, "status");
    }
    if (state != NULL && state[0] != '\0')
        json_object_set_new(status, "state", json_string(state));
    if (reason != NULL && reason[0] != '\0')
        json_object_set_new(status, "reason", json_string(reason));
    if (ltt > 0) {
        iamx_time_format(ltt, ts, sizeof(ts));
        json_object_set_new(status, "lastTransitionTime", json_string(ts));
    } else if (json_object_get(old, "lastTransitionTime") != NULL) {
        json_object_set(status, "lastTransitionTime", json_object_get(old, "lastTransitionTime"));
    }
    if (json_object_get(old, "lastLoginTime") != NULL)
        json_object_set(status, "lastLoginTime", json_object_get(old, "lastLoginTime"));
    json_object_set_new(obj, "status", status);
    st = iamx_update(rt, CTL, IAMX_RES_USERS, obj, 1, NULL);
    json_decref(obj);
    if (st == KS_OK)
        stale_add(key, iamx_meta(u, "resourceVersion"));
    return st;
}

/* ---- status ---- */

static ks_workqueue_result sync_status(rec_runtime *rt, const char *key, const json_t *u)
{
    const rec_settings *cfg = rec_config(rt);
    const json_t *status = json_object_get(u, "status");
    const char *state = json_string_value(json_object_get(status, "state"));
    const char *ltt_s = json_string_value(json_object_get(status, "lastTransitionTime"));
    const char *pw = json_string_value(json_object_get(json_object_get(u, "spec"), "password"));
    const char *name = iamx_meta(u, "name");
    const char *idp = iamx_label(u, LABEL_IDP);
    int64_t now_ms = iamx_now_ms(), now_s = now_ms / 1000, ltt = 0;
    int has_ltt = ltt_s != NULL && iamx_time_parse(ltt_s, &ltt) == KS_OK;
    char reason[REASON_MAX] = "", window[32];
    const char *want = NULL;
    int64_t want_ltt = now_s, requeue_ms = 0;
    ks_status st;

    if (state == NULL)
        state = "";
    format_window(cfg->login_window_ms, window, sizeof(window));
    if (strcmp(state, "Disabled") == 0)
        return ks_workqueue_ok();
    if (state[0] == '\0') {
        if ((pw != NULL && ks_password_is_hash(pw)) ||
            ((pw == NULL || pw[0] == '\0') && idp != NULL && idp[0] != '\0'))
            want = "Active";
    } else if (strcmp(state, "Active") == 0) {
        iamx_item *items = NULL;
        long n = iamx_index_user(rt, IAMX_IDX_LR, name, &items);
        int64_t since = now_s - cfg->login_window_ms / 1000;
        long failures = 0;

        if (n < 0)
            return ks_workqueue_retry();
        /* As iam's guard: at or after both the window's start and the
         * last transition (re-activating a user clears the count). */
        if (has_ltt && ltt > since)
            since = ltt;
        for (long i = 0; i < n; i++)
            if (!items[i].success && items[i].created >= since)
                failures++;
        free(items);
        if (failures >= cfg->login_max_failures) {
            want = "AuthLimitExceeded";
            snprintf(reason, sizeof(reason), "Failed login attempts exceed %ld in last %s",
                     failures, window);
            requeue_ms = cfg->login_window_ms;
        }
    } else if (strcmp(state, "AuthLimitExceeded") == 0) {
        if (!has_ltt) {
            /* No transition time to count the window from: start it now. */
            want = state;
            const char *cur = json_string_value(json_object_get(status, "reason"));
            snprintf(reason, sizeof(reason), "%s", cur ? cur : "");
            requeue_ms = cfg->login_window_ms;
        } else if (now_ms >= ltt * 1000 + cfg->login_window_ms) {
            want = "Active";
        } else {
            return ks_workqueue_requeue_after(ltt * 1000 + cfg->login_window_ms - now_ms);
        }
    }
    if (want == NULL)
        return ks_workqueue_ok();
    st = put_status(rt, key, u, want, reason, want_ltt);
    if (st)
        return retry_after_error(rt, u, st, "StatusUpdateFailed", "cannot update the status");
    if (strcmp(want, state) != 0)
        ks_info("user %s: %s -> %s", name, state[0] ? state : "(none)", want);
    return requeue_ms > 0 ? ks_workqueue_requeue_after(requeue_ms) : ks_workqueue_ok();
}

/* Why a hash failed, for the object's status and Event (the log line has
 * ks_status_last() with its source location). */
static const char *hash_failure_text(ks_status st)
{
    switch (st) {
    case KS_ERR_TOO_LARGE:
        return "it is longer than 256 bytes";
    case KS_ERR_INVALID:
        return "libcrypt refused it or the configured cost";
    case KS_ERR_NOMEM:
        return "out of memory";
    default:
        return "libcrypt failed";
    }
}

/* The password cannot be hashed: say so on the object (a Warning Event, and
 * status.reason once) and retry with the queue's growing backoff. */
static ks_workqueue_result hash_failed(rec_runtime *rt, const char *key, const json_t *u,
                                       const char *why)
{
    const json_t *status = json_object_get(u, "status");
    const char *cur = json_string_value(json_object_get(status, "reason"));
    const char *state = json_string_value(json_object_get(status, "state"));
    char reason[REASON_MAX];

    snprintf(reason, sizeof(reason), "PasswordHashFailed: spec.password cannot be hashed: %s",
             why);
    rec_event(rt, u, "Warning", "PasswordHashFailed", "spec.password cannot be hashed: %s", why);
    if (cur == NULL || strcmp(cur, reason) != 0) {
        ks_status st = put_status(rt, key, u, state, reason, 0);
        if (st && st != KS_ERR_CONFLICT)
            ks_warn("user %s: cannot record the hash failure in its status: %s",
                    iamx_meta(u, "name"), ks_status_last());
    }
    return ks_workqueue_retry();
}

/* ---- spec: finalizer, password, globalrole ---- */

static ks_workqueue_result sync_user(rec_runtime *rt, const char *key, json_t **up)
{
    const rec_settings *cfg = rec_config(rt);
    json_t *u = *up, *obj = json_deep_copy(u), *out = NULL;
    const char *name = iamx_meta(u, "name");
    const char *pw = json_string_value(json_object_get(json_object_get(u, "spec"), "password"));
    const char *cur_role = iamx_annotation(u, ANN_GLOBALROLE);
    char why[256] = "", *role = NULL, ts[32];
    int changed = 0, revoke = 0, r;
    ks_status st;

    if (obj == NULL)
        return ks_workqueue_retry();
    r = iamx_add_finalizer(obj, FINALIZER);
    if (r < 0)
        goto nomem;
    changed |= r;
    if (pw != NULL && pw[0] != '\0' && !ks_password_is_hash(pw)) {
        char *hash = NULL;
        st = ks_password_hash(pw, cfg->bcrypt_cost, &hash);
        if (st) {
            ks_warn("user %s: hashing the password failed: %s", name, ks_status_last());
            snprintf(why, sizeof(why), "%s", hash_failure_text(st));
        } else {
            /* An earlier password is being replaced: its tokens go. */
            revoke = iamx_annotation(u, ANN_PASSWORD_CHANGE) != NULL;
            iamx_time_format(iamx_now_ms() / 1000, ts, sizeof(ts));
            if (json_object_set_new(json_object_get(obj, "spec"), "password",
                                    json_string(hash)) != 0 ||
                iamx_set_annotation(obj, ANN_PASSWORD_CHANGE, ts) != 0) {
                explicit_bzero(hash, strlen(hash));
                free(hash);
                goto nomem;
            }
            scrub_last_applied(obj, hash);
            explicit_bzero(hash, strlen(hash));
            free(hash);
            changed = 1;
        }
    }
    role = globalrole_of(rt, name);
    if (role != NULL && (cur_role == NULL || strcmp(cur_role, role) != 0)) {
        if (iamx_set_annotation(obj, ANN_GLOBALROLE, role) != 0)
            goto nomem;
        changed = 1;
    }
    free(role);
    role = NULL;
    /* Revoke before the new password is stored: a failure then retries
     * the whole change instead of losing the revocation. */
    if (revoke && (st = revoke_user(rt, name, iamx_now_ms() / 1000)) != KS_OK) {
        json_decref(obj);
        return retry_after_error(rt, u, st, "RevocationFailed",
                                 "cannot revoke the tokens of the earlier password");
    }
    if (changed) {
        st = iamx_update(rt, CTL, IAMX_RES_USERS, obj, 0, &out);
        json_decref(obj);
        obj = NULL;
        if (st)
            return retry_after_error(rt, u, st, "UpdateFailed", "cannot update the user");
        stale_add(key, iamx_meta(u, "resourceVersion"));
        json_decref(u);
        *up = u = out;
    } else {
        json_decref(obj);
    }
    if (why[0] != '\0')
        return hash_failed(rt, key, u, why);
    return sync_status(rt, key, u);
nomem:
    free(role);
    json_decref(obj);
    ks_warn("user %s: out of memory", name);
    return ks_workqueue_retry();
}

/* ---- delete: the cascade ---- */

static int names_user(const json_t *subjects, const char *user)
{
    size_t i;
    json_t *s;

    json_array_foreach(subjects, i, s) {
        const char *kind = json_string_value(json_object_get(s, "kind"));
        const char *n = json_string_value(json_object_get(s, "name"));
        if (kind != NULL && n != NULL && strcmp(kind, "User") == 0 && strcmp(n, user) == 0)
            return 1;
    }
    return 0;
}

/* Release one binding (or GroupBinding, field "users") from user: delete
 * it when it is the user's own (labelled user-ref=<user>) or names nobody
 * else, else write it back without the user. */
static ks_status release(rec_runtime *rt, const char *resource, const char *ns, const char *name,
                         const char *user)
{
    int gb = strcmp(resource, IAMX_RES_GROUPBINDINGS) == 0;
    json_t *obj = NULL, *list, *kept = NULL;
    const char *label;
    size_t i;
    json_t *v;
    ks_status st = rec_get(rt, resource, ns, name, &obj);

    if (st == KS_ERR_NOT_FOUND)
        return KS_OK;
    if (st)
        return st;
    label = iamx_label(obj, IAMX_LABEL_USER_REF);
    list = json_object_get(obj, gb ? "users" : "subjects");
    kept = json_array();
    if (kept == NULL) {
        json_decref(obj);
        return KS_FAIL(KS_ERR_NOMEM, "subjects");
    }
    json_array_foreach(list, i, v) {
        int is_user;
        if (gb) {
            is_user = json_is_string(v) && strcmp(json_string_value(v), user) == 0;
        } else {
            const char *kind = json_string_value(json_object_get(v, "kind"));
            const char *n = json_string_value(json_object_get(v, "name"));
            is_user = kind != NULL && n != NULL && strcmp(kind, "User") == 0 &&
                      strcmp(n, user) == 0;
        }
        if (!is_user && json_array_append(kept, v) != 0) {
            json_decref(kept);
            json_decref(obj);
            return KS_FAIL(KS_ERR_NOMEM, "subjects");
        }
    }
    if ((label != NULL && strcmp(label, user) == 0) || json_array_size(kept) == 0) {
        st = iamx_delete(rt, CTL, resource, ns, name, iamx_meta(obj, "uid"),
                         iamx_meta(obj, "resourceVersion"));
    } else if (json_array_size(kept) != json_array_size(list)) {
        json_object_set(obj, gb ? "users" : "subjects", kept);
        st = iamx_update(rt, CTL, resource, obj, 0, NULL);
    } else {
        st = KS_OK;   /* the label or a subject changed meanwhile: nothing of the user's */
    }
    json_decref(kept);
    json_decref(obj);
    return st;
}

typedef struct {
    const char *user;
    char (*found)[2][IAMX_NAME_MAX];
    size_t n, cap;
    int nomem;
} scan_ctx;

static int scan_binding(const json_t *obj, void *arg)
{
    scan_ctx *c = arg;
    const char *label = iamx_label(obj, IAMX_LABEL_USER_REF);

    if (!((label != NULL && strcmp(label, c->user) == 0) ||
          names_user(json_object_get(obj, "subjects"), c->user)))
        return 0;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        void *nf = realloc(c->found, cap * sizeof(*c->found));
        if (nf == NULL) {
            c->nomem = 1;
            return 1;
        }
        c->found = nf;
        c->cap = cap;
    }
    snprintf(c->found[c->n][0], IAMX_NAME_MAX, "%s", iamx_meta(obj, "namespace"));
    snprintf(c->found[c->n][1], IAMX_NAME_MAX, "%s", iamx_meta(obj, "name"));
    c->n++;
    return 0;
}

static ks_status cascade(rec_runtime *rt, const char *user)
{
    static const char *const scanned[] = {IAMX_RES_WORKSPACEROLEBINDINGS,
                                          IAMX_RES_CLUSTERROLEBINDINGS, IAMX_RES_ROLEBINDINGS};
    iamx_item *items = NULL;
    ks_status st = KS_OK;
    long n;

    /* login records */
    n = iamx_index_user(rt, IAMX_IDX_LR, user, &items);
    if (n < 0)
        return KS_FAIL(KS_ERR_NOMEM, "login records of %s", user);
    for (long i = 0; i < n && st == KS_OK; i++)
        st = iamx_delete(rt, CTL, IAMX_RES_LOGINRECORDS, "", items[i].name, items[i].uid,
                         items[i].rv);
    free(items);
    if (st)
        return st;
    /* GlobalRoleBindings (indexed) */
    n = iamx_index_user(rt, IAMX_IDX_GRB, user, &items);
    if (n < 0)
        return KS_FAIL(KS_ERR_NOMEM, "bindings of %s", user);
    for (long i = 0; i < n && st == KS_OK; i++)
        st = release(rt, IAMX_RES_GLOBALROLEBINDINGS, "", items[i].name, user);
    free(items);
    if (st)
        return st;
    /* GroupBindings (indexed) */
    n = iamx_index_user(rt, IAMX_IDX_GB, user, &items);
    if (n < 0)
        return KS_FAIL(KS_ERR_NOMEM, "group bindings of %s", user);
    for (long i = 0; i < n && st == KS_OK; i++)
        st = release(rt, IAMX_RES_GROUPBINDINGS, "", items[i].name, user);
    free(items);
    if (st)
        return st;
    /* the other bindings: a delete is rare, a scan is fine */
    for (size_t k = 0; k < sizeof(scanned) / sizeof(scanned[0]) && st == KS_OK; k++) {
        scan_ctx c = {.user = user};
        rec_each(rt, scanned[k], scan_binding, &c);
        if (c.nomem)
            st = KS_FAIL(KS_ERR_NOMEM, "bindings of %s", user);
        for (size_t i = 0; i < c.n && st == KS_OK; i++)
            st = release(rt, scanned[k], c.found[i][0], c.found[i][1], user);
        free(c.found);
    }
    return st;
}

static ks_workqueue_result finalize_user(rec_runtime *rt, const char *key, const json_t *u)
{
    const char *name = iamx_meta(u, "name");
    json_t *obj;
    ks_status st;

    if (!iamx_has_finalizer(u, FINALIZER))
        return ks_workqueue_ok();
    st = cascade(rt, name);
    if (st)
        return retry_after_error(rt, u, st, "CascadeFailed",
                                 "cannot remove the login records and bindings of the user");
    st = revoke_user(rt, name, iamx_now_ms() / 1000);
    if (st)
        return retry_after_error(rt, u, st, "RevocationFailed", "cannot revoke the user's tokens");
    obj = json_deep_copy(u);
    if (obj == NULL)
        return ks_workqueue_retry();
    iamx_remove_finalizer(obj, FINALIZER);
    st = iamx_update(rt, CTL, IAMX_RES_USERS, obj, 0, NULL);
    json_decref(obj);
    if (st)
        return retry_after_error(rt, u, st, "UpdateFailed", "cannot remove the finalizer");
    stale_add(key, iamx_meta(u, "resourceVersion"));
    ks_info("user %s: deleted with its login records, bindings and tokens", name);
    return ks_workqueue_ok();
}

/* ---- the controller ---- */

/* The stores a reconcile decides from (the cascade reads all the bindings). */
static const char *const user_reads[] = {
    IAMX_RES_USERS, IAMX_RES_LOGINRECORDS, IAMX_RES_GLOBALROLEBINDINGS,
    IAMX_RES_WORKSPACEROLEBINDINGS, IAMX_RES_CLUSTERROLEBINDINGS, IAMX_RES_ROLEBINDINGS,
    IAMX_RES_GROUPBINDINGS, NULL};

static ks_workqueue_result user_reconcile(rec_runtime *rt, const char *key)
{
    char ns[IAMX_NAME_MAX], name[IAMX_NAME_MAX];
    json_t *u = NULL;
    ks_workqueue_result res;
    ks_status st;

    iamx_reconcile_begin();
    if (iamx_split_key(key, ns, name) != KS_OK) {
        ks_warn("user controller: ignoring the key %.100s: %s", key, ks_status_last());
        return ks_workqueue_ok();
    }
    if (!iamx_synced(rt, user_reads))
        return ks_workqueue_retry();
    st = rec_get(rt, IAMX_RES_USERS, "", name, &u);
    if (st == KS_ERR_NOT_FOUND) {
        stale_forget(key);
        return ks_workqueue_ok();
    }
    if (st)
        return ks_workqueue_retry();
    if (stale_hit(key, iamx_meta(u, "resourceVersion"))) {
        json_decref(u);
        return ks_workqueue_ok();
    }
    if (iamx_deleting(u))
        res = finalize_user(rt, key, u);
    else
        res = sync_user(rt, key, &u);
    json_decref(u);
    return res;
}

static void queue_user(rec_runtime *rt, const char *user, const iamx_item *now, void *arg)
{
    char key[IAMX_KEY_MAX];

    /* login records: only a failure can lock a user out */
    if (arg != NULL && (now == NULL || now->success))
        return;
    snprintf(key, sizeof(key), "/%s", user);
    rec_enqueue(rt, CTL, key);
}

static void user_map(rec_runtime *rt, const char *resource, const ks_reflect_event *ev)
{
    static int failures_only = 1;

    if (strcmp(resource, IAMX_RES_LOGINRECORDS) == 0)
        iamx_index_event(rt, IAMX_IDX_LR, ev, queue_user, &failures_only);
    else if (strcmp(resource, IAMX_RES_GLOBALROLEBINDINGS) == 0)
        iamx_index_event(rt, IAMX_IDX_GRB, ev, queue_user, NULL);
}

static const char *const user_also_watch[] = {IAMX_RES_LOGINRECORDS,
                                              IAMX_RES_GLOBALROLEBINDINGS, NULL};

/* Hashing blocks a worker for the whole bcrypt cost: a few workers keep
 * every core busy during a burst of new users. */
const rec_controller rec_controller_user = {
    .name = CTL,
    .primary = IAMX_RES_USERS,
    .also_watch = user_also_watch,
    .map = user_map,
    .reconcile = user_reconcile,
    .workers = 4,
};
