/* users.c: the Users API of iam.kubesphere.io/v1beta1 (docs/iam.md "Users").
 *
 * Reads come from the mirror after a read barrier (ks_mirror_cache_barrier:
 * every change the bucket held when the read started is applied), so a
 * client that wrote through another replica reads its write; when the
 * barrier cannot be passed in time the read goes to kube-apiserver. Writes
 * go to kube-apiserver, and the answer waits until this replica's mirror
 * shows the written resourceVersion (iam_wait_visible).
 *
 * Secrets: spec.password is stripped from every answer (iam_user_public); a
 * new password is checked against the policy and hashed on the password
 * pool before the User is written; kube-apiserver's error messages are
 * scrubbed of the plain text and the hash before they are passed on; the
 * request body that held a plain password is wiped once parsed.
 *
 * Bad input gets a precise Status and writes nothing: unknown fields
 * (strict, like kube-apiserver's fieldValidation=Strict) and values of the
 * wrong JSON type are 400 BadRequest naming the field; a name that is not a
 * DNS-1123 subdomain, a bad email, a password outside the policy are 422
 * Invalid; a taken name 409 AlreadyExists (from kube-apiserver), a taken
 * email 409 AlreadyExists, a stale resourceVersion 409 Conflict. */
#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "iam.h"
#include "log.h"
#include "metrics.h"

#define USERS_PATH IAM_KUBE_PREFIX "/users"
#define ANN_PWD_CHANGE "iam.kubesphere.io/last-password-change-time"
#define LR_USER_LABEL "iam.kubesphere.io/user-ref"
#define HASH_WAIT_MS 30000
#define SEL_MAX 16
#define SEL_VALUES 16
#define SEL_KEY_MAX 320
#define SEL_VAL_MAX 256

/* ---- small helpers shared with the other parts (iam.h) ---- */

int64_t iam_now_unix(void)
{
    return (int64_t)time(NULL);
}

int64_t iam_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void iam_time_format(int64_t unix_s, char out[32])
{
    time_t t = (time_t)unix_s;
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

ks_status iam_time_parse(const char *s, int64_t *unix_s)
{
    struct tm tm;
    const char *p;
    int64_t t, off = 0;

    memset(&tm, 0, sizeof(tm));
    if (s == NULL || (p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)) == NULL)
        return KS_FAIL(KS_ERR_INVALID, "not an RFC 3339 time");
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return KS_FAIL(KS_ERR_INVALID, "not an RFC 3339 time");
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if ((*p == '+' || *p == '-') && isdigit((unsigned char)p[1]) &&
               isdigit((unsigned char)p[2]) && p[3] == ':' && isdigit((unsigned char)p[4]) &&
               isdigit((unsigned char)p[5])) {
        off = ((p[1] - '0') * 10 + (p[2] - '0')) * 3600 + ((p[4] - '0') * 10 + (p[5] - '0')) * 60;
        if (*p == '-')
            off = -off;
        p += 6;
    } else {
        return KS_FAIL(KS_ERR_INVALID, "not an RFC 3339 time");
    }
    if (*p != '\0')
        return KS_FAIL(KS_ERR_INVALID, "not an RFC 3339 time");
    t = (int64_t)timegm(&tm);
    *unix_s = t - off;
    return KS_OK;
}

/* 1 when the Content-Type ct is exactly the media type mt (parameters
 * after ';' allowed): "application/json-patch+json" is not JSON. */
int iam_media_type_is(const char *ct, const char *mt)
{
    size_t n = strlen(mt);

    while (*ct == ' ')
        ct++;
    if (strncasecmp(ct, mt, n) != 0)
        return 0;
    ct += n;
    while (*ct == ' ')
        ct++;
    return *ct == '\0' || *ct == ';';
}

json_t *iam_user_public(const json_t *user)
{
    json_t *copy = json_deep_copy(user);

    if (copy != NULL)
        json_object_del(json_object_get(copy, "spec"), "password");
    return copy;
}

const char *iam_user_state(const json_t *user)
{
    const char *st = json_string_value(json_object_get(json_object_get(user, "status"), "state"));
    return st ? st : "";
}

size_t iam_user_groups(const json_t *user, const char **groups, size_t cap)
{
    const json_t *arr = json_object_get(json_object_get(user, "spec"), "groups");
    size_t n = 0, i;
    json_t *g;

    json_array_foreach(arr, i, g) {
        if (n < cap && json_is_string(g) && json_string_length(g) > 0)
            groups[n++] = json_string_value(g);
    }
    return n;
}

static const char *obj_name(const json_t *o)
{
    const char *n = json_string_value(json_object_get(json_object_get(o, "metadata"), "name"));
    return n ? n : "";
}

static const char *obj_rv(const json_t *o)
{
    const char *rv =
        json_string_value(json_object_get(json_object_get(o, "metadata"), "resourceVersion"));
    return rv ? rv : "";
}

static const char *user_email(const json_t *u)
{
    const char *e = json_string_value(json_object_get(json_object_get(u, "spec"), "email"));
    return e ? e : "";
}

/* ---- finding users ---- */

typedef struct {
    const char *email;
    json_t *found;
    int matches;
    const char *except; /* a name to skip */
} email_ctx;

static int match_email(const ks_mirror_item *item, void *arg)
{
    email_ctx *c = arg;
    const char *e = user_email(item->object);

    if (e[0] == '\0' || strcasecmp(e, c->email) != 0)
        return 0;
    if (c->except != NULL && strcmp(item->name, c->except) == 0)
        return 0;
    if (c->matches++ == 0)
        c->found = json_incref((json_t *)item->object);
    return 0;
}

ks_status iam_user_find(iam *s, const char *name_or_email, json_t **user)
{
    email_ctx c = {.email = name_or_email};

    if (name_or_email == NULL || name_or_email[0] == '\0')
        return KS_FAIL(KS_ERR_NOT_FOUND, "no user name");
    if (ks_mirror_cache_get(s->mirror, IAM_RES_USERS, "", name_or_email, user, NULL) == KS_OK)
        return KS_OK;
    if (strchr(name_or_email, '@') == NULL)
        return KS_FAIL(KS_ERR_NOT_FOUND, "no such user");
    ks_mirror_cache_foreach(s->mirror, IAM_RES_USERS, NULL, match_email, &c);
    if (c.matches == 1) {
        *user = c.found;
        return KS_OK;
    }
    json_decref(c.found);
    if (c.matches > 1)
        ks_warn("%d users share one email address; a login by that email is refused",
                c.matches);
    return KS_FAIL(KS_ERR_NOT_FOUND, "no such user");
}

/* ---- answering ---- */

/* Replace every occurrence of each secret in msg by "[redacted]". */
static void redact(char *msg, size_t cap, const char *const *secrets)
{
    for (size_t i = 0; secrets != NULL && secrets[i] != NULL; i++) {
        const char *sec = secrets[i];
        size_t sl = strlen(sec);
        char *hit;

        if (sl < 4)
            continue;
        while ((hit = strstr(msg, sec)) != NULL) {
            static const char rep[] = "[redacted]";
            size_t tail = strlen(hit + sl);
            if ((size_t)(hit - msg) + sizeof(rep) - 1 + tail + 1 > cap)
                break;
            memmove(hit + sizeof(rep) - 1, hit + sl, tail + 1);
            memcpy(hit, rep, sizeof(rep) - 1);
        }
        if (strstr(msg, sec) != NULL)
            snprintf(msg, cap, "the request was refused (message withheld: it held a secret)");
    }
}

/* A kube-apiserver request; 2xx: *out (if out) is the parsed body. Anything
 * else fills resp with kube-apiserver's own code, reason and message (with
 * the secrets scrubbed), or 503/504 when it did not answer. */
