/* audit_redact.c: secrets out of audit bodies and URIs (audit_redact.h).
 *
 * Every test here errs towards redacting: a key that merely contains
 * "token" loses its value, a string that merely contains a JWT is replaced
 * whole, and whatever cannot be read with certainty (a bad percent escape in
 * a form, JSON nested deeper than REDACT_MAX_DEPTH, a body of another type)
 * is not recorded at all. */
#include "audit_redact.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define REDACTED "[REDACTED]"
#define REDACTED_ENC "%5BREDACTED%5D"
#define REDACTED_ENC_LEN (sizeof(REDACTED_ENC) - 1)

/* ---- keys and values ---- */

static const char *const secret_words[] = {
    "password", "passwd", "token", "secret", "hash", "credential", "privatekey", "apikey",
    "authorization",
};

static int key_ignored(char c)
{
    return c == '-' || c == '_' || c == '.';
}

static char lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* word (lower-case) at key[i], skipping ignored characters in key. */
static int word_at(const char *key, size_t len, size_t i, const char *word)
{
    for (; *word; word++, i++) {
        while (i < len && key_ignored(key[i]))
            i++;
        if (i == len || lower(key[i]) != *word)
            return 0;
    }
    return 1;
}

int gw_redact_key_is_secret(const char *key, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = lower(key[i]);
        if (key_ignored(c))
            continue;
        for (size_t w = 0; w < sizeof(secret_words) / sizeof(secret_words[0]); w++)
            if (secret_words[w][0] == c && word_at(key, len, i, secret_words[w]))
                return 1;
    }
    return 0;
}

static int is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_b64url(unsigned char c)
{
    return is_alnum(c) || c == '-' || c == '_';
}

static size_t b64url_run(const char *v, size_t len, size_t i)
{
    while (i < len && is_b64url((unsigned char)v[i]))
        i++;
    return i;
}

/* A crypt(3) hash starts at v[i]: one of the prefixes, then a character of
 * the crypt alphabet. */
static int crypt_at(const char *v, size_t len, size_t i)
{
    static const char *const prefixes[] = {"$2a$", "$2b$", "$2y$", "$5$", "$6$", "$y$"};

    for (size_t p = 0; p < sizeof(prefixes) / sizeof(prefixes[0]); p++) {
        size_t n = strlen(prefixes[p]);
        if (len - i > n && memcmp(v + i, prefixes[p], n) == 0) {
            unsigned char c = (unsigned char)v[i + n];
            return is_alnum(c) || c == '.' || c == '/';
        }
    }
    return 0;
}

/* A JWT starts at v[i], which begins a base64url run ("eyJ" is '{"' encoded):
 * header '.' payload '.' signature (empty for alg "none"). */
static int jwt_at(const char *v, size_t len, size_t i)
{
    size_t j = b64url_run(v, len, i), k;

    if (j - i < 4 || j == len || v[j] != '.')
        return 0;
    k = b64url_run(v, len, j + 1);
    return k > j + 1 && k < len && v[k] == '.';
}

/* Linear: a JWT is tried only where a base64url run begins, and each run is
 * read at most three times (as header, payload, signature). */
int gw_redact_value_is_secret(const char *v, size_t len)
{
    if (len >= 10 && memmem(v, len, "-----BEGIN", 10) != NULL &&
        memmem(v, len, "PRIVATE KEY-----", 16) != NULL)
        return 1;
    for (size_t i = 0; i < len; i++) {
        if (v[i] == '$' && crypt_at(v, len, i))
            return 1;
        if (v[i] == 'e' && len - i >= 3 && v[i + 1] == 'y' && v[i + 2] == 'J' &&
            (i == 0 || !is_b64url((unsigned char)v[i - 1])) && jwt_at(v, len, i))
            return 1;
    }
    return 0;
}

/* ---- JSON ---- */

typedef struct {
    json_t *red;       /* the shared "[REDACTED]"; NULL (out of memory): null is used */
    size_t changes;
    int too_deep;
    int oom;
} rctx;

