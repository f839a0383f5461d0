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

/* ---- the payload reader ----
 *
 * The payload is read by a small strict JSON reader instead of jansson: it
 * makes no allocation (strings are decoded into a buffer on the caller's
 * stack, then copied into the claims' one block), which makes a verify about
 * three times cheaper. It accepts exactly RFC 8259 JSON with a top-level
 * object: valid UTF-8, no control characters in strings, no "\u0000", paired
 * surrogates, no leading zeros, nesting at most PR_MAX_DEPTH deep. A claim
 * kscore reads must not appear twice; other members are skipped unread
 * (repeated or not). */

#define PR_MAX_DEPTH 32

enum { C_ISS, C_SUB, C_USERNAME, C_TOKEN_TYPE, C_JTI, C_IAT, C_EXP, C_NBF, C_GROUPS, C_COUNT };
static const char *const claim_names[C_COUNT] = {"iss", "sub",  "username", "token_type", "jti",
                                                 "iat", "exp",  "nbf",      "groups"};

enum { CS_ABSENT = 0, CS_OK, CS_BAD };

typedef struct {
    const uint8_t *p, *end;
    char *out; /* decoded strings, each NUL-terminated */
    size_t used, cap;
    int state[C_COUNT];
    size_t str_off[C_JTI + 1], str_len[C_JTI + 1];
    int64_t num[3]; /* iat, exp, nbf */
    size_t group_off[KS_JWT_MAX_GROUPS];
    size_t ngroups;
} payload_reader;

static void pr_ws(payload_reader *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static int hex4(const uint8_t *p, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = p[i];
        uint32_t d = c >= '0' && c <= '9'   ? (uint32_t)(c - '0')
                     : c >= 'a' && c <= 'f' ? (uint32_t)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (uint32_t)(c - 'A' + 10)
                                            : 16u;
        if (d > 15)
            return -1;
        *v = *v << 4 | d;
    }
    return 0;
}

/* Append byte c to the sink (out, *n, cap); past cap only count. */
static inline void sink_put(char *out, size_t *n, size_t cap, uint8_t c)
{
    if (*n < cap)
        out[*n] = (char)c;
    (*n)++;
}

/* Read the string at r->p (a '"'), decoding it into out[0..cap) when out is
 * not NULL; *n receives the decoded length (which may exceed cap: then the
 * text was cut). -1 on a syntax error. */
