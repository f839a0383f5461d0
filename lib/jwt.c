#include "jwt.h"

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SIG_LEN 32     /* HMAC-SHA256 bytes */
#define SIG_B64_LEN 43 /* its base64url length */
#define CTX_CACHE 16   /* keyed HMAC contexts kept for reuse per key */

/* base64url of {"alg":"HS256","typ":"JWT"}: what ks_jwt_sign writes, and a
 * header verify can accept without parsing it. */
static const char canonical_header[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
#define CANONICAL_HEADER_LEN (sizeof(canonical_header) - 1)

static const char *const reason_names[KS_JWT_REASON_COUNT] = {
    [KS_JWT_OK] = "ok",
    [KS_JWT_ERR_TOO_LARGE] = "too_large",
    [KS_JWT_ERR_MALFORMED] = "malformed",
    [KS_JWT_ERR_BASE64] = "bad_base64url",
    [KS_JWT_ERR_HEADER_JSON] = "bad_header",
    [KS_JWT_ERR_HEADER_DUPLICATE] = "duplicate_header_member",
    [KS_JWT_ERR_ALG_MISSING] = "alg_missing",
    [KS_JWT_ERR_ALG_NOT_STRING] = "alg_not_string",
    [KS_JWT_ERR_ALG_NONE] = "alg_none",
    [KS_JWT_ERR_ALG_UNSUPPORTED] = "alg_unsupported",
    [KS_JWT_ERR_HEADER_UNSUPPORTED] = "header_unsupported",
    [KS_JWT_ERR_SIGNATURE] = "bad_signature",
    [KS_JWT_ERR_PAYLOAD_JSON] = "bad_payload",
    [KS_JWT_ERR_CLAIM_MISSING] = "claim_missing",
    [KS_JWT_ERR_CLAIM_INVALID] = "claim_invalid",
    [KS_JWT_ERR_EXPIRED] = "expired",
    [KS_JWT_ERR_NOT_YET_VALID] = "not_yet_valid",
    [KS_JWT_ERR_ISSUED_IN_FUTURE] = "issued_in_future",
    [KS_JWT_ERR_INTERNAL] = "internal",
};

const char *ks_jwt_reason_name(ks_jwt_reason r)
{
    if ((unsigned)r >= KS_JWT_REASON_COUNT)
        return "unknown";
    return reason_names[r];
}

/* ---- base64url ---- */

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Value + 1 of an alphabet byte, 0 for anything else (so the rest of the
 * table is zero without overriding initialisers). */
static const uint8_t b64url_table[256] = {
    ['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6, ['G'] = 7, ['H'] = 8,
    ['I'] = 9, ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15,
    ['P'] = 16, ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22,
    ['W'] = 23, ['X'] = 24, ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29,
    ['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36,
    ['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41, ['p'] = 42, ['q'] = 43,
    ['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49, ['x'] = 50,
    ['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56, ['4'] = 57,
    ['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['-'] = 63, ['_'] = 64,
};
#define B64_BAD 64
static inline unsigned b64v(uint8_t c)
{
    return b64url_table[c] ? b64url_table[c] - 1u : B64_BAD;
}

size_t ks_jwt_b64url_encode(const void *in, size_t len, char *out, size_t outcap)
{
    const uint8_t *p = in;
    size_t need = len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
    size_t o = 0, i = 0;

    if (outcap == 0)
        return 0;
    if (need >= outcap) {
        out[0] = '\0';
        return 0;
    }
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = b64url_alphabet[v >> 18];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

ks_status ks_jwt_b64url_decode(const char *in, size_t len, void *out, size_t outcap,
                               size_t *outlen)
{
    const uint8_t *s = (const uint8_t *)in;
    uint8_t *d = out;
    size_t need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    size_t o = 0, i = 0;

    if (len % 4 == 1)
        return KS_FAIL(KS_ERR_INVALID, "base64url: impossible length %zu", len);
    for (size_t k = 0; k < len; k++)
        if (b64v(s[k]) == B64_BAD)
            return KS_FAIL(KS_ERR_INVALID, "base64url: bad byte 0x%02x at offset %zu", s[k], k);
    if (need > outcap)
        return KS_FAIL(KS_ERR_TOO_LARGE, "base64url: %zu bytes do not fit in %zu", need, outcap);
    for (; i + 4 <= len; i += 4) {
        uint32_t v = (uint32_t)b64v(s[i]) << 18 | (uint32_t)b64v(s[i + 1]) << 12 |
                     (uint32_t)b64v(s[i + 2]) << 6 | b64v(s[i + 3]);
        d[o++] = (uint8_t)(v >> 16);
        d[o++] = (uint8_t)(v >> 8);
        d[o++] = (uint8_t)v;
    }
    if (len - i == 2) {
        uint32_t v = (uint32_t)b64v(s[i]) << 18 | (uint32_t)b64v(s[i + 1]) << 12;
        if (v & 0xffff) /* non-canonical: unused bits set */
            return KS_FAIL(KS_ERR_INVALID, "base64url: non-zero trailing bits");
        d[o++] = (uint8_t)(v >> 16);
    } else if (len - i == 3) {
        uint32_t v = (uint32_t)b64v(s[i]) << 18 | (uint32_t)b64v(s[i + 1]) << 12 |
                     (uint32_t)b64v(s[i + 2]) << 6;
        if (v & 0xff)
            return KS_FAIL(KS_ERR_INVALID, "base64url: non-zero trailing bits");
        d[o++] = (uint8_t)(v >> 16);
        d[o++] = (uint8_t)(v >> 8);
    }
    *outlen = o;
    return KS_OK;
}

/* ---- keys ---- */

struct ctx_cache {
    pthread_mutex_t lock;
    EVP_MAC_CTX *ctx[CTX_CACHE];
    size_t n;
};

struct ks_jwt_key {
    EVP_MAC *mac;
    EVP_MAC_CTX *tmpl;        /* keyed; only duplicated, never updated */
    struct ctx_cache *cache;  /* behind a pointer: a const key still recycles */
};

ks_status ks_jwt_key_create(const void *secret, size_t len, ks_jwt_key **out)
{
    ks_status s = KS_ERR_NOMEM;
    ks_jwt_key *k = NULL;
    OSSL_PARAM params[2] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };

    if (secret == NULL || out == NULL || len < KS_JWT_MIN_SECRET || len > KS_JWT_MAX_SECRET) {
        s = KS_FAIL(KS_ERR_INVALID, "jwt: the HS256 secret must have %d to %d bytes, not %zu",
                    KS_JWT_MIN_SECRET, KS_JWT_MAX_SECRET, secret ? len : 0);
        goto out;
    }
    k = calloc(1, sizeof(*k));
    if (k == NULL || (k->cache = calloc(1, sizeof(*k->cache))) == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "jwt: out of memory");
        goto out;
    }
    pthread_mutex_init(&k->cache->lock, NULL);
    k->mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (k->mac == NULL || (k->tmpl = EVP_MAC_CTX_new(k->mac)) == NULL ||
        !EVP_MAC_init(k->tmpl, secret, len, params)) {
        s = KS_FAIL(KS_ERR_INTERNAL, "jwt: libcrypto has no usable HMAC-SHA256");
        goto out;
    }
    *out = k;
    k = NULL;
    s = KS_OK;
out:
    ks_jwt_key_destroy(k);
    return s;
}

void ks_jwt_key_destroy(ks_jwt_key *key)
{
    if (key == NULL)
        return;
    if (key->cache) {
        for (size_t i = 0; i < key->cache->n; i++)
            EVP_MAC_CTX_free(key->cache->ctx[i]);
        pthread_mutex_destroy(&key->cache->lock);
        free(key->cache);
    }
    EVP_MAC_CTX_free(key->tmpl); /* OpenSSL cleanses the key material */
    EVP_MAC_free(key->mac);
    free(key);
}

/* HMAC-SHA256 of data with the key. A keyed context is taken from the cache
 * (or duplicated from the template) and re-initialised with the key it
 * already holds, which costs half of a fresh duplicate. */
static int key_hmac(const ks_jwt_key *key, const void *data, size_t len, uint8_t out[SIG_LEN])
{
    struct ctx_cache *cc = key->cache;
    EVP_MAC_CTX *c = NULL;
    size_t n = 0;
    int ok;

    pthread_mutex_lock(&cc->lock);
    if (cc->n > 0)
        c = cc->ctx[--cc->n];
    pthread_mutex_unlock(&cc->lock);
    if (c == NULL && (c = EVP_MAC_CTX_dup(key->tmpl)) == NULL)
        return -1;
    ok = EVP_MAC_init(c, NULL, 0, NULL) && EVP_MAC_update(c, data, len) &&
         EVP_MAC_final(c, out, &n, SIG_LEN) && n == SIG_LEN;
    if (ok) {
        pthread_mutex_lock(&cc->lock);
        if (cc->n < CTX_CACHE) {
            cc->ctx[cc->n++] = c;
            c = NULL;
        }
        pthread_mutex_unlock(&cc->lock);
    }
    EVP_MAC_CTX_free(c);
    return ok ? 0 : -1;
}

/* ---- claims ---- */

void ks_jwt_claims_clear(ks_jwt_claims *c)
{
    if (c == NULL)
        return;
    free(c->owned_);
    memset(c, 0, sizeof(*c));
}

int ks_jwt_claims_is_access(const ks_jwt_claims *c)
{
    return c && c->token_type && strcmp(c->token_type, KS_JWT_ACCESS_TOKEN) == 0;
}

int ks_jwt_claims_is_refresh(const ks_jwt_claims *c)
{
    return c && c->token_type && strcmp(c->token_type, KS_JWT_REFRESH_TOKEN) == 0;
}

static int token_type_known(const char *t)
{
    return t && (strcmp(t, KS_JWT_ACCESS_TOKEN) == 0 || strcmp(t, KS_JWT_REFRESH_TOKEN) == 0);
}

static int time_ok(int64_t t)
{
    return t > 0 && t <= KS_JWT_MAX_TIME;
}

/* ---- sign ---- */

static int set_str(json_t *o, const char *name, const char *v)
{
    json_t *j = json_string(v); /* NULL for invalid UTF-8 */
    return j != NULL && json_object_set_new(o, name, j) == 0;
}

ks_status ks_jwt_sign_key(const ks_jwt_key *key, const ks_jwt_claims *c, char **token_out)
{
    ks_status s = KS_ERR_INVALID;
    json_t *o = NULL, *groups = NULL;
    char *payload = NULL, *tok = NULL;
    size_t plen, pb64, len;
    uint8_t sig[SIG_LEN];

    if (key == NULL || c == NULL || token_out == NULL) {
        s = KS_FAIL(KS_ERR_INVALID, "jwt sign: NULL argument");
        goto out;
    }
    if (!c->iss || !*c->iss || !c->sub || !*c->sub || !c->username || !*c->username ||
        !c->jti || !*c->jti) {
        s = KS_FAIL(KS_ERR_INVALID, "jwt sign: iss, sub, username and jti must be non-empty");
        goto out;
    }
    if (!token_type_known(c->token_type)) {
        s = KS_FAIL(KS_ERR_INVALID, "jwt sign: token_type must be access_token or refresh_token");
        goto out;
    }
    if (!time_ok(c->iat) || !time_ok(c->exp) || c->exp <= c->iat ||
        (c->nbf != 0 && !time_ok(c->nbf))) {
        s = KS_FAIL(KS_ERR_INVALID, "jwt sign: need 0 < iat < exp <= %lld and nbf 0 or in range",
                    (long long)KS_JWT_MAX_TIME);
        goto out;
    }
    if (c->ngroups > KS_JWT_MAX_GROUPS || (c->ngroups > 0 && c->groups == NULL)) {
        s = KS_FAIL(KS_ERR_INVALID, "jwt sign: at most %d groups", KS_JWT_MAX_GROUPS);
        goto out;
    }

    o = json_object();
    groups = json_array();
    if (o == NULL || groups == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "jwt sign: out of memory");
        goto out;
    }
    for (size_t i = 0; i < c->ngroups; i++) {
        json_t *g = c->groups[i] ? json_string(c->groups[i]) : NULL;
        if (g == NULL || json_array_append_new(groups, g) != 0) {
            s = KS_FAIL(KS_ERR_INVALID, "jwt sign: group %zu is NULL or not UTF-8", i);
            goto out;
        }
    }
    if (!set_str(o, "iss", c->iss) || !set_str(o, "sub", c->sub) ||
        !set_str(o, "username", c->username) || !set_str(o, "token_type", c->token_type) ||
        !set_str(o, "jti", c->jti)) {
        s = KS_FAIL(KS_ERR_INVALID, "jwt sign: a claim is not valid UTF-8");
        goto out;
    }
    if (json_object_set_new(o, "groups", groups) != 0) {
        groups = NULL; /* set_new consumed it even on failure */
        s = KS_FAIL(KS_ERR_NOMEM, "jwt sign: out of memory");
        goto out;
    }
    groups = NULL;
    if (json_object_set_new(o, "iat", json_integer(c->iat)) != 0 ||
        json_object_set_new(o, "exp", json_integer(c->exp)) != 0 ||
        (c->nbf != 0 && json_object_set_new(o, "nbf", json_integer(c->nbf)) != 0)) {
        s = KS_FAIL(KS_ERR_NOMEM, "jwt sign: out of memory");
        goto out;
    }
    payload = json_dumps(o, JSON_COMPACT);
    if (payload == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "jwt sign: out of memory");
        goto out;
    }
    plen = strlen(payload);
    pb64 = plen / 3 * 4 + (plen % 3 ? plen % 3 + 1 : 0);
    len = CANONICAL_HEADER_LEN + 1 + pb64 + 1 + SIG_B64_LEN;
    if (len > KS_JWT_MAX_TOKEN) {
        s = KS_FAIL(KS_ERR_TOO_LARGE, "jwt sign: the token would have %zu bytes, cap %d", len,
                    KS_JWT_MAX_TOKEN);
        goto out;
    }
    tok = malloc(len + 1);
    if (tok == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "jwt sign: out of memory");
        goto out;
    }
    memcpy(tok, canonical_header, CANONICAL_HEADER_LEN);
    tok[CANONICAL_HEADER_LEN] = '.';
    ks_jwt_b64url_encode(payload, plen, tok + CANONICAL_HEADER_LEN + 1, pb64 + 1);
    tok[CANONICAL_HEADER_LEN + 1 + pb64] = '.';
    if (key_hmac(key, tok, CANONICAL_HEADER_LEN + 1 + pb64, sig) != 0) {
        s = KS_FAIL(KS_ERR_INTERNAL, "jwt sign: HMAC failed");
        goto out;
    }
    ks_jwt_b64url_encode(sig, SIG_LEN, tok + CANONICAL_HEADER_LEN + 1 + pb64 + 1,
                         SIG_B64_LEN + 1);
    *token_out = tok;
    tok = NULL;
    s = KS_OK;
out:
    free(tok);
    free(payload);
    json_decref(groups);
    json_decref(o);
    return s;
}

/* ---- verify ---- */

/* Set the reason, raise the status with a message naming it. */
#define REFUSE(r, ...)                                  \
    do {                                                \
        reason = (r);                                   \
        s = KS_FAIL(KS_ERR_DENIED, "jwt: " __VA_ARGS__); \
        goto out;                                       \
    } while (0)

static ks_jwt_reason check_header(const char *seg, size_t len, uint8_t *buf, size_t cap)
{
    ks_jwt_reason r = KS_JWT_ERR_HEADER_JSON;
    json_t *h = NULL, *alg, *typ;
    json_error_t err;
    size_t n;

    if (len == CANONICAL_HEADER_LEN && memcmp(seg, canonical_header, len) == 0)
        return KS_JWT_OK;
    if (ks_jwt_b64url_decode(seg, len, buf, cap, &n) != KS_OK)
        return KS_JWT_ERR_BASE64;
    h = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES, &err);
    if (h == NULL) {
        r = json_error_code(&err) == json_error_duplicate_key ? KS_JWT_ERR_HEADER_DUPLICATE
                                                              : KS_JWT_ERR_HEADER_JSON;
        goto out;
    }
    if (!json_is_object(h))
        goto out;
    alg = json_object_get(h, "alg");
    if (alg == NULL)
        r = KS_JWT_ERR_ALG_MISSING;
    else if (!json_is_string(alg))
        r = KS_JWT_ERR_ALG_NOT_STRING;
    else if (strcasecmp(json_string_value(alg), "none") == 0)
        r = KS_JWT_ERR_ALG_NONE;
    else if (strcmp(json_string_value(alg), "HS256") != 0)
        r = KS_JWT_ERR_ALG_UNSUPPORTED;
    else if (((typ = json_object_get(h, "typ")) != NULL &&
              (!json_is_string(typ) || strcasecmp(json_string_value(typ), "JWT") != 0)) ||
             json_object_get(h, "crit") != NULL)
        r = KS_JWT_ERR_HEADER_UNSUPPORTED;
    else
        r = KS_JWT_OK;
out:
    json_decref(h);
    return r;
}

/* A required non-empty string claim: its length in *len, or a reason. */
static ks_jwt_reason claim_str(json_t *o, const char *name, const char **v, size_t *len)
{
    json_t *j = json_object_get(o, name);

    if (j == NULL)
        return KS_JWT_ERR_CLAIM_MISSING;
    if (!json_is_string(j) || json_string_length(j) == 0)
        return KS_JWT_ERR_CLAIM_INVALID;
    *v = json_string_value(j);
    *len = json_string_length(j);
    return KS_JWT_OK;
}

static ks_jwt_reason claim_time(json_t *o, const char *name, int required, int64_t *v)
{
    json_t *j = json_object_get(o, name);

    if (j == NULL)
        return required ? KS_JWT_ERR_CLAIM_MISSING : KS_JWT_OK;
    if (!json_is_integer(j) || !time_ok(json_integer_value(j)))
        return KS_JWT_ERR_CLAIM_INVALID;
    *v = json_integer_value(j);
    return KS_JWT_OK;
}

static char *arena_put(char **p, const char *s, size_t len)
{
    char *r = *p;
    memcpy(r, s, len);
    r[len] = '\0';
    *p += len + 1;
    return r;
}

/* Read the claims of payload object o into c (strings in one block). */
static ks_jwt_reason read_claims(json_t *o, ks_jwt_claims *c, const char **what)
{
    static const char *const names[5] = {"iss", "sub", "username", "token_type", "jti"};
    const char *v[5];
    size_t len[5], total = 0, ngroups = 0;
    json_t *groups;
    ks_jwt_reason r;
    char *block, *p;
    const char **gp;

    for (int i = 0; i < 5; i++) {
        if ((r = claim_str(o, names[i], &v[i], &len[i])) != KS_JWT_OK) {
            *what = names[i];
            return r;
        }
        total += len[i] + 1;
    }
    *what = "token_type";
    if (!token_type_known(v[3]))
        return KS_JWT_ERR_CLAIM_INVALID;
    *what = "iat";
    if ((r = claim_time(o, "iat", 1, &c->iat)) != KS_JWT_OK)
        return r;
    *what = "exp";
    if ((r = claim_time(o, "exp", 1, &c->exp)) != KS_JWT_OK)
        return r;
    if (c->exp <= c->iat)
        return KS_JWT_ERR_CLAIM_INVALID;
    *what = "nbf";
    if ((r = claim_time(o, "nbf", 0, &c->nbf)) != KS_JWT_OK)
        return r;
    *what = "groups";
    groups = json_object_get(o, "groups");
    if (groups != NULL) {
        if (!json_is_array(groups) || json_array_size(groups) > KS_JWT_MAX_GROUPS)
            return KS_JWT_ERR_CLAIM_INVALID;
        ngroups = json_array_size(groups);
        for (size_t i = 0; i < ngroups; i++) {
            json_t *g = json_array_get(groups, i);
            if (!json_is_string(g))
                return KS_JWT_ERR_CLAIM_INVALID;
            total += json_string_length(g) + 1;
        }
    }

    block = malloc(ngroups * sizeof(char *) + total);
    if (block == NULL) {
        *what = "memory";
        return KS_JWT_ERR_INTERNAL;
    }
    gp = (const char **)(void *)block;
    p = block + ngroups * sizeof(char *);
    c->iss = arena_put(&p, v[0], len[0]);
    c->sub = arena_put(&p, v[1], len[1]);
    c->username = arena_put(&p, v[2], len[2]);
    c->token_type = arena_put(&p, v[3], len[3]);
    c->jti = arena_put(&p, v[4], len[4]);
    for (size_t i = 0; i < ngroups; i++) {
        json_t *g = json_array_get(groups, i);
        gp[i] = arena_put(&p, json_string_value(g), json_string_length(g));
    }
    c->groups = ngroups ? gp : NULL;
    c->ngroups = ngroups;
    c->owned_ = block;
    return KS_JWT_OK;
}

static ks_status jwt_check(const ks_jwt_key *key, const char *token, size_t token_len,
                           int claims, int64_t now, int skew_s, ks_jwt_claims *claims_out,
                           ks_jwt_reason *reason_out)
{
    ks_status s = KS_ERR_INVALID;
    ks_jwt_reason reason = KS_JWT_ERR_INTERNAL;
    ks_jwt_claims c = {0};
    json_t *payload = NULL;
    json_error_t err;
    const char *dot1, *dot2, *sig_seg, *what = "";
    size_t hlen, plen, slen, n;
    uint8_t buf[KS_JWT_MAX_TOKEN / 4 * 3 + 3];
    uint8_t mac[SIG_LEN];
    char mac_b64[SIG_B64_LEN + 1];

    if (key == NULL || (token == NULL && token_len > 0)) {
        s = KS_FAIL(KS_ERR_INVALID, "jwt verify: NULL argument");
        goto out;
    }
    if (claims && (skew_s < 0 || skew_s > KS_JWT_MAX_SKEW_S || now < 0 || now > KS_JWT_MAX_TIME)) {
        s = KS_FAIL(KS_ERR_INVALID, "jwt verify: skew %d or time %lld out of range", skew_s,
                    (long long)now);
        goto out;
    }
    if (token_len > KS_JWT_MAX_TOKEN)
        REFUSE(KS_JWT_ERR_TOO_LARGE, "token of %zu bytes over the cap of %d", token_len,
               KS_JWT_MAX_TOKEN);
    dot1 = token_len ? memchr(token, '.', token_len) : NULL;
    dot2 = dot1 ? memchr(dot1 + 1, '.', token_len - (size_t)(dot1 + 1 - token)) : NULL;
    if (dot2 == NULL)
        REFUSE(KS_JWT_ERR_MALFORMED, "token does not have three segments");
    sig_seg = dot2 + 1;
    slen = token_len - (size_t)(sig_seg - token);
    if (memchr(sig_seg, '.', slen) != NULL)
        REFUSE(KS_JWT_ERR_MALFORMED, "token has more than three segments");
    hlen = (size_t)(dot1 - token);
    plen = (size_t)(dot2 - dot1 - 1);
    if (hlen == 0 || plen == 0)
        REFUSE(KS_JWT_ERR_MALFORMED, "empty header or payload segment");

    reason = check_header(token, hlen, buf, sizeof(buf));
    if (reason != KS_JWT_OK)
        REFUSE(reason, "header refused: %s", ks_jwt_reason_name(reason));

    for (size_t i = 0; i < slen; i++)
        if (b64v((uint8_t)sig_seg[i]) == B64_BAD)
            REFUSE(KS_JWT_ERR_BASE64, "signature is not base64url");
    if (slen != SIG_B64_LEN)
        REFUSE(KS_JWT_ERR_SIGNATURE, "signature has %zu characters, want %d", slen, SIG_B64_LEN);
    if (key_hmac(key, token, (size_t)(dot2 - token), mac) != 0) {
        reason = KS_JWT_ERR_INTERNAL;
        s = KS_FAIL(KS_ERR_INTERNAL, "jwt verify: HMAC failed");
        goto out;
    }
    /* Comparing the canonical encoding also refuses the variants of a valid
     * signature that differ only in the unused bits of the last character. */
    ks_jwt_b64url_encode(mac, SIG_LEN, mac_b64, sizeof(mac_b64));
    if (CRYPTO_memcmp(mac_b64, sig_seg, SIG_B64_LEN) != 0)
        REFUSE(KS_JWT_ERR_SIGNATURE, "signature does not match");

    if (ks_jwt_b64url_decode(dot1 + 1, plen, buf, sizeof(buf), &n) != KS_OK)
        REFUSE(KS_JWT_ERR_BASE64, "payload is not base64url");
    if (!claims) {
        reason = KS_JWT_OK;
        s = KS_OK;
        goto out;
    }
    payload = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES, &err);
    if (payload == NULL || !json_is_object(payload))
        REFUSE(KS_JWT_ERR_PAYLOAD_JSON, "payload is not a JSON object without duplicates");
    reason = read_claims(payload, &c, &what);
    if (reason == KS_JWT_ERR_INTERNAL) {
        s = KS_FAIL(KS_ERR_NOMEM, "jwt verify: out of memory");
        goto out;
    }
    if (reason != KS_JWT_OK)
        REFUSE(reason, "claim %s: %s", what, ks_jwt_reason_name(reason));
    if (c.exp <= now - skew_s)
        REFUSE(KS_JWT_ERR_EXPIRED, "token expired at %lld (now %lld, skew %d s)",
               (long long)c.exp, (long long)now, skew_s);
    if (c.nbf != 0 && c.nbf > now + skew_s)
        REFUSE(KS_JWT_ERR_NOT_YET_VALID, "token not valid before %lld (now %lld, skew %d s)",
               (long long)c.nbf, (long long)now, skew_s);
    if (c.iat > now + skew_s)
        REFUSE(KS_JWT_ERR_ISSUED_IN_FUTURE, "token issued at %lld, in the future (now %lld)",
               (long long)c.iat, (long long)now);
    if (claims_out) {
        *claims_out = c;
        memset(&c, 0, sizeof(c));
    }
    reason = KS_JWT_OK;
    s = KS_OK;
out:
    ks_jwt_claims_clear(&c);
    json_decref(payload);
    if (reason_out)
        *reason_out = s == KS_OK ? KS_JWT_OK : reason;
    return s;
}

ks_status ks_jwt_verify_key(const ks_jwt_key *key, const char *token, size_t token_len,
                            int64_t now, int skew_s, ks_jwt_claims *claims_out,
                            ks_jwt_reason *reason_out)
{
    return jwt_check(key, token, token_len, 1, now, skew_s, claims_out, reason_out);
}

ks_status ks_jwt_verify_signature(const ks_jwt_key *key, const char *token, size_t token_len,
                                  ks_jwt_reason *reason_out)
{
    return jwt_check(key, token, token_len, 0, 0, 0, NULL, reason_out);
}

ks_status ks_jwt_sign(const void *secret, size_t secret_len, const ks_jwt_claims *claims,
                      char **token_out)
{
    ks_jwt_key *key = NULL;
    ks_status s = ks_jwt_key_create(secret, secret_len, &key);

    if (s == KS_OK)
        s = ks_jwt_sign_key(key, claims, token_out);
    ks_jwt_key_destroy(key);
    return s;
}

ks_status ks_jwt_verify(const void *secret, size_t secret_len, const char *token,
                        size_t token_len, int64_t now, int skew_s, ks_jwt_claims *claims_out,
                        ks_jwt_reason *reason_out)
{
    ks_jwt_key *key = NULL;
    ks_status s = ks_jwt_key_create(secret, secret_len, &key);

    if (s == KS_OK)
        s = ks_jwt_verify_key(key, token, token_len, now, skew_s, claims_out, reason_out);
    else if (reason_out)
        *reason_out = KS_JWT_ERR_INTERNAL;
    ks_jwt_key_destroy(key);
    return s;
}

ks_status ks_jwt_new_jti(char out[KS_JWT_JTI_SIZE])
{
    uint8_t r[16];

    if (RAND_bytes(r, sizeof(r)) != 1)
        return KS_FAIL(KS_ERR_INTERNAL, "jwt: RAND_bytes failed");
    ks_jwt_b64url_encode(r, sizeof(r), out, KS_JWT_JTI_SIZE);
    return KS_OK;
}