enum { KEEP, REDACT, REPLACE };

static void redact_container(rctx *c, json_t *v, int depth);

static json_t *red_value(rctx *c)
{
    return c->red ? c->red : json_null();
}

/* Replace the value of an existing key. That never allocates in jansson;
 * should it fail all the same, the key goes. */
static void put_obj(rctx *c, json_t *obj, const char *key)
{
    c->changes++;
    if (json_object_set(obj, key, red_value(c)) != 0)
        json_object_del(obj, key);
}

static void put_arr(rctx *c, json_t *arr, size_t i)
{
    c->changes++;
    if (json_array_set(arr, i, red_value(c)) != 0)
        (void)json_array_set(arr, i, json_null());
}

static int embedded_candidate(const char *s, size_t n)
{
    size_t i = 0;

    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
        i++;
    return n - i >= 2 && (s[i] == '{' || s[i] == '[');
}

/* What to do with a string value at depth: KEEP, REDACT, or REPLACE with
 * *repl. A string that is itself a JSON object or array (kubectl's
 * last-applied-configuration annotation holds the whole object, data of a
 * Secret included) is redacted as JSON and replaced when that changed it. */
static int string_action(rctx *c, const char *s, size_t n, int depth, json_t **repl)
{
    json_error_t jerr;
    json_t *sub;
    size_t before;
    char *text;

    if (gw_redact_value_is_secret(s, n))
        return REDACT;
    if (!embedded_candidate(s, n))
        return KEEP;
    if ((sub = json_loadb(s, n, 0, &jerr)) == NULL)
        return json_error_code(&jerr) == json_error_out_of_memory ? REDACT : KEEP;
    if (depth >= GW_REDACT_MAX_DEPTH) {
        json_decref(sub);
        c->too_deep = 1;
        return REDACT;
    }
    before = c->changes;
    redact_container(c, sub, depth);
    if (c->changes == before) {
        json_decref(sub);
        return KEEP;
    }
    text = json_dumps(sub, JSON_COMPACT);
    json_decref(sub);
    if (text == NULL)
        return REDACT;
    *repl = json_string(text);
    free(text);
    return *repl ? REPLACE : REDACT;
}

/* What to do with the value v found at depth. Containers are walked. */
static int child_action(rctx *c, json_t *v, int depth, json_t **repl)
{
    if (v == c->red)
        return KEEP;
    if (json_is_string(v))
        return string_action(c, json_string_value(v), json_string_length(v), depth, repl);
    if (json_is_object(v) || json_is_array(v)) {
        if (depth >= GW_REDACT_MAX_DEPTH) {
            c->too_deep = 1;
            return REDACT;
        }
        redact_container(c, v, depth);
    }
    return KEEP;
}

/* A Secret's data and stringData: every value goes, the keys stay. */
static void secret_data(rctx *c, json_t *obj)
{
    static const char *const fields[] = {"data", "stringData"};

    if (!json_is_object(obj))
        return;
    for (size_t f = 0; f < 2; f++) {
        json_t *d = json_object_get(obj, fields[f]);
        const char *k;
        json_t *x;

        if (d == NULL)
            continue;
        if (!json_is_object(d)) {
            put_obj(c, obj, fields[f]);
            continue;
        }
        json_object_foreach(d, k, x) {
            if (x != c->red)
                put_obj(c, d, k);
        }
    }
}