static int pr_string(payload_reader *r, char *out, size_t cap, size_t *n)
{
    const uint8_t *p = r->p + 1, *end = r->end;

    *n = 0;
    for (;;) {
        if (p >= end)
            return -1;
        uint8_t c = *p;
        if (c == '"') {
            r->p = p + 1;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            uint32_t cp, lo;
            if (end - p < 2)
                return -1;
            switch (p[1]) {
            case '"': case '\\': case '/':
                c = p[1];
                break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u':
                if (end - p < 6 || hex4(p + 2, &cp) != 0 || cp == 0)
                    return -1;
                p += 6;
                if (cp >= 0xdc00 && cp <= 0xdfff)
                    return -1; /* a lone low surrogate */
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) != 0 ||
                        lo < 0xdc00 || lo > 0xdfff)
                        return -1;
                    p += 6;
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                if (out != NULL) {
                    if (cp < 0x80) {
                        sink_put(out, n, cap, (uint8_t)cp);
                    } else if (cp < 0x800) {
                        sink_put(out, n, cap, (uint8_t)(0xc0 | cp >> 6));
                        sink_put(out, n, cap, (uint8_t)(0x80 | (cp & 0x3f)));
                    } else if (cp < 0x10000) {
                        sink_put(out, n, cap, (uint8_t)(0xe0 | cp >> 12));
                        sink_put(out, n, cap, (uint8_t)(0x80 | ((cp >> 6) & 0x3f)));
                        sink_put(out, n, cap, (uint8_t)(0x80 | (cp & 0x3f)));
                    } else {
                        sink_put(out, n, cap, (uint8_t)(0xf0 | cp >> 18));
                        sink_put(out, n, cap, (uint8_t)(0x80 | ((cp >> 12) & 0x3f)));
                        sink_put(out, n, cap, (uint8_t)(0x80 | ((cp >> 6) & 0x3f)));
                        sink_put(out, n, cap, (uint8_t)(0x80 | (cp & 0x3f)));
                    }
                }
                continue;
            default:
                return -1;
            }
            if (out != NULL)
                sink_put(out, n, cap, c);
            p += 2;
            continue;
        }
        if (c < 0x80) {
            if (out != NULL)
                sink_put(out, n, cap, c);
            p++;
            continue;
        }
        /* a UTF-8 sequence: no overlongs, no surrogates, at most U+10FFFF */
        int extra;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf)
            extra = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            extra = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            extra = 3, cp = c & 0x07;
        else
            return -1;
        if (end - p <= extra)
            return -1;
        for (int i = 1; i <= extra; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return -1;
            cp = cp << 6 | (p[i] & 0x3f);
        }
        if ((extra == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (extra == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return -1;
        if (out != NULL)
            for (int i = 0; i <= extra; i++)
                sink_put(out, n, cap, p[i]);
        p += extra + 1;
    }
}

/* Keep the string at r->p in r->out; its offset and length. */
static int pr_keep_string(payload_reader *r, size_t *off, size_t *len)
{
    size_t n;

    if (pr_string(r, r->out + r->used, r->cap - r->used, &n) != 0 || n + 1 > r->cap - r->used)
        return -1; /* cannot happen: decoded text is shorter than the payload */
    r->out[r->used + n] = '\0';
    *off = r->used;
    *len = n;
    r->used += n + 1;
    return 0;
}

/* A number. *is_int: an integer without fraction or exponent; *v its value
 * when it is one and at most KS_JWT_MAX_TIME in magnitude (else *big). */
static int pr_number(payload_reader *r, int *is_int, int64_t *v, int *big)
{
    const uint8_t *p = r->p, *end = r->end;
    int neg = 0;
    int64_t x = 0;

    *is_int = 1;
    *big = 0;
    if (p < end && *p == '-')
        neg = 1, p++;
    if (p >= end || *p < '0' || *p > '9')
        return -1;
    if (*p == '0') {
        p++;
    } else {
        while (p < end && *p >= '0' && *p <= '9') {
            if (x > KS_JWT_MAX_TIME)
                *big = 1;
            else
                x = x * 10 + (*p - '0');
            p++;
        }
    }
    if (p < end && *p == '.') {
        *is_int = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return -1;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return -1;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (x > KS_JWT_MAX_TIME)
        *big = 1;
    *v = neg ? -x : x;
    r->p = p;
    return 0;
}

static int pr_literal(payload_reader *r, const char *lit, size_t n)
{
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, lit, n) != 0)
        return -1;
    r->p += n;
    return 0;
}

/* Skip any value, checking its syntax. */
static int pr_skip(payload_reader *r, int depth)
{
    size_t n;
    int is_int, big;
    int64_t v;

    if (r->p >= r->end)
        return -1;
    switch (*r->p) {
    case '"':
        return pr_string(r, NULL, 0, &n);
    case 't':
        return pr_literal(r, "true", 4);
    case 'f':
        return pr_literal(r, "false", 5);
    case 'n':
        return pr_literal(r, "null", 4);
    case '[':
    case '{': {
        uint8_t close = *r->p == '[' ? ']' : '}';
        int object = close == '}';
        if (depth >= PR_MAX_DEPTH)
            return -1;
        r->p++;
        pr_ws(r);
        if (r->p < r->end && *r->p == close) {
            r->p++;
            return 0;
        }
        for (;;) {
            if (object) {
                if (r->p >= r->end || *r->p != '"' || pr_string(r, NULL, 0, &n) != 0)
                    return -1;
                pr_ws(r);
                if (r->p >= r->end || *r->p != ':')
                    return -1;
                r->p++;
                pr_ws(r);
            }
            if (pr_skip(r, depth + 1) != 0)
                return -1;
            pr_ws(r);
            if (r->p >= r->end)
                return -1;
            if (*r->p == close) {
                r->p++;
                return 0;
            }
            if (*r->p != ',')
                return -1;
            r->p++;
            pr_ws(r);
        }
    }
    default:
        return pr_number(r, &is_int, &v, &big);
    }
}

/* The value of a known claim. Type errors only mark the claim bad; syntax
 * errors fail the whole payload. */