static ks_status kube_call(iam *s, const char *method, const char *path, const json_t *body,
                           const char *content_type, json_t **out, ks_api_response *resp,
                           const char *const *secrets)
{
    ks_kube_response kr;
    char *text = NULL;
    ks_status st;

    if (body != NULL && (text = json_dumps(body, JSON_COMPACT)) == NULL) {
        ks_api_status(resp, 500, "InternalError", "out of memory");
        return KS_FAIL(KS_ERR_NOMEM, "request body");
    }
    st = ks_kube_request(s->kube, method, path, text, content_type, 0, &kr);
    if (text != NULL) {
        explicit_bzero(text, strlen(text));
        free(text);
    }
    if (st == KS_OK) {
        json_error_t err;
        json_t *o = kr.body ? json_loadb(kr.body, kr.body_len, 0, &err) : json_object();
        ks_kube_response_clear(&kr);
        if (o == NULL) {
            ks_api_status(resp, 502, "InternalError", "kube-apiserver answered with bad JSON");
            return KS_FAIL(KS_ERR_PROTOCOL, "bad JSON from kube-apiserver");
        }
        if (out)
            *out = o;
        else
            json_decref(o);
        return KS_OK;
    }
    if (kr.http_code > 0) {
        char msg[KS_KUBE_MESSAGE_MAX + 16];
        long code = kr.status.code >= 400 && kr.status.code < 600 ? kr.status.code : kr.http_code;
        const char *reason = kr.status.reason[0] ? kr.status.reason : ks_kube_reason_for_code(code);

        snprintf(msg, sizeof(msg), "%s", kr.status.message[0] ? kr.status.message : "error");
        redact(msg, sizeof(msg), secrets);
        if (code >= 500) {
            ks_warn("kube-apiserver: %s %s: %ld %s", method, path, code, msg);
            ks_api_status(resp, 503, "ServiceUnavailable", "kube-apiserver: %s", msg);
        } else {
            ks_api_status(resp, (int)code, reason[0] ? reason : "BadRequest", "%s", msg);
        }
        if (code == 429 && kr.retry_after_s > 0)
            snprintf(resp->retry_after, sizeof(resp->retry_after), "%d",
                     (int)(kr.retry_after_s > 3600 ? 3600 : kr.retry_after_s));
    } else if (st == KS_ERR_TIMEOUT) {
        ks_api_status(resp, 504, "Timeout", "kube-apiserver did not answer in time");
    } else {
        ks_warn("kube-apiserver: %s %s: %s", method, path, ks_status_last());
        ks_api_status(resp, 503, "ServiceUnavailable", "kube-apiserver is unavailable");
    }
    ks_kube_response_clear(&kr);
    return st;
}

static void answer_user(ks_api_response *resp, int code, const json_t *user)
{
    json_t *pub = iam_user_public(user);

    if (pub == NULL) {
        ks_api_status(resp, 500, "InternalError", "out of memory");
        return;
    }
    ks_api_json(resp, code, pub);
    json_decref(pub);
}

/* Read barriers are shared: a reader needs a barrier that started after it
 * arrived, and one barrier serves every reader that arrived before it began.
 * So concurrent reads cost one or two JetStream requests in a row, not one
 * each. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t started, done; /* barriers begun / finished, numbered from 1 */
    int in_flight;
    ks_status last;
} RB = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

/* Read-your-writes before a read: KS_OK when the mirror is current. */
static ks_status read_barrier(iam *s)
{
    int ms = s->cfg->read_wait_ms > 0 ? (int)s->cfg->read_wait_ms : 1;
    uint64_t need;
    ks_status st;

    pthread_mutex_lock(&RB.mu);
    need = RB.started + (RB.in_flight ? 2 : 1);
    while (RB.done < need) {
        if (!RB.in_flight) {
            uint64_t mine = ++RB.started;
            RB.in_flight = 1;
            pthread_mutex_unlock(&RB.mu);
            st = ks_mirror_cache_barrier(s->mirror, ms);
            pthread_mutex_lock(&RB.mu);
            RB.in_flight = 0;
            RB.done = mine;
            RB.last = st;
            pthread_cond_broadcast(&RB.cv);
        } else {
            pthread_cond_wait(&RB.cv, &RB.mu);
        }
    }
    st = RB.last;
    pthread_mutex_unlock(&RB.mu);
    if (st)
        ks_metric_inc(ks_metrics_counter("ks_iam_read_through_total",
                                         "reads served by kube-apiserver: the mirror was behind",
                                         NULL));
    return st;
}

/* After a write: wait until this replica's mirror shows it. */
static void wait_written(iam *s, const char *name, const char *rv)
{
    if (iam_wait_visible(s, IAM_RES_USERS, "", name, rv) != KS_OK)
        ks_warn("user %s: written, but the mirror did not show it in time: %s", name,
                ks_status_last());
}

/* Wipe the request body: it may hold a plain-text password. */
static void wipe_body(ks_api_call *call)
{
    if (call->req->body.data != NULL && call->req->body.len > 0)
        explicit_bzero(call->req->body.data, call->req->body.len);
}

/* Wipe the string at obj.key (it held a password) before the JSON goes. */
static void wipe_string(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);

    if (json_is_string(v) && json_string_length(v) > 0)
        explicit_bzero((char *)json_string_value(v), json_string_length(v));
}

/* ---- validation ---- */

typedef enum { F_STR, F_INT, F_BOOL, F_STRS, F_MAP, F_ARR, F_OBJ, F_TIME, F_ANY } ftype;

typedef struct field {
    const char *name;
    ftype type;
    const struct field *sub; /* F_OBJ */
} field;

static const field meta_fields[] = {
    {"name", F_STR, NULL},
    {"generateName", F_STR, NULL},
    {"namespace", F_STR, NULL},
    {"selfLink", F_STR, NULL},
    {"uid", F_STR, NULL},
    {"resourceVersion", F_STR, NULL},
    {"generation", F_INT, NULL},
    {"creationTimestamp", F_TIME, NULL},
    {"deletionTimestamp", F_TIME, NULL},
    {"deletionGracePeriodSeconds", F_INT, NULL},
    {"labels", F_MAP, NULL},
    {"annotations", F_MAP, NULL},
    {"ownerReferences", F_ARR, NULL},
    {"finalizers", F_STRS, NULL},
    {"managedFields", F_ARR, NULL},
    {NULL, F_ANY, NULL},
};

static const field spec_fields[] = {
    {"email", F_STR, NULL},
    {"lang", F_STR, NULL},
    {"description", F_STR, NULL},
    {"displayName", F_STR, NULL},
    {"groups", F_STRS, NULL},
    {"password", F_STR, NULL},
    {NULL, F_ANY, NULL},
};

static const field status_fields[] = {
    {"state", F_STR, NULL},
    {"reason", F_STR, NULL},
    {"lastTransitionTime", F_TIME, NULL},
    {"lastLoginTime", F_TIME, NULL},
    {NULL, F_ANY, NULL},
};

static const field user_fields[] = {
    {"apiVersion", F_STR, NULL},
    {"kind", F_STR, NULL},
    {"metadata", F_OBJ, meta_fields},
    {"spec", F_OBJ, spec_fields},
    {"status", F_OBJ, status_fields},
    {NULL, F_ANY, NULL},
};

static const field password_fields[] = {
    {"currentPassword", F_STR, NULL},
    {"password", F_STR, NULL},
    {NULL, F_ANY, NULL},
};