static void redact_object(rctx *c, json_t *obj, int depth)
{
    const char *kind = json_string_value(json_object_get(obj, "kind"));
    const char *path = json_string_value(json_object_get(obj, "path"));
    const char *key;
    json_t *val;
    void *tmp;
    int secret_keys = 0;

    if (kind != NULL && strcmp(kind, "Secret") == 0) {
        secret_data(c, obj);
    } else if (kind != NULL && strcmp(kind, "SecretList") == 0) {
        json_t *items = json_object_get(obj, "items"), *item;
        size_t i;
        json_array_foreach(items, i, item)
            secret_data(c, item);
    }
    /* a JSON Patch operation on a secret field: {"op": "replace",
     * "path": "/spec/password", "value": "..."} */
    if (path != NULL && json_is_string(json_object_get(obj, "op")) &&
        gw_redact_key_is_secret(path, strlen(path)) && json_object_get(obj, "value") != NULL)
        put_obj(c, obj, "value");

    json_object_foreach_safe(obj, tmp, key, val) {
        size_t klen = strlen(key);
        json_t *repl = NULL;

        if (gw_redact_value_is_secret(key, klen)) {
            /* a key that is itself a token: it goes, "[REDACTED]" is added */
            c->changes++;
            secret_keys = 1;
            json_object_del(obj, key);
            continue;
        }
        if (gw_redact_key_is_secret(key, klen)) {
            if (val != c->red)
                put_obj(c, obj, key);
            continue;
        }
        switch (child_action(c, val, depth + 1, &repl)) {
        case REDACT:
            put_obj(c, obj, key);
            break;
        case REPLACE:
            c->changes++;
            if (json_object_set_new(obj, key, repl) != 0)
                json_object_del(obj, key);
            break;
        default:
            break;
        }
    }
    if (secret_keys)
        (void)json_object_set(obj, REDACTED, red_value(c));
}

static void redact_array(rctx *c, json_t *arr, int depth)
{
    size_t i;
    json_t *val;

    json_array_foreach(arr, i, val) {
        json_t *repl = NULL;

        switch (child_action(c, val, depth + 1, &repl)) {
        case REDACT:
            put_arr(c, arr, i);
            break;
        case REPLACE:
            c->changes++;
            if (json_array_set_new(arr, i, repl) != 0)
                put_arr(c, arr, i);
            break;
        default:
            break;
        }
    }
}

static void redact_container(rctx *c, json_t *v, int depth)
{
    if (json_is_object(v))
        redact_object(c, v, depth);
    else if (json_is_array(v))
        redact_array(c, v, depth);
}

/* The root: a container is walked; a string is set in place. */
static void redact_root(rctx *c, json_t *v)
{
    json_t *repl = NULL;

    if (!json_is_string(v)) {
        redact_container(c, v, 0);
        return;
    }
    switch (string_action(c, json_string_value(v), json_string_length(v), 0, &repl)) {
    case REDACT:
        if (json_string_set(v, REDACTED) != 0)
            c->oom = 1;
        break;
    case REPLACE:
        if (json_string_setn(v, json_string_value(repl), json_string_length(repl)) != 0 &&
            json_string_set(v, REDACTED) != 0)
            c->oom = 1;
        json_decref(repl);
        break;
    default:
        break;
    }
}

void gw_redact_json(json_t *v)
{
    rctx c = {0};

    if (v == NULL)
        return;
    c.red = json_string(REDACTED);
    redact_root(&c, v);
    json_decref(c.red);
}

/* ---- forms and queries ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decode s[0..n) into d ('+' is a space); *dn is the decoded length
 * (<= n). A bad escape: -1 when strict, else kept as it is. */
static int pct_decode(const char *s, size_t n, char *d, int strict, size_t *dn)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '+') {
            d[o++] = ' ';
        } else if (s[i] != '%') {
            d[o++] = s[i];
        } else if (i + 2 < n && (hi = hexval(s[i + 1])) >= 0 && (lo = hexval(s[i + 2])) >= 0) {
            d[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (strict) {
            return -1;
        } else {
            d[o++] = '%';
        }
    }
    *dn = o;
    return 0;
}

static int plain_name(const char *s, size_t n);

/* Decide for one field (no '&' inside): *name_red when its name is itself a
 * secret value or names a secret with more than field-name characters,
 * *val_red when its value goes. A ';' could be read as a
 * separator by some parsers, so the name of every ';'-separated part counts
 * too. -1: a bad escape in strict mode. */