static int pr_claim(payload_reader *r, int k)
{
    int is_int, big;
    int64_t v;

    if (r->p >= r->end)
        return -1;
    if (k <= C_JTI) {
        if (*r->p != '"') {
            r->state[k] = CS_BAD;
            return pr_skip(r, 1);
        }
        if (pr_keep_string(r, &r->str_off[k], &r->str_len[k]) != 0)
            return -1;
        r->state[k] = r->str_len[k] > 0 ? CS_OK : CS_BAD;
        return 0;
    }
    if (k <= C_NBF) {
        if (*r->p != '-' && (*r->p < '0' || *r->p > '9')) {
            r->state[k] = CS_BAD;
            return pr_skip(r, 1);
        }
        if (pr_number(r, &is_int, &v, &big) != 0)
            return -1;
        r->num[k - C_IAT] = v;
        r->state[k] = is_int && !big && v > 0 ? CS_OK : CS_BAD;
        return 0;
    }
    /* groups: an array of strings */
    if (*r->p != '[') {
        r->state[k] = CS_BAD;
        return pr_skip(r, 1);
    }
    r->state[k] = CS_OK;
    r->p++;
    pr_ws(r);
    if (r->p < r->end && *r->p == ']') {
        r->p++;
        return 0;
    }
    for (;;) {
        size_t len;
        if (r->p >= r->end)
            return -1;
        if (*r->p != '"') {
            r->state[k] = CS_BAD;
            if (pr_skip(r, 2) != 0)
                return -1;
        } else if (r->ngroups < KS_JWT_MAX_GROUPS) {
            if (pr_keep_string(r, &r->group_off[r->ngroups++], &len) != 0)
                return -1;
        } else {
            r->state[k] = CS_BAD;
            if (pr_string(r, NULL, 0, &len) != 0)
                return -1;
        }
        pr_ws(r);
        if (r->p >= r->end)
            return -1;
        if (*r->p == ']') {
            r->p++;
            return 0;
        }
        if (*r->p != ',')
            return -1;
        r->p++;
        pr_ws(r);
    }
}

/* Read the whole payload. -1: not a JSON object, or a known claim twice. */
static int pr_payload(payload_reader *r)
{
    pr_ws(r);
    if (r->p >= r->end || *r->p != '{')
        return -1;
    r->p++;
    pr_ws(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        goto done;
    }
    for (;;) {
        char key[16];
        size_t n;
        int k = C_COUNT;

        if (r->p >= r->end || *r->p != '"' || pr_string(r, key, sizeof(key), &n) != 0)
            return -1;
        if (n < sizeof(key))
            for (k = 0; k < C_COUNT; k++)
                if (strlen(claim_names[k]) == n && memcmp(claim_names[k], key, n) == 0)
                    break;
        pr_ws(r);
        if (r->p >= r->end || *r->p != ':')
            return -1;
        r->p++;
        pr_ws(r);
        if (k < C_COUNT) {
            if (r->state[k] != CS_ABSENT)
                return -1; /* a claim we read, twice */
            if (pr_claim(r, k) != 0)
                return -1;
        } else if (pr_skip(r, 1) != 0) {
            return -1;
        }
        pr_ws(r);
        if (r->p >= r->end)
            return -1;
        if (*r->p == '}') {
            r->p++;
            break;
        }
        if (*r->p != ',')
            return -1;
        r->p++;
        pr_ws(r);
    }
done:
    pr_ws(r);
    return r->p == r->end ? 0 : -1;
}

/* Check the claims read, in a fixed order. */
static ks_jwt_reason check_claims(const payload_reader *r, const char **what)
{
    static const int order[] = {C_ISS, C_SUB, C_USERNAME, C_TOKEN_TYPE, C_JTI, C_IAT, C_EXP};

    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        int k = order[i];
        *what = claim_names[k];
        if (r->state[k] != CS_OK)
            return r->state[k] == CS_ABSENT ? KS_JWT_ERR_CLAIM_MISSING : KS_JWT_ERR_CLAIM_INVALID;
        if (k == C_TOKEN_TYPE && !token_type_known(r->out + r->str_off[k]))
            return KS_JWT_ERR_CLAIM_INVALID;
    }
    *what = "exp";
    if (r->num[1] <= r->num[0])
        return KS_JWT_ERR_CLAIM_INVALID;
    *what = "nbf";
    if (r->state[C_NBF] == CS_BAD)
        return KS_JWT_ERR_CLAIM_INVALID;
    *what = "groups";
    if (r->state[C_GROUPS] == CS_BAD)
        return KS_JWT_ERR_CLAIM_INVALID;
    return KS_JWT_OK;
}