static const char *ftype_name(ftype t)
{
    switch (t) {
    case F_STR: return "a string";
    case F_INT: return "an integer";
    case F_BOOL: return "a boolean";
    case F_STRS: return "an array of strings";
    case F_MAP: return "an object of strings";
    case F_ARR: return "an array";
    case F_OBJ: return "an object";
    case F_TIME: return "a string (RFC 3339 time) or null";
    default: return "a value";
    }
}

static int type_ok(const json_t *v, ftype t)
{
    const char *k;
    size_t i;
    json_t *e;

    switch (t) {
    case F_STR: return json_is_string(v);
    case F_INT: return json_is_integer(v);
    case F_BOOL: return json_is_boolean(v);
    case F_ARR: return json_is_array(v);
    case F_OBJ: return json_is_object(v);
    case F_TIME: return json_is_string(v) || json_is_null(v);
    case F_STRS:
        if (!json_is_array(v))
            return 0;
        json_array_foreach(v, i, e) if (!json_is_string(e)) return 0;
        return 1;
    case F_MAP:
        if (!json_is_object(v))
            return 0;
        json_object_foreach((json_t *)v, k, e) if (!json_is_string(e)) return 0;
        return 1;
    default: return 1;
    }
}

/* Strict decoding: every member is known and of its type. merge: a merge
 * patch, where null deletes a member. 0 with resp filled on the first bad
 * member. */
static int check_fields(const json_t *obj, const field *fields, const char *prefix, int merge,
                        ks_api_response *resp)
{
    const char *key;
    json_t *v;

    json_object_foreach((json_t *)obj, key, v) {
        const field *f = fields;
        char path[512];

        snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "", key);
        while (f->name != NULL && strcmp(f->name, key) != 0)
            f++;
        if (f->name == NULL) {
            ks_api_status(resp, 400, "BadRequest", "strict decoding error: unknown field \"%s\"",
                          path);
            return 0;
        }
        if (merge && json_is_null(v))
            continue;
        if (!type_ok(v, f->type)) {
            ks_api_status(resp, 400, "BadRequest", "%s: must be %s", path, ftype_name(f->type));
            return 0;
        }
        if (f->type == F_OBJ && !check_fields(v, f->sub, path, merge, resp))
            return 0;
    }
    return 1;
}

/* RFC 1123 subdomain, as Kubernetes' IsDNS1123Subdomain. */
static int dns_subdomain(const char *s)
{
    size_t n = strlen(s);
    int label_start = 1;

    if (n == 0 || n > 253)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (c == '.') {
            if (label_start || s[i - 1] == '-')
                return 0;
            label_start = 1;
            continue;
        }
        if (!alnum && c != '-')
            return 0;
        if (label_start && !alnum)
            return 0;
        label_start = 0;
    }
    return !label_start && s[n - 1] != '-';
}

/* A plausible address: local@domain, no spaces or controls, a dot in the
 * domain part. */
static int email_ok(const char *e)
{
    const char *at = strchr(e, '@');
    size_t n = strlen(e);

    if (n < 3 || n > 254 || at == NULL || at == e || strchr(at + 1, '@') != NULL ||
        at[1] == '\0' || at[1] == '.' || e[n - 1] == '.')
        return 0;
    for (const char *p = e; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '<' || *p == '>' || *p == ',' ||
            *p == ';' || *p == '"')
            return 0;
    return 1;
}

static int state_settable(const char *st)
{
    return strcmp(st, "Active") == 0 || strcmp(st, "Disabled") == 0;
}

/* Checks of a whole User (create and update). 0 with resp filled. */
static int check_user(iam *s, const json_t *u, const char *url_name, ks_api_response *resp)
{
    const json_t *meta = json_object_get(u, "metadata");
    const json_t *spec = json_object_get(u, "spec");
    const char *av = json_string_value(json_object_get(u, "apiVersion"));
    const char *kind = json_string_value(json_object_get(u, "kind"));
    const char *name = json_string_value(json_object_get(meta, "name"));
    const char *ns = json_string_value(json_object_get(meta, "namespace"));
    const char *email = json_string_value(json_object_get(spec, "email"));
    const char *state = json_string_value(json_object_get(json_object_get(u, "status"), "state"));
    json_t *g;
    size_t i;

    if (av != NULL && strcmp(av, IAM_GROUP "/" IAM_VERSION) != 0) {
        ks_api_status(resp, 400, "BadRequest", "apiVersion must be %s/%s, not %.64s", IAM_GROUP,
                      IAM_VERSION, av);
        return 0;
    }
    if (kind != NULL && strcmp(kind, "User") != 0) {
        ks_api_status(resp, 400, "BadRequest", "kind must be User, not %.64s", kind);
        return 0;
    }
    if (url_name != NULL && name != NULL && strcmp(name, url_name) != 0) {
        ks_api_status(resp, 400, "BadRequest",
                      "the name of the object (%.253s) does not match the name on the URL "
                      "(%.253s)",
                      name, url_name);
        return 0;
    }
    if (name == NULL || name[0] == '\0') {
        ks_api_status(resp, 422, "Invalid", "User is invalid: metadata.name: Required value");
        return 0;
    }
    if (!dns_subdomain(name)) {
        ks_api_status(resp, 422, "Invalid",
                      "User \"%.253s\" is invalid: metadata.name: Invalid value: a lowercase RFC "
                      "1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                      "'.', and must start and end with an alphanumeric character",
                      name);
        return 0;
    }
    if (ns != NULL && ns[0] != '\0') {
        ks_api_status(resp, 422, "Invalid",
                      "User \"%s\" is invalid: metadata.namespace: users are cluster-scoped",
                      name);
        return 0;
    }
    if (!json_is_object(spec) || email == NULL || email[0] == '\0') {
        ks_api_status(resp, 422, "Invalid", "User \"%s\" is invalid: spec.email: Required value",
                      name);
        return 0;
    }
    if (!email_ok(email)) {
        ks_api_status(resp, 422, "Invalid",
                      "User \"%s\" is invalid: spec.email: Invalid value: \"%.254s\": not an "
                      "email address",
                      name, email);
        return 0;
    }
    json_array_foreach(json_object_get(spec, "groups"), i, g) {
        if (json_string_length(g) == 0) {
            ks_api_status(resp, 422, "Invalid",
                          "User \"%s\" is invalid: spec.groups[%zu]: Required value", name, i);
            return 0;
        }
    }
    if (state != NULL && state[0] != '\0' && strcmp(state, "Active") != 0 &&
        strcmp(state, "Disabled") != 0 && strcmp(state, "AuthLimitExceeded") != 0) {
        ks_api_status(resp, 422, "Invalid",
                      "User \"%s\" is invalid: status.state: Unsupported value: \"%.64s\": "
                      "supported values: \"Active\", \"Disabled\", \"AuthLimitExceeded\"",
                      name, state);
        return 0;
    }
    (void)s;
    return 1;
}

/* 409 when another user has this email. Best effort across replicas: two
 * concurrent creates with one email can both pass. */
static int email_free(iam *s, const char *email, const char *name, ks_api_response *resp)
{
    email_ctx c = {.email = email, .except = name};

    ks_mirror_cache_foreach(s->mirror, IAM_RES_USERS, NULL, match_email, &c);
    json_decref(c.found);
    if (c.matches > 0) {
        ks_api_status(resp, 409, "AlreadyExists", "a user with the email %.254s already exists",
                      email);
        return 0;
    }
    return 1;
}