static int field_plan(const char *f, size_t n, char *scratch, int strict, int *name_red,
                      int *val_red)
{
    const char *eq = memchr(f, '=', n);
    size_t nn = eq ? (size_t)(eq - f) : n, dn;
    int name_secret;

    *name_red = *val_red = 0;
    if (pct_decode(f, nn, scratch, strict, &dn))
        return -1;
    name_secret = gw_redact_key_is_secret(scratch, dn);
    *name_red = gw_redact_value_is_secret(scratch, dn) ||
                (name_secret && !plain_name(scratch, dn));
    /* each part's name runs to its '=' or the next ';': linear in n */
    for (const char *p = memchr(f, ';', n); p != NULL && !name_secret;
         p = memchr(p + 1, ';', (size_t)(f + n - p - 1))) {
        const char *part = p + 1, *end = f + n;
        size_t pn = 0;

        while (part + pn < end && part[pn] != '=' && part[pn] != ';')
            pn++;
        if (pct_decode(part, pn, scratch, strict, &dn))
            return -1;
        name_secret = gw_redact_key_is_secret(scratch, dn);
    }
    if (eq != NULL) {
        if (pct_decode(eq + 1, n - nn - 1, scratch, strict, &dn))
            return -1;
        *val_red = name_secret || gw_redact_value_is_secret(scratch, dn);
    }
    return 0;
}

/* A name made of field-name characters only: it can name a secret, but
 * hardly hold one ('password=' is kept, '{"password":"x"}' is not). */
static int plain_name(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_b64url((unsigned char)s[i]) && s[i] != '.' && s[i] != '~' && s[i] != '[' &&
            s[i] != ']')
            return 0;
    return 1;
}

/* Redact the '&'-separated fields of s[0..n) into d, or only measure when d
 * is NULL. Fields that keep their values are copied byte for byte. Returns
 * the output length; SIZE_MAX for a bad escape in strict mode. */
static size_t fields_redact(const char *s, size_t n, char *scratch, int strict, char *d)
{
    size_t o = 0, i = 0;

#define EMIT(p, len)                                                                             \
    do {                                                                                         \
        if (d != NULL)                                                                           \
            memcpy(d + o, (p), (len));                                                           \
        o += (len);                                                                              \
    } while (0)

    for (;;) {
        const char *f = s + i, *amp = memchr(f, '&', n - i);
        size_t fl = amp ? (size_t)(amp - f) : n - i;

        if (fl > 0) {
            const char *eq = memchr(f, '=', fl);
            size_t nn = eq ? (size_t)(eq - f) : fl;
            int name_red, val_red;

            if (field_plan(f, fl, scratch, strict, &name_red, &val_red))
                return SIZE_MAX;
            if (name_red)
                EMIT(REDACTED_ENC, REDACTED_ENC_LEN);
            else
                EMIT(f, nn);
            if (eq != NULL) {
                EMIT("=", 1);
                if (val_red)
                    EMIT(REDACTED_ENC, REDACTED_ENC_LEN);
                else
                    EMIT(eq + 1, fl - nn - 1);
            }
        }
        if (amp == NULL)
            break;
        EMIT("&", 1);
        i += fl + 1;
    }
#undef EMIT
    return o;
}

/* prefix (kept as is) followed by the redacted fields of s[0..n), into a
 * new NUL-terminated string. KS_OK with *out NULL: not a valid form (strict). */
static ks_status redact_fields(const char *prefix, size_t plen, const char *s, size_t n,
                               int strict, char **out, size_t *out_len)
{
    char *scratch = malloc(n + 1), *d = NULL;
    size_t len;
    ks_status st = KS_ERR_NOMEM;

    *out = NULL;
    if (scratch == NULL)
        goto done;
    if ((len = fields_redact(s, n, scratch, strict, NULL)) == SIZE_MAX) {
        st = KS_OK;
        goto done;
    }
    if ((d = malloc(plen + len + 1)) == NULL)
        goto done;
    memcpy(d, prefix, plen);
    if (fields_redact(s, n, scratch, strict, d + plen) != len) {
        st = KS_ERR_INTERNAL;
        goto done;
    }
    d[plen + len] = '\0';
    *out = d;
    *out_len = plen + len;
    d = NULL;
    st = KS_OK;
done:
    free(d);
    free(scratch);
    return st;
}