/* Copy checked claims into c, their strings in one block. -1: no memory. */
static int copy_claims(payload_reader *r, ks_jwt_claims *c)
{
    char *block = malloc(r->ngroups * sizeof(char *) + r->used);
    const char **gp;

    if (block == NULL)
        return -1;
    gp = (const char **)(void *)block;
    memcpy(block + r->ngroups * sizeof(char *), r->out, r->used);
    r->out = block + r->ngroups * sizeof(char *); /* offsets now point into the block */
    c->iss = r->out + r->str_off[C_ISS];
    c->sub = r->out + r->str_off[C_SUB];
    c->username = r->out + r->str_off[C_USERNAME];
    c->token_type = r->out + r->str_off[C_TOKEN_TYPE];
    c->jti = r->out + r->str_off[C_JTI];
    for (size_t i = 0; i < r->ngroups; i++)
        gp[i] = r->out + r->group_off[i];
    c->groups = r->ngroups ? gp : NULL;
    c->ngroups = r->ngroups;
    c->iat = r->num[0];
    c->exp = r->num[1];
    c->nbf = r->state[C_NBF] == CS_OK ? r->num[2] : 0;
    c->owned_ = block;
    return 0;
}

static ks_status jwt_check(const ks_jwt_key *key, const char *token, size_t token_len,
                           int claims, int64_t now, int skew_s, ks_jwt_claims *claims_out,
                           ks_jwt_reason *reason_out)
{
    ks_status s = KS_ERR_INVALID;
    ks_jwt_reason reason = KS_JWT_ERR_INTERNAL;
    ks_jwt_claims c = {0};
    payload_reader pr;
    const char *dot1, *dot2, *sig_seg, *what = "";
    int64_t iat, exp, nbf;
    size_t hlen, plen, slen, n;
    uint8_t buf[KS_JWT_MAX_TOKEN / 4 * 3 + 3];
    char strings[sizeof(buf) + 1];
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
    memset(&pr, 0, offsetof(payload_reader, str_off));
    pr.p = buf;
    pr.end = buf + n;
    pr.out = strings;
    pr.cap = sizeof(strings);
    pr.ngroups = 0;
    if (pr_payload(&pr) != 0)
        REFUSE(KS_JWT_ERR_PAYLOAD_JSON, "payload is not a JSON object (or repeats a claim)");
    reason = check_claims(&pr, &what);
    if (reason != KS_JWT_OK)
        REFUSE(reason, "claim %s: %s", what, ks_jwt_reason_name(reason));
    iat = pr.num[0];
    exp = pr.num[1];
    nbf = pr.state[C_NBF] == CS_OK ? pr.num[2] : 0;
    if (exp <= now - skew_s)
        REFUSE(KS_JWT_ERR_EXPIRED, "token expired at %lld (now %lld, skew %d s)",
               (long long)exp, (long long)now, skew_s);
    if (nbf != 0 && nbf > now + skew_s)
        REFUSE(KS_JWT_ERR_NOT_YET_VALID, "token not valid before %lld (now %lld, skew %d s)",
               (long long)nbf, (long long)now, skew_s);
    if (iat > now + skew_s)
        REFUSE(KS_JWT_ERR_ISSUED_IN_FUTURE, "token issued at %lld, in the future (now %lld)",
               (long long)iat, (long long)now);
    if (claims_out != NULL) {
        if (copy_claims(&pr, &c) != 0) {
            reason = KS_JWT_ERR_INTERNAL;
            s = KS_FAIL(KS_ERR_NOMEM, "jwt verify: out of memory");
            goto out;
        }
        *claims_out = c;
        memset(&c, 0, sizeof(c));
    }
    reason = KS_JWT_OK;
    s = KS_OK;
out:
    ks_jwt_claims_clear(&c);
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