/* Policy check, then hash on the pool. On success *hash (caller frees). */
static int hash_password(iam *s, const char *plain, char **hash, ks_api_response *resp)
{
    char why[256];
    ks_status st;

    if (ks_password_policy_check(plain, why, sizeof(why)) != KS_OK) {
        ks_api_status(resp, 422, "Invalid", "spec.password: Invalid value: %s", why);
        return 0;
    }
    st = ks_password_pool_hash_wait(s->passwords, plain, (int)s->cfg->bcrypt_cost, HASH_WAIT_MS,
                                    hash);
    if (st == KS_ERR_UNAVAILABLE || st == KS_ERR_TIMEOUT) {
        ks_api_status(resp, 429, "TooManyRequests",
                      "too many password operations in progress; retry later");
        snprintf(resp->retry_after, sizeof(resp->retry_after), "%u",
                 ks_password_pool_retry_after_s(s->passwords));
        return 0;
    }
    if (st) {
        ks_error("cannot hash a password: %s", ks_status_last());
        ks_api_status(resp, 500, "InternalError", "cannot hash the password");
        return 0;
    }
    return 1;
}

static void set_annotation(json_t *obj, const char *key, const char *value)
{
    json_t *meta = json_object_get(obj, "metadata");
    json_t *ann;

    if (!json_is_object(meta)) {
        meta = json_object();
        json_object_set_new(obj, "metadata", meta);
    }
    ann = json_object_get(meta, "annotations");
    if (!json_is_object(ann)) {
        ann = json_object();
        json_object_set_new(meta, "annotations", ann);
    }
    json_object_set_new(ann, key, json_string(value));
}

static void user_path(const char *name, const char *sub, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s%s%s", USERS_PATH, name, sub ? "/" : "", sub ? sub : "");
}

/* ---- list queries ---- */

typedef enum { SEL_EQ, SEL_NE, SEL_EXISTS, SEL_NOT_EXISTS, SEL_IN, SEL_NOT_IN } sel_op;

typedef struct {
    char key[SEL_KEY_MAX];
    sel_op op;
    char values[SEL_VALUES][SEL_VAL_MAX];
    size_t nvalues;
} sel_req;

typedef struct {
    sel_req reqs[SEL_MAX];
    size_t n;
} selector;

static void trim(char *s)
{
    size_t n = strlen(s), i = 0;

    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    while (isspace((unsigned char)s[i]))
        i++;
    memmove(s, s + i, n - i + 1);
}

static int copy_tok(char *out, size_t cap, const char *s, size_t n)
{
    if (n + 1 > cap)
        return 0;
    memcpy(out, s, n);
    out[n] = '\0';
    trim(out);
    return out[0] != '\0';
}

/* One term of a label selector (or, labels == 0, of a field selector). */
static int parse_term(const char *t, int labels, sel_req *r)
{
    const char *p;

    memset(r, 0, sizeof(*r));
    if (labels && t[0] == '!') {
        r->op = SEL_NOT_EXISTS;
        return copy_tok(r->key, sizeof(r->key), t + 1, strlen(t + 1));
    }
    if ((p = strstr(t, "!=")) != NULL) {
        r->op = SEL_NE;
    } else if ((p = strstr(t, "==")) != NULL) {
        r->op = SEL_EQ;
    } else if ((p = strchr(t, '=')) != NULL) {
        r->op = SEL_EQ;
    } else if (labels) {
        const char *in = strstr(t, " in ");
        const char *notin = strstr(t, " notin ");
        const char *open = strchr(t, '('), *close = strrchr(t, ')');
        const char *v;

        if ((in == NULL && notin == NULL) || open == NULL || close == NULL || close < open ||
            close[1] != '\0') {
            r->op = SEL_EXISTS;
            if (strpbrk(t, " ()<>") != NULL)
                return 0;
            return copy_tok(r->key, sizeof(r->key), t, strlen(t));
        }
        r->op = notin ? SEL_NOT_IN : SEL_IN;
        if (!copy_tok(r->key, sizeof(r->key), t, (size_t)((notin ? notin : in) - t)))
            return 0;
        v = open + 1;
        while (v <= close) {
            const char *e = memchr(v, ',', (size_t)(close - v));
            size_t n = e ? (size_t)(e - v) : (size_t)(close - v);
            if (r->nvalues == SEL_VALUES || n + 1 > SEL_VAL_MAX)
                return 0;
            memcpy(r->values[r->nvalues], v, n);
            r->values[r->nvalues][n] = '\0';
            trim(r->values[r->nvalues]);
            r->nvalues++;
            v += n + 1;
        }
        return 1;
    } else {
        return 0;
    }
    if (!copy_tok(r->key, sizeof(r->key), t, (size_t)(p - t)))
        return 0;
    p += (r->op == SEL_NE || p[1] == '=') ? 2 : 1;
    if (strlen(p) + 1 > SEL_VAL_MAX)
        return 0;
    snprintf(r->values[0], SEL_VAL_MAX, "%s", p);
    trim(r->values[0]);
    r->nvalues = 1;
    return 1;
}

/* Split at commas outside parentheses. 0 on a bad selector. */
static int parse_selector(const char *text, int labels, selector *sel)
{
    char term[1024];
    const char *p = text;
    int depth = 0;
    size_t start = 0, i;

    sel->n = 0;
    for (i = 0;; i++) {
        char c = p[i];
        if (c == '(')
            depth++;
        else if (c == ')')
            depth--;
        if ((c == ',' && depth == 0) || c == '\0') {
            size_t n = i - start;
            if (n + 1 > sizeof(term) || sel->n == SEL_MAX)
                return 0;
            memcpy(term, p + start, n);
            term[n] = '\0';
            trim(term);
            if (term[0] != '\0' && !parse_term(term, labels, &sel->reqs[sel->n++]))
                return 0;
            start = i + 1;
        }
        if (c == '\0')
            break;
    }
    return depth == 0;
}

static int req_matches(const sel_req *r, const char *value /* NULL: absent */)
{
    switch (r->op) {
    case SEL_EXISTS: return value != NULL;
    case SEL_NOT_EXISTS: return value == NULL;
    case SEL_EQ: return value != NULL && strcmp(value, r->values[0]) == 0;
    case SEL_NE: return value == NULL || strcmp(value, r->values[0]) != 0;
    case SEL_IN:
    case SEL_NOT_IN: {
        int in = 0;
        for (size_t i = 0; value != NULL && i < r->nvalues; i++)
            if (strcmp(value, r->values[i]) == 0)
                in = 1;
        return r->op == SEL_IN ? in : !in;
    }
    }
    return 0;
}

static const char *field_value(const json_t *o, const char *f)
{
    if (strcmp(f, "metadata.name") == 0)
        return obj_name(o);
    if (strcmp(f, "status.state") == 0)
        return iam_user_state(o);
    if (strcmp(f, "spec.email") == 0)
        return user_email(o);
    if (strcmp(f, "metadata.namespace") == 0)
        return "";
    return NULL;
}

static int field_supported(const char *f)
{
    return strcmp(f, "metadata.name") == 0 || strcmp(f, "status.state") == 0 ||
           strcmp(f, "spec.email") == 0 || strcmp(f, "metadata.namespace") == 0;
}

typedef struct {
    char name[256];
    int has_name;
    selector labels;
    selector fields;
    int by_name;     /* sortBy=name, else createTime */
    int ascending;
    long page;       /* 1-based */
    long limit;      /* -1: all */
} list_query;