char *gw_redact_uri(const char *uri)
{
    const char *q;
    char *out = NULL;
    size_t len;

    if (uri == NULL)
        uri = "";
    if ((q = strchr(uri, '?')) == NULL)
        return strdup(uri);
    if (redact_fields(uri, (size_t)(q - uri) + 1, q + 1, strlen(q + 1), 0, &out, &len) != KS_OK)
        return NULL;
    return out;
}

/* ---- bodies ---- */

typedef enum { CT_NONE, CT_JSON, CT_FORM, CT_OTHER } content_kind;

static int eq_ci(const char *s, size_t n, const char *lit)
{
    size_t i;

    for (i = 0; i < n && lit[i]; i++)
        if (lower(s[i]) != lit[i])
            return 0;
    return i == n && lit[i] == '\0';
}

/* The media type, parameters ignored: application/json or any "+json"
 * type, application/x-www-form-urlencoded, none, or something else. */
static content_kind classify(const char *ct)
{
    size_t n;

    if (ct == NULL)
        return CT_NONE;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    n = strcspn(ct, ";");
    while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    if (n == 0)
        return CT_NONE;
    if (eq_ci(ct, n, "application/json"))
        return CT_JSON;
    if (eq_ci(ct, n, "application/x-www-form-urlencoded"))
        return CT_FORM;
    if (n > 5 && memchr(ct, '/', n - 5) != NULL && eq_ci(ct + n - 5, 5, "+json"))
        return CT_JSON;
    return CT_OTHER;
}

static ks_status json_body(const char *body, size_t len, char **out, size_t *out_len)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    rctx c = {0};
    ks_status st = KS_OK;
    char *text = NULL;

    *out = NULL;
    if (root == NULL)   /* not JSON, or a scalar: not recorded */
        return json_error_code(&jerr) == json_error_out_of_memory
                   ? KS_FAIL(KS_ERR_NOMEM, "audit body: out of memory")
                   : KS_OK;
    if ((c.red = json_string(REDACTED)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "audit body: out of memory");
        goto done;
    }
    redact_root(&c, root);
    if (c.too_deep)
        goto done;
    if ((text = json_dumps(root, JSON_COMPACT)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "audit body: out of memory");
        goto done;
    }
    *out = text;
    *out_len = strlen(text);
done:
    json_decref(c.red);
    json_decref(root);
    return st;
}

/* A form is printable ASCII (a trailing newline allowed anywhere). */
static int form_bytes_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch < 0x20 && ch != '\t' && ch != '\r' && ch != '\n') || ch >= 0x7f)
            return 0;
    }
    return 1;
}

ks_status gw_redact_body(const char *content_type, const char *body, size_t len, size_t max,
                         char **out, size_t *out_len, int *truncated)
{
    content_kind kind = classify(content_type);
    ks_status st = KS_OK;
    char *res = NULL;
    size_t rlen = 0;
    int trunc = 0;

    if (body == NULL || len == 0 || kind == CT_OTHER)
        goto done;
    if (max > 0 && len > max) {
        trunc = 1;
        goto done;
    }
    if (kind == CT_FORM) {
        if (!form_bytes_ok(body, len))
            goto done;
        if ((st = redact_fields("", 0, body, len, 1, &res, &rlen)) != KS_OK)
            st = KS_FAIL(st, "audit body: cannot redact the form");
    } else {
        st = json_body(body, len, &res, &rlen);
    }
    if (st == KS_OK && res != NULL && max > 0 && rlen > max) {
        /* "[REDACTED]" can be longer than what it replaced */
        free(res);
        res = NULL;
        trunc = 1;
    }
done:
    if (st != KS_OK) {
        free(res);
        res = NULL;
    }
    *out = res;
    if (out_len)
        *out_len = res ? rlen : 0;
    if (truncated)
        *truncated = trunc;
    return st;
}