static int parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v;

    if (s[0] == '\0' || strlen(s) > 18)
        return 0;
    v = strtol(s, &end, 10);
    if (*end != '\0' || v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

/* Parse the KubeSphere list parameters; 0 with resp filled. fields: 1
 * for users (field selectors allowed). */
static int parse_list_query(ks_api_call *call, int fields, list_query *q, ks_api_response *resp)
{
    char v[1024];

    memset(q, 0, sizeof(*q));
    q->page = 1;
    q->limit = -1;
    if (ks_api_query(call, "name", q->name, sizeof(q->name)))
        q->has_name = q->name[0] != '\0';
    if (ks_api_query(call, "labelSelector", v, sizeof(v)) &&
        !parse_selector(v, 1, &q->labels)) {
        ks_api_status(resp, 400, "BadRequest", "unable to parse the labelSelector \"%.200s\"", v);
        return 0;
    }
    if (ks_api_query(call, "fieldSelector", v, sizeof(v))) {
        if (!fields || !parse_selector(v, 0, &q->fields)) {
            ks_api_status(resp, 400, "BadRequest", "unable to parse the fieldSelector \"%.200s\"",
                          v);
            return 0;
        }
        for (size_t i = 0; i < q->fields.n; i++) {
            if (!field_supported(q->fields.reqs[i].key)) {
                ks_api_status(resp, 400, "BadRequest",
                              "field label not supported: %.200s (supported: metadata.name, "
                              "status.state, spec.email)",
                              q->fields.reqs[i].key);
                return 0;
            }
        }
    }
    if (ks_api_query(call, "sortBy", v, sizeof(v)) && v[0] != '\0') {
        if (strcmp(v, "name") == 0) {
            q->by_name = 1;
        } else if (strcmp(v, "createTime") != 0 && strcmp(v, "creationTimestamp") != 0) {
            ks_api_status(resp, 400, "BadRequest",
                          "sortBy must be createTime or name, not \"%.64s\"", v);
            return 0;
        }
    }
    if (ks_api_query(call, "ascending", v, sizeof(v)) && v[0] != '\0') {
        if (strcmp(v, "true") == 0) {
            q->ascending = 1;
        } else if (strcmp(v, "false") != 0) {
            ks_api_status(resp, 400, "BadRequest", "ascending must be true or false");
            return 0;
        }
    }
    if (ks_api_query(call, "page", v, sizeof(v)) && v[0] != '\0' &&
        !parse_long(v, 1, 1000000000L, &q->page)) {
        ks_api_status(resp, 400, "BadRequest", "page must be a positive integer");
        return 0;
    }
    if (ks_api_query(call, "limit", v, sizeof(v)) && v[0] != '\0' &&
        !parse_long(v, -1, 1000000000L, &q->limit)) {
        ks_api_status(resp, 400, "BadRequest", "limit must be a positive integer (or -1: all)");
        return 0;
    }
    if (q->limit == 0) {
        ks_api_status(resp, 400, "BadRequest", "limit must be a positive integer (or -1: all)");
        return 0;
    }
    return 1;
}

static int item_matches(const list_query *q, const json_t *o)
{
    const json_t *labels = json_object_get(json_object_get(o, "metadata"), "labels");

    if (q->has_name && strstr(obj_name(o), q->name) == NULL)
        return 0;
    for (size_t i = 0; i < q->labels.n; i++) {
        const char *v = json_string_value(json_object_get(labels, q->labels.reqs[i].key));
        if (!req_matches(&q->labels.reqs[i], v))
            return 0;
    }
    for (size_t i = 0; i < q->fields.n; i++)
        if (!req_matches(&q->fields.reqs[i], field_value(o, q->fields.reqs[i].key)))
            return 0;
    return 1;
}

/* The query of the sort running on this thread (qsort has no argument). */
static _Thread_local const list_query *t_sort;

static int cmp_items(const void *a, const void *b)
{
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    int c = 0;

    if (!t_sort->by_name) {
        const char *tx = json_string_value(
            json_object_get(json_object_get(x, "metadata"), "creationTimestamp"));
        const char *ty = json_string_value(
            json_object_get(json_object_get(y, "metadata"), "creationTimestamp"));
        c = strcmp(tx ? tx : "", ty ? ty : "");
    }
    if (c == 0)
        c = strcmp(obj_name(x), obj_name(y));
    return t_sort->ascending ? c : -c;
}

/* Filter, sort and page items (read-only shared values): answer
 * {"items":[...],"totalItems":N} with public copies. */
static void answer_list(const list_query *q, const json_t *items, int strip, ks_api_response *resp)
{
    size_t n = json_array_size(items), m = 0, i;
    const json_t **sel = n ? malloc(n * sizeof(*sel)) : NULL;
    json_t *out = json_object(), *arr = json_array(), *v;
    size_t from, to;

    if ((n && sel == NULL) || out == NULL || arr == NULL) {
        free(sel);
        json_decref(out);
        json_decref(arr);
        ks_api_status(resp, 500, "InternalError", "out of memory");
        return;
    }
    json_array_foreach(items, i, v) {
        if (item_matches(q, v))
            sel[m++] = v;
    }
    t_sort = q;
    qsort(sel, m, sizeof(*sel), cmp_items);
    t_sort = NULL;
    if (q->limit < 0) {
        from = 0;
        to = m;
    } else {
        unsigned long long f = (unsigned long long)(q->page - 1) * (unsigned long long)q->limit;
        from = f > m ? m : (size_t)f;
        to = from + (size_t)q->limit > m ? m : from + (size_t)q->limit;
    }
    for (i = from; i < to; i++)
        json_array_append_new(arr, strip ? iam_user_public(sel[i]) : json_deep_copy(sel[i]));
    json_object_set_new(out, "items", arr);
    json_object_set_new(out, "totalItems", json_integer((json_int_t)m));
    ks_api_json(resp, 200, out);
    json_decref(out);
    free(sel);
}

/* ks_api_body_object, with an exact media type: "application/json"
 * (PUT, POST) or also "application/merge-patch+json" (merge). */
static json_t *json_body(ks_api_call *call, ks_api_response *resp, int merge)
{
    const char *ct = ks_api_header(call, "Content-Type");

    if (ct != NULL && !iam_media_type_is(ct, "application/json") &&
        !(merge && iam_media_type_is(ct, "application/merge-patch+json"))) {
        ks_api_status(resp, 415, "UnsupportedMediaType",
                      "the body must be %s, not %.100s",
                      merge ? "application/merge-patch+json" : "application/json", ct);
        return NULL;
    }
    return ks_api_body_object(call, resp);
}

/* ---- handlers ---- */

/* Count a request of op; the handles are looked up once (registration
 * takes the registry's lock). */
static void count_op(const char *op)
{
    static const char *const ops[] = {"list", "get", "create", "update", "patch",
                                      "delete", "password", "loginrecords"};
    static ks_metric *_Atomic handles[sizeof(ops) / sizeof(ops[0])];

    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        ks_metric *m;
        char labels[48];

        if (strcmp(ops[i], op) != 0)
            continue;
        if ((m = atomic_load(&handles[i])) == NULL) {
            snprintf(labels, sizeof(labels), "op=\"%s\"", op);
            m = ks_metrics_counter("ks_iam_user_requests_total",
                                   "requests of the users API served by this replica", labels);
            atomic_store(&handles[i], m);
        }
        ks_metric_inc(m);
        return;
    }
}

static void h_list(ks_api_call *call, ks_api_response *resp, void *arg)
{
    iam *s = arg;
    list_query q;
    json_t *items = NULL, *list = NULL;

    count_op("list");
    if (!parse_list_query(call, 1, &q, resp))
        return;
    if (read_barrier(s) == KS_OK) {
        if (ks_mirror_cache_list(s->mirror, IAM_RES_USERS, NULL, &items) != KS_OK) {
            ks_api_status(resp, 500, "InternalError", "out of memory");
            return;
        }
    } else {
        if (kube_call(s, "GET", USERS_PATH, NULL, NULL, &list, resp, NULL) != KS_OK)
            return;
        items = json_incref(json_object_get(list, "items"));
        json_decref(list);
    }
    answer_list(&q, items, 1, resp);
    json_decref(items);
}

/* The current User: mirror after the barrier, else kube-apiserver. A miss
 * in the mirror is checked with kube-apiserver too (the mirror may lag when
 * the reconciler is away). 0 with resp filled. */
static int get_user(iam *s, const char *name, json_t **user, ks_api_response *resp)
{
    char path[512];

    if (read_barrier(s) == KS_OK &&
        ks_mirror_cache_get(s->mirror, IAM_RES_USERS, "", name, user, NULL) == KS_OK)
        return 1;
    user_path(name, NULL, path, sizeof(path));
    return kube_call(s, "GET", path, NULL, NULL, user, resp, NULL) == KS_OK;
}

static void h_get(ks_api_call *call, ks_api_response *resp, void *arg)
{
    iam *s = arg;
    json_t *user = NULL;

    count_op("get");
    if (!get_user(s, call->params[0], &user, resp))
        return;
    answer_user(resp, 200, user);
    json_decref(user);
}

static void h_create(ks_api_call *call, ks_api_response *resp, void *arg)
{
    iam *s = arg;
    json_t *body = json_body(call, resp, 0), *obj = NULL, *created = NULL, *spec, *meta;
    const char *plain, *name;
    const char *secrets[3] = {NULL, NULL, NULL};
    char *hash = NULL, now[32];

    count_op("create");
    wipe_body(call);
    if (body == NULL)
        return;
    if (!check_fields(body, user_fields, "", 0, resp) || !check_user(s, body, NULL, resp))
        goto out;
    name = obj_name(body);
    if (!email_free(s, user_email(body), name, resp))
        goto out;
    obj = json_deep_copy(body);
    if (obj == NULL) {
        ks_api_status(resp, 500, "InternalError", "out of memory");
        goto out;
    }
    json_object_set_new(obj, "apiVersion", json_string(IAM_GROUP "/" IAM_VERSION));
    json_object_set_new(obj, "kind", json_string("User"));
    json_object_del(obj, "status"); /* a subresource: ignored on create */
    meta = json_object_get(obj, "metadata");
    json_object_del(meta, "resourceVersion");
    json_object_del(meta, "uid");
    json_object_del(meta, "creationTimestamp");
    spec = json_object_get(obj, "spec");
    plain = json_string_value(json_object_get(json_object_get(body, "spec"), "password"));
    if (plain != NULL && plain[0] != '\0') {
        secrets[0] = plain;
        wipe_string(spec, "password"); /* the copy; body's goes at the end */
        if (!hash_password(s, plain, &hash, resp))
            goto out;
        secrets[1] = hash;
        json_object_set_new(spec, "password", json_string(hash));
        iam_time_format(iam_now_unix(), now);
        set_annotation(obj, ANN_PWD_CHANGE, now);
    } else {
        json_object_del(spec, "password");
    }
    if (kube_call(s, "POST", USERS_PATH, obj, NULL, &created, resp, secrets) != KS_OK)
        goto out;
    wait_written(s, obj_name(created), obj_rv(created));
    ks_info("user %s created by %s", name, call->username[0] ? call->username : "anonymous");
    answer_user(resp, 201, created);
out:
    if (hash != NULL) {
        explicit_bzero(hash, strlen(hash));
        free(hash);
    }
    wipe_string(json_object_get(body, "spec"), "password");
    json_decref(body);
    json_decref(obj);
    json_decref(created);
}

/* Write status.state (and lastTransitionTime) through the status
 * subresource; *out the result. */
static int write_state(iam *s, const char *name, const char *state, json_t **out,
                       ks_api_response *resp)
{
    char path[512], now[32];
    json_t *patch;
    int ok;

    iam_time_format(iam_now_unix(), now);
    patch = json_pack("{s:{s:s, s:s, s:s}}", "status", "state", state, "lastTransitionTime", now,
                      "reason", "");
    if (patch == NULL) {
        ks_api_status(resp, 500, "InternalError", "out of memory");
        return 0;
    }
    json_object_del(json_object_get(patch, "status"), "reason");
    user_path(name, "status", path, sizeof(path));
    ok = kube_call(s, "PATCH", path, patch, "application/merge-patch+json", out, resp, NULL) ==
         KS_OK;
    json_decref(patch);
    return ok;
}

/* After a change of state: Disabled revokes every token of the user. */
static void state_changed(iam *s, const char *name, const char *state)
{
    ks_info("user %s is now %s", name, state);
    if (strcmp(state, "Disabled") == 0 && iam_revoke_user(s, name, iam_now_unix() + 1) != KS_OK)
        ks_warn("user %s disabled: %s", name, ks_status_last());
}

static int reject_password_field(const json_t *body, ks_api_response *resp)
{
    const json_t *p = json_object_get(json_object_get(body, "spec"), "password");

    if (p != NULL && !json_is_null(p) && json_string_length(p) > 0) {
        ks_api_status(resp, 422, "Invalid",
                      "spec.password: Forbidden: change a password with PUT "
                      IAM_API_PREFIX "/users/{user}/password");
        return 1;
    }
    return 0;
}

static void h_update(ks_api_call *call, ks_api_response *resp, void *arg)
{
    iam *s = arg;
    const char *name = call->params[0];
    json_t *body = json_body(call, resp, 0), *cur = NULL, *obj = NULL, *upd = NULL,
           *fin = NULL, *meta, *spec;
    const char *want_state = NULL, *rv, *cur_pwd;
    char path[512];
    int unconditional;

    count_op("update");
    wipe_body(call);
    if (body == NULL)
        return;
    if (!check_fields(body, user_fields, "", 0, resp) || reject_password_field(body, resp))
        goto out;
    if (json_object_get(body, "metadata") == NULL)
        json_object_set_new(body, "metadata", json_object());
    if (json_object_get(json_object_get(body, "metadata"), "name") == NULL)
        json_object_set_new(json_object_get(body, "metadata"), "name", json_string(name));
    if (!check_user(s, body, name, resp))
        goto out;
    user_path(name, NULL, path, sizeof(path));
    rv = json_string_value(json_object_get(json_object_get(body, "metadata"), "resourceVersion"));
    unconditional = rv == NULL || rv[0] == '\0';
    /* An update without a resourceVersion is unconditional: when a
     * controller writes in between (status, finalizers), read again. */
    for (int attempt = 0;; attempt++) {
        ks_status st;

        json_decref(cur);
        json_decref(obj);
        cur = obj = NULL;
        if (kube_call(s, "GET", path, NULL, NULL, &cur, resp, NULL) != KS_OK)
            goto out;
        if (strcasecmp(user_email(body), user_email(cur)) != 0 &&
            !email_free(s, user_email(body), name, resp))
            goto out;
        want_state =
            json_string_value(json_object_get(json_object_get(body, "status"), "state"));
        if (want_state != NULL && want_state[0] != '\0' &&
            strcmp(want_state, iam_user_state(cur)) != 0 && !state_settable(want_state)) {
            ks_api_status(resp, 422, "Invalid",
                          "status.state: Unsupported value: \"%s\": a client may set Active or "
                          "Disabled",
                          want_state);
            goto out;
        }
        obj = json_deep_copy(body);
        if (obj == NULL) {
            ks_api_status(resp, 500, "InternalError", "out of memory");
            goto out;
        }
        json_object_set_new(obj, "apiVersion", json_string(IAM_GROUP "/" IAM_VERSION));
        json_object_set_new(obj, "kind", json_string("User"));
        meta = json_object_get(obj, "metadata");
        if (unconditional)
            json_object_set_new(meta, "resourceVersion", json_string(obj_rv(cur)));
        /* The password is kept (it changes only through .../password), and
         * the status is written through its subresource below. */
        spec = json_object_get(obj, "spec");
        cur_pwd = json_string_value(json_object_get(json_object_get(cur, "spec"), "password"));
        if (cur_pwd != NULL)
            json_object_set_new(spec, "password", json_string(cur_pwd));
        else
            json_object_del(spec, "password");
        if (json_object_get(cur, "status") != NULL)
            json_object_set(obj, "status", json_object_get(cur, "status"));
        else
            json_object_del(obj, "status");
        /* Finalizers belong to the controllers: a body without them keeps
         * them (a body that lists them, even empty, sets them, as in
         * Kubernetes). */
        if (json_object_get(meta, "finalizers") == NULL &&
            json_object_get(json_object_get(cur, "metadata"), "finalizers") != NULL)
            json_object_set(meta, "finalizers",
                            json_object_get(json_object_get(cur, "metadata"), "finalizers"));
        st = kube_call(s, "PUT", path, obj, NULL, &upd, resp, NULL);
        if (st == KS_OK)
            break;
        if (st != KS_ERR_CONFLICT || !unconditional || attempt == 4)
            goto out;
    }
    if (want_state != NULL && want_state[0] != '\0' &&
        strcmp(want_state, iam_user_state(upd)) != 0) {
        if (!write_state(s, name, want_state, &fin, resp)) {
            ks_warn("user %s: spec updated, status not: %s", name, resp->body ? resp->body : "");
            goto out;
        }
        state_changed(s, name, want_state);
    }
    wait_written(s, name, obj_rv(fin ? fin : upd));
    answer_user(resp, 200, fin ? fin : upd);
out:
    json_decref(body);
    json_decref(cur);
    json_decref(obj);
    json_decref(upd);
    json_decref(fin);
}

static void h_patch(ks_api_call *call, ks_api_response *resp, void *arg)
{
    iam *s = arg;
    const char *name = call->params[0];
    const char *ct = ks_api_header(call, "Content-Type");
    json_t *body = NULL, *status_part = NULL, *upd = NULL, *fin = NULL;
    const char *want_state = NULL, *pname, *email;
    char path[512];
    int main_part;

    count_op("patch");
    if (ct != NULL && !iam_media_type_is(ct, "application/merge-patch+json") &&
        !iam_media_type_is(ct, "application/json")) {
        ks_api_status(resp, 415, "UnsupportedMediaType",
                      "the patch must be application/merge-patch+json, not %.100s", ct);
        return;
    }
    body = json_body(call, resp, 1);
    wipe_body(call);
    if (body == NULL)
        return;
    if (!check_fields(body, user_fields, "", 1, resp) || reject_password_field(body, resp))
        goto out;
    pname = json_string_value(json_object_get(json_object_get(body, "metadata"), "name"));
    if (pname != NULL && strcmp(pname, name) != 0) {
        ks_api_status(resp, 400, "BadRequest",
                      "the name of the object (%.253s) does not match the name on the URL "
                      "(%.253s)",
                      pname, name);
        goto out;
    }
    if (json_is_null(json_object_get(body, "spec")) ||
        json_is_null(json_object_get(json_object_get(body, "spec"), "email"))) {
        ks_api_status(resp, 422, "Invalid", "User \"%s\" is invalid: spec.email: Required value",
                      name);
        goto out;
    }
    email = json_string_value(json_object_get(json_object_get(body, "spec"), "email"));
    if (email != NULL && !email_ok(email)) {
        ks_api_status(resp, 422, "Invalid",
                      "User \"%s\" is invalid: spec.email: Invalid value: \"%.254s\": not an "
                      "email address",
                      name, email);
        goto out;
    }
    if (email != NULL && !email_free(s, email, name, resp))
        goto out;
    status_part = json_object_get(body, "status");
    if (status_part != NULL) {
        const json_t *st = json_object_get(status_part, "state");
        const char *key;
        json_t *v;
        json_object_foreach(status_part, key, v) {
            if (strcmp(key, "state") != 0) {
                ks_api_status(resp, 422, "Invalid",
                              "status.%s: Forbidden: only status.state may be patched", key);
                goto out;
            }
        }
        if (json_is_null(status_part) || (st != NULL && !json_is_string(st))) {
            ks_api_status(resp, 422, "Invalid", "status.state: must be Active or Disabled");
            goto out;
        }
        want_state = json_string_value(st);
        if (want_state != NULL && !state_settable(want_state)) {
            ks_api_status(resp, 422, "Invalid",
                          "status.state: Unsupported value: \"%s\": a client may set Active or "
                          "Disabled",
                          want_state);
            goto out;
        }
        json_incref(status_part);
        json_object_del(body, "status");
    }
    json_object_del(body, "apiVersion");
    json_object_del(body, "kind");
    main_part = json_object_size(body) > 0;
    user_path(name, NULL, path, sizeof(path));
    if (main_part) {
        if (kube_call(s, "PATCH", path, body, "application/merge-patch+json", &upd, resp, NULL) !=
            KS_OK)
            goto out_status;
    } else if (kube_call(s, "GET", path, NULL, NULL, &upd, resp, NULL) != KS_OK) {
        goto out_status;
    }
    if (want_state != NULL && strcmp(want_state, iam_user_state(upd)) != 0) {
        if (!write_state(s, name, want_state, &fin, resp))
            goto out_status;
        state_changed(s, name, want_state);
    }
    if (main_part || fin != NULL)
        wait_written(s, name, obj_rv(fin ? fin : upd));
    answer_user(resp, 200, fin ? fin : upd);
out_status:
    json_decref(status_part);
out:
    json_decref(body);
    json_decref(upd);
    json_decref(fin);
}

static void h_delete(ks_api_call *call, ks_api_response *resp, void *arg)
{
    iam *s = arg;
    const char *name = call->params[0];
    json_t *res = NULL, *st;
    char path[512];

    count_op("delete");
    user_path(name, NULL, path, sizeof(path));
    if (kube_call(s, "DELETE", path, NULL, NULL, &res, resp, NULL) != KS_OK)
        return;
    /* With a finalizer the User stays until the controller is done: wait
     * for the deletionTimestamp; otherwise for it to be gone. */
    if (json_object_get(json_object_get(res, "metadata"), "deletionTimestamp") != NULL &&
        json_is_string(json_object_get(res, "kind")) &&
        strcmp(json_string_value(json_object_get(res, "kind")), "User") == 0) {
        if (iam_wait_visible(s, IAM_RES_USERS, "", name, obj_rv(res)) != KS_OK)
            ks_warn("user %s: deleted, the mirror did not show it in time", name);
    } else if (iam_wait_visible(s, IAM_RES_USERS, "", name, NULL) != KS_OK) {
        ks_warn("user %s: deleted, the mirror did not show it in time", name);
    }
    if (iam_revoke_user(s, name, iam_now_unix() + 1) != KS_OK)
        ks_warn("user %s deleted: %s", name, ks_status_last());
    ks_info("user %s deleted by %s", name, call->username[0] ? call->username : "anonymous");
    st = json_pack("{s:s, s:s, s:{}, s:s, s:{s:s, s:s, s:s}}", "kind", "Status", "apiVersion",
                   "v1", "metadata", "status", "Success", "details", "name", name, "group",
                   IAM_GROUP, "kind", "users");
    ks_api_json(resp, 200, st);
    json_decref(st);
    json_decref(res);
}

/* May the caller `update users/password` at global scope? */
static int may_reset_passwords(iam *s, ks_api_call *call)
{
    const Kscore__V1__UserInfo *u = call->req->user;
    ks_rbac_user who = {.name = call->username,
                        .groups = u ? (const char *const *)u->groups : NULL,
                        .ngroups = u ? u->n_groups : 0};
    ks_rbac_request req = {.is_resource_request = true,
                           .verb = "update",
                           .api_group = IAM_GROUP,
                           .resource = "users",
                           .subresource = "password",
                           .name = call->params[0],
                           .scope = KS_RBAC_SCOPE_GLOBAL};
    ks_rbac_decision d;

    if (call->username[0] == '\0' || strcmp(call->username, "system:anonymous") == 0)
        return 0;
    if (who.ngroups > KS_RBAC_MAX_GROUPS)
        who.ngroups = KS_RBAC_MAX_GROUPS;
    return ks_rbac_decide(s->rbac, &who, &req, &d) == KS_OK && d.allowed;
}

static void h_password(ks_api_call *call, ks_api_response *resp, void *arg)
{
    iam *s = arg;
    const char *name = call->params[0];
    json_t *body = json_body(call, resp, 0), *cur = NULL, *patch = NULL, *upd = NULL;
    const char *plain, *current, *hash_now;
    const char *secrets[4] = {NULL, NULL, NULL, NULL};
    char *hash = NULL, path[512], now[32];
    int privileged, self, verified = 0;
    ks_status st;

    count_op("password");
    wipe_body(call);
    if (body == NULL)
        return;
    if (!check_fields(body, password_fields, "", 0, resp))
        goto out;
    plain = json_string_value(json_object_get(body, "password"));
    current = json_string_value(json_object_get(body, "currentPassword"));
    secrets[0] = plain;
    secrets[1] = current && current[0] ? current : NULL;
    if (plain == NULL || plain[0] == '\0') {
        ks_api_status(resp, 422, "Invalid", "password: Required value");
        goto out;
    }
    privileged = may_reset_passwords(s, call);
    self = call->username[0] != '\0' && strcmp(call->username, name) == 0;
    if (!privileged && !self) {
        ks_api_status(resp, 403, "Forbidden",
                      "user \"%.253s\" cannot update resource \"users/password\" of \"%.253s\"",
                      call->username[0] ? call->username : "system:anonymous", name);
        goto out;
    }
    user_path(name, NULL, path, sizeof(path));
    if (kube_call(s, "GET", path, NULL, NULL, &cur, resp, NULL) != KS_OK)
        goto out;
    /* KubeSphere's rule: without the privilege, or whenever it is given,
     * the current password must verify. */
    if (!privileged || (current != NULL && current[0] != '\0')) {
        verified = 1;
        hash_now = json_string_value(json_object_get(json_object_get(cur, "spec"), "password"));
        if (current == NULL || current[0] == '\0') {
            ks_api_status(resp, 400, "BadRequest", "currentPassword: Required value");
            goto out;
        }
        if (iam_guard_blocked(s, name)) {
            ks_api_status(resp, 429, "TooManyRequests", "too many failed login attempts");
            snprintf(resp->retry_after, sizeof(resp->retry_after), "%d",
                     (int)(s->cfg->login_window_ms / 1000));
            goto out;
        }
        st = hash_now != NULL && ks_password_is_hash(hash_now)
                 ? ks_password_pool_verify_wait(s->passwords, current, hash_now, HASH_WAIT_MS)
                 : KS_ERR_DENIED;
        if (st == KS_ERR_UNAVAILABLE || st == KS_ERR_TIMEOUT) {
            ks_api_status(resp, 429, "TooManyRequests",
                          "too many password operations in progress; retry later");
            snprintf(resp->retry_after, sizeof(resp->retry_after), "%u",
                     ks_password_pool_retry_after_s(s->passwords));
            goto out;
        }
        if (st) {
            ks_api_status(resp, 400, "BadRequest", "incorrect old password");
            goto out;
        }
    }
    if (!hash_password(s, plain, &hash, resp))
        goto out;
    secrets[2] = hash;
    iam_time_format(iam_now_unix(), now);
    patch = json_pack("{s:{s:{s:s}}, s:{s:s}}", "metadata", "annotations", ANN_PWD_CHANGE, now,
                      "spec", "password", hash);
    if (patch == NULL) {
        ks_api_status(resp, 500, "InternalError", "out of memory");
        goto out;
    }
    /* When a current password was verified, the write is conditional on the
     * resourceVersion it was read at, so a password changed meanwhile is
     * not overwritten. The controllers write the status too (which moves
     * the resourceVersion): on a conflict, read again and go on while the
     * stored password is still the one verified. */
    for (int attempt = 0;; attempt++) {
        json_t *again = NULL;
        const char *was, *is;
        ks_status st2;

        if (verified)
            json_object_set_new(json_object_get(patch, "metadata"), "resourceVersion",
                                json_string(obj_rv(cur)));
        st2 = kube_call(s, "PATCH", path, patch, "application/merge-patch+json", &upd, resp,
                        secrets);
        if (st2 == KS_OK)
            break;
        if (st2 != KS_ERR_CONFLICT || !verified || attempt == 4 ||
            kube_call(s, "GET", path, NULL, NULL, &again, resp, NULL) != KS_OK)
            goto out;
        was = json_string_value(json_object_get(json_object_get(cur, "spec"), "password"));
        is = json_string_value(json_object_get(json_object_get(again, "spec"), "password"));
        if (was == NULL || is == NULL || strcmp(was, is) != 0) {
            json_decref(again);
            ks_api_status(resp, 409, "Conflict",
                          "the password of user %s was changed meanwhile; try again", name);
            goto out;
        }
        json_decref(cur);
        cur = again;
    }
    wait_written(s, name, obj_rv(upd));
    if (iam_revoke_user(s, name, iam_now_unix() + 1) != KS_OK)
        ks_warn("user %s: password changed: %s", name, ks_status_last());
    ks_info("the password of user %s was changed by %s", name, call->username);
    ks_api_status(resp, 200, "", "the password of user %s was changed", name);
out:
    if (hash != NULL) {
        explicit_bzero(hash, strlen(hash));
        free(hash);
    }
    if (patch != NULL)
        wipe_string(json_object_get(patch, "spec"), "password");
    wipe_string(body, "password");
    wipe_string(body, "currentPassword");
    json_decref(patch);
    json_decref(body);
    json_decref(cur);
    json_decref(upd);
}

static void h_loginrecords(ks_api_call *call, ks_api_response *resp, void *arg)
{
    iam *s = arg;
    const char *name = call->params[0];
    list_query q;
    json_t *items = NULL, *user = NULL;

    count_op("loginrecords");
    if (!parse_list_query(call, 0, &q, resp))
        return;
    if (!get_user(s, name, &user, resp))
        return;
    json_decref(user);
    if (ks_mirror_cache_list_by_label(s->mirror, IAM_RES_LOGINRECORDS, LR_USER_LABEL, name,
                                      &items) != KS_OK) {
        ks_api_status(resp, 500, "InternalError", "out of memory");
        return;
    }
    answer_list(&q, items, 0, resp);
    json_decref(items);
}

static const ks_api_route user_routes[] = {
    {"GET", IAM_API_PREFIX "/users", h_list},
    {"POST", IAM_API_PREFIX "/users", h_create},
    {"GET", IAM_API_PREFIX "/users/{user}", h_get},
    {"PUT", IAM_API_PREFIX "/users/{user}", h_update},
    {"PATCH", IAM_API_PREFIX "/users/{user}", h_patch},
    {"DELETE", IAM_API_PREFIX "/users/{user}", h_delete},
    {"PUT", IAM_API_PREFIX "/users/{user}/password", h_password},
    {"GET", IAM_API_PREFIX "/users/{user}/loginrecords", h_loginrecords},
};

ks_status iam_users_start(iam *s)
{
    (void)s;
    return iam_api_add_routes(user_routes, sizeof(user_routes) / sizeof(user_routes[0]));
}
