/* Unit tests: lib/jwt.c (HS256 tokens).
 *
 * Known vectors were computed outside this code, with the openssl command:
 *   b64u() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
 *   printf '%s' "$H.$P" | openssl dgst -sha256 -hmac "$KEY" -binary | b64u
 * and the RFC 7515 appendix A.1 example is checked as printed in the RFC.
 * Tokens with odd headers or payloads are built by mk() below, which signs
 * with OpenSSL's one-shot HMAC(), not with the library's own code path, so
 * every later check (claims, times) is reached with a correct signature. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jwt.h"

#define KEY "kscore-test-secret-0123456789abcdef!" /* 36 bytes */
#define KEYLEN (sizeof(KEY) - 1)
#define T0 1700000000LL

/* openssl-computed: {"alg":"HS256","typ":"JWT"} . {"iss":"kubesphere","sub":"alice",
 * "username":"alice","token_type":"access_token","jti":"jti-0001","groups":["dev","ops"],
 * "iat":1700000000,"exp":1700007200} with KEY */
static const char vec1[] =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJpc3MiOiJrdWJlc3BoZXJlIiwic3ViIjoiYWxpY2UiLCJ1c2VybmFtZSI6ImFsaWNlIiwidG9rZW5fdHlwZSI6"
    "ImFjY2Vzc190b2tlbiIsImp0aSI6Imp0aS0wMDAxIiwiZ3JvdXBzIjpbImRldiIsIm9wcyJdLCJpYXQiOjE3MDAw"
    "MDAwMDAsImV4cCI6MTcwMDAwNzIwMH0."
    "Gxvdte8Cd3dTUXUF2RuC4Dxz94G_taE0gaixB-6xsdU";

/* {"iss":"kubesphere","sub":"bob","username":"bob","token_type":"refresh_token",
 * "jti":"jti-0002","groups":[],"iat":1700000000,"exp":1700014400,"nbf":1700000000} */
static const char vec2[] =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJpc3MiOiJrdWJlc3BoZXJlIiwic3ViIjoiYm9iIiwidXNlcm5hbWUiOiJib2IiLCJ0b2tlbl90eXBlIjoicmVm"
    "cmVzaF90b2tlbiIsImp0aSI6Imp0aS0wMDAyIiwiZ3JvdXBzIjpbXSwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3"
    "MDAwMTQ0MDAsIm5iZiI6MTcwMDAwMDAwMH0."
    "SQZrkB5h2FPcMVFgGieTnTl8F9R3IicnFMgg8JXKeaE";

/* RFC 7515 A.1: header {"typ":"JWT",\r\n "alg":"HS256"}, key = the JWK "k". */
static const char rfc_token[] =
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0"
    "cnVlfQ."
    "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
static const char rfc_k[] =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";

static const char good_payload[] =
    "{\"iss\":\"kubesphere\",\"sub\":\"alice\",\"username\":\"alice\",\"token_type\":"
    "\"access_token\",\"jti\":\"j1\",\"iat\":1700000000,\"exp\":1700007200}";
static const char hs256[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* ---- helpers ---- */

enum { SIG_NONE, SIG_HMAC, SIG_GARBAGE };

/* header_json . payload_json . signature, each JSON encoded as given. */
static char *mk(const char *header_json, const char *payload_json, int sig)
{
    size_t hl = strlen(header_json), pl = strlen(payload_json);
    size_t cap = (hl + pl) * 2 + 128;
    char *t = malloc(cap);
    size_t n;
    unsigned char mac[32];
    unsigned int maclen = 0;

    assert_non_null(t);
    n = ks_jwt_b64url_encode(header_json, hl, t, cap);
    t[n++] = '.';
    n += ks_jwt_b64url_encode(payload_json, pl, t + n, cap - n);
    if (sig == SIG_HMAC) {
        assert_non_null(HMAC(EVP_sha256(), KEY, (int)KEYLEN, (const unsigned char *)t, n, mac,
                             &maclen));
        assert_int_equal(maclen, 32);
        t[n++] = '.';
        n += ks_jwt_b64url_encode(mac, 32, t + n, cap - n);
    } else if (sig == SIG_GARBAGE) {
        memcpy(t + n, ".c2lnbmF0dXJl", 14); /* "signature" */
        n += 13;
    } else {
        t[n++] = '.';
        t[n] = '\0';
    }
    return t;
}

static ks_jwt_key *key_new(void)
{
    ks_jwt_key *k = NULL;
    assert_int_equal(ks_jwt_key_create(KEY, KEYLEN, &k), KS_OK);
    assert_non_null(k);
    return k;
}

/* Verify token at time now with the default skew, expecting reason want. */
static void expect_reason_at(const char *token, size_t len, int64_t now, int skew,
                             ks_jwt_reason want)
{
    ks_jwt_key *k = key_new();
    ks_jwt_claims c = {0};
    ks_jwt_reason r = KS_JWT_REASON_COUNT;
    ks_status s = ks_jwt_verify_key(k, token, len, now, skew, &c, &r);

    if (r != want)
        print_error("token %.120s: reason %s, want %s (%s)\n", token ? token : "(null)",
                    ks_jwt_reason_name(r), ks_jwt_reason_name(want), ks_status_last());
    assert_int_equal(r, want);
    assert_int_equal(s, want == KS_JWT_OK ? KS_OK : KS_ERR_DENIED);
    if (want != KS_JWT_OK)
        assert_null(c.iss); /* claims written only on success */
    ks_jwt_claims_clear(&c);
    ks_jwt_key_destroy(k);
}

static void expect_reason(const char *token, ks_jwt_reason want)
{
    expect_reason_at(token, strlen(token), T0 + 60, KS_JWT_DEFAULT_SKEW_S, want);
}

/* Build and verify; frees the token. */
static void expect_mk(const char *h, const char *p, int sig, ks_jwt_reason want)
{
    char *t = mk(h, p, sig);
    expect_reason(t, want);
    free(t);
}

static ks_jwt_claims base_claims(void)
{
    static const char *groups[] = {"dev", "ops"};
    ks_jwt_claims c = {
        .iss = "kubesphere",
        .sub = "alice",
        .username = "alice",
        .token_type = KS_JWT_ACCESS_TOKEN,
        .jti = "jti-0001",
        .groups = groups,
        .ngroups = 2,
        .iat = T0,
        .exp = T0 + 7200,
    };
    return c;
}

/* ---- base64url ---- */

static void test_b64url_vectors(void **state)
{
    (void)state;
    /* RFC 4648 §10, unpadded, plus the two url-specific characters. */
    static const struct { const char *in; size_t len; const char *out; } v[] = {
        {"", 0, ""},           {"f", 1, "Zg"},          {"fo", 2, "Zm8"},
        {"foo", 3, "Zm9v"},    {"foob", 4, "Zm9vYg"},   {"fooba", 5, "Zm9vYmE"},
        {"foobar", 6, "Zm9vYmFy"}, {"\xfb\xff", 2, "-_8"}, {"\xff\xfe\xfd", 3, "__79"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char out[32];
        uint8_t back[32];
        size_t n = 99;
        assert_int_equal(ks_jwt_b64url_encode(v[i].in, v[i].len, out, sizeof(out)),
                         strlen(v[i].out));
        assert_string_equal(out, v[i].out);
        assert_int_equal(ks_jwt_b64url_decode(out, strlen(out), back, sizeof(back), &n), KS_OK);
        assert_int_equal(n, v[i].len);
        assert_memory_equal(back, v[i].in, n);
    }
}

static void test_b64url_strict(void **state)
{
    (void)state;
    static const char *bad[] = {
        "Zg==", "Zg=", "Z", "Zm9vY", "Zh", "Zm9", "Zm+v", "Zm/v", "Zm 9v", "Zm9v\n", "Zm9=",
        "Zm9\x80", "Zg\0",
    };
    uint8_t out[16];
    size_t n = 7;
    char small[4];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = strlen(bad[i]) + (i == sizeof(bad) / sizeof(bad[0]) - 1);
        if (ks_jwt_b64url_decode(bad[i], len, out, sizeof(out), &n) != KS_ERR_INVALID)
            fail_msg("accepted %s", bad[i]);
    }
    assert_int_equal(n, 7); /* untouched on failure */
    /* "Zm8" is canonical; "Zm9" has a trailing bit set. */
    assert_int_equal(ks_jwt_b64url_decode("Zm8", 3, out, sizeof(out), &n), KS_OK);
    assert_int_equal(ks_jwt_b64url_decode("Zm9vYmFy", 8, out, 5, &n), KS_ERR_TOO_LARGE);
    assert_int_equal(ks_jwt_b64url_encode("foobar", 6, small, sizeof(small)), 0);
    assert_string_equal(small, "");
}

/* ---- known vectors ---- */

static void test_sign_known_vector(void **state)
{
    (void)state;
    ks_jwt_key *k = key_new();
    ks_jwt_claims c = base_claims();
    char *tok = NULL;
    static const char *none[] = {NULL};

    assert_int_equal(ks_jwt_sign_key(k, &c, &tok), KS_OK);
    assert_string_equal(tok, vec1);
    free(tok);
    tok = NULL;

    /* the raw-secret form gives the same bytes */
    assert_int_equal(ks_jwt_sign(KEY, KEYLEN, &c, &tok), KS_OK);
    assert_string_equal(tok, vec1);
    free(tok);
    tok = NULL;

    ks_jwt_claims r = {.iss = "kubesphere", .sub = "bob", .username = "bob",
                       .token_type = KS_JWT_REFRESH_TOKEN, .jti = "jti-0002",
                       .groups = none, .ngroups = 0, .iat = T0, .exp = T0 + 14400, .nbf = T0};
    assert_int_equal(ks_jwt_sign_key(k, &r, &tok), KS_OK);
    assert_string_equal(tok, vec2);
    free(tok);
    ks_jwt_key_destroy(k);
}

static void test_verify_known_vector(void **state)
{
    (void)state;
    ks_jwt_key *k = key_new();
    ks_jwt_claims c = {0};
    ks_jwt_reason r = KS_JWT_REASON_COUNT;

    for (int round = 0; round < 3; round++) { /* later rounds reuse cached HMAC contexts */
        assert_int_equal(ks_jwt_verify_key(k, vec1, strlen(vec1), T0 + 1, 10, &c, &r), KS_OK);
        assert_int_equal(r, KS_JWT_OK);
        assert_string_equal(c.iss, "kubesphere");
        assert_string_equal(c.sub, "alice");
        assert_string_equal(c.username, "alice");
        assert_string_equal(c.token_type, "access_token");
        assert_string_equal(c.jti, "jti-0001");
        assert_int_equal(c.ngroups, 2);
        assert_string_equal(c.groups[0], "dev");
        assert_string_equal(c.groups[1], "ops");
        assert_int_equal(c.iat, T0);
        assert_int_equal(c.exp, T0 + 7200);
        assert_int_equal(c.nbf, 0);
        assert_true(ks_jwt_claims_is_access(&c));
        assert_false(ks_jwt_claims_is_refresh(&c));
        ks_jwt_claims_clear(&c);
        assert_null(c.iss);
    }

    assert_int_equal(ks_jwt_verify(KEY, KEYLEN, vec2, strlen(vec2), T0 + 1, 10, &c, &r), KS_OK);
    assert_true(ks_jwt_claims_is_refresh(&c));
    assert_int_equal(c.ngroups, 0);
    assert_null(c.groups);
    assert_int_equal(c.nbf, T0);
    ks_jwt_claims_clear(&c);

    /* another secret: bad signature */
    assert_int_equal(ks_jwt_verify("another-secret-of-at-least-32-bytes!", 36, vec1, strlen(vec1),
                                   T0 + 1, 10, &c, &r),
                     KS_ERR_DENIED);
    assert_int_equal(r, KS_JWT_ERR_SIGNATURE);
    ks_jwt_key_destroy(k);
}

static void test_rfc7515_a1(void **state)
{
    (void)state;
    uint8_t secret[64];
    size_t n = 0;
    ks_jwt_key *k = NULL;
    ks_jwt_reason r = KS_JWT_REASON_COUNT;
    char tampered[sizeof(rfc_token)];

    assert_int_equal(ks_jwt_b64url_decode(rfc_k, strlen(rfc_k), secret, sizeof(secret), &n), KS_OK);
    assert_int_equal(n, 64);
    assert_int_equal(secret[0], 0x03);
    assert_int_equal(secret[63], 0xa3);
    assert_int_equal(ks_jwt_key_create(secret, n, &k), KS_OK);

    /* the non-canonical header ({"typ":"JWT",\r\n "alg":"HS256"}) is parsed */
    assert_int_equal(ks_jwt_verify_signature(k, rfc_token, strlen(rfc_token), &r), KS_OK);
    assert_int_equal(r, KS_JWT_OK);

    /* full verification wants kscore's claims: the example has no sub */
    assert_int_equal(ks_jwt_verify_key(k, rfc_token, strlen(rfc_token), 1300819000, 10, NULL, &r),
                     KS_ERR_DENIED);
    assert_int_equal(r, KS_JWT_ERR_CLAIM_MISSING);

    memcpy(tampered, rfc_token, sizeof(rfc_token));
    tampered[60] = tampered[60] == 'A' ? 'B' : 'A';
    assert_int_equal(ks_jwt_verify_signature(k, tampered, strlen(tampered), &r), KS_ERR_DENIED);
    assert_int_equal(r, KS_JWT_ERR_SIGNATURE);
    ks_jwt_key_destroy(k);
}

/* ---- round trips ---- */

static void test_round_trip(void **state)
{
    (void)state;
    ks_jwt_key *k = key_new();
    const char *groups[40];
    char names[40][24];
    char jti[KS_JWT_JTI_SIZE];
    ks_jwt_claims in = base_claims(), out = {0};
    char *tok = NULL;

    for (int i = 0; i < 40; i++) {
        snprintf(names[i], sizeof(names[i]), "group-%02d", i);
        groups[i] = names[i];
    }
    assert_int_equal(ks_jwt_new_jti(jti), KS_OK);
    in.jti = jti;
    in.username = "z\xc3\xbcrich \"quoted\" \\ user"; /* UTF-8 and JSON escapes */
    in.groups = groups;
    in.ngroups = 40;
    in.nbf = T0;
    assert_int_equal(ks_jwt_sign_key(k, &in, &tok), KS_OK);
    assert_int_equal(ks_jwt_verify_key(k, tok, strlen(tok), T0, 0, &out, NULL), KS_OK);
    assert_string_equal(out.username, in.username);
    assert_string_equal(out.jti, jti);
    assert_int_equal(out.ngroups, 40);
    for (int i = 0; i < 40; i++)
        assert_string_equal(out.groups[i], names[i]);
    assert_int_equal(out.nbf, T0);
    ks_jwt_claims_clear(&out);
    /* claims_out and reason_out may both be NULL */
    assert_int_equal(ks_jwt_verify_key(k, tok, strlen(tok), T0, 0, NULL, NULL), KS_OK);
    /* the length is honoured: a token followed by junk in the buffer */
    char *padded = malloc(strlen(tok) + 8);
    memcpy(padded, tok, strlen(tok));
    memcpy(padded + strlen(tok), ".junk!!", 8);
    assert_int_equal(ks_jwt_verify_key(k, padded, strlen(tok), T0, 0, NULL, NULL), KS_OK);
    free(padded);
    free(tok);
    ks_jwt_key_destroy(k);
}

/* ---- tampering ---- */

static void test_tampered(void **state)
{
    (void)state;
    char t[sizeof(vec1)];
    size_t len = strlen(vec1);
    const char *dot1 = strchr(vec1, '.');
    size_t p = (size_t)(dot1 - vec1) + 10;

    /* a payload character */
    memcpy(t, vec1, sizeof(t));
    t[p] = t[p] == 'x' ? 'y' : 'x';
    expect_reason_at(t, len, T0, 10, KS_JWT_ERR_SIGNATURE);

    /* a signature character in the middle, and the last one */
    memcpy(t, vec1, sizeof(t));
    t[len - 10] = t[len - 10] == 'A' ? 'B' : 'A';
    expect_reason_at(t, len, T0, 10, KS_JWT_ERR_SIGNATURE);
    memcpy(t, vec1, sizeof(t));
    t[len - 1] = t[len - 1] == 'A' ? 'B' : 'A';
    expect_reason_at(t, len, T0, 10, KS_JWT_ERR_SIGNATURE);

    /* same signature bytes, non-canonical last character ('U' = 20 -> 'V' = 21
     * differs only in the two unused low bits) */
    memcpy(t, vec1, sizeof(t));
    assert_int_equal(t[len - 1], 'U');
    t[len - 1] = 'V';
    expect_reason_at(t, len, T0, 10, KS_JWT_ERR_SIGNATURE);

    /* the signature cut short, and lengthened */
    expect_reason_at(vec1, len - 1, T0, 10, KS_JWT_ERR_SIGNATURE);
    char *longer = malloc(len + 2);
    memcpy(longer, vec1, len);
    memcpy(longer + len, "A", 2);
    expect_reason(longer, KS_JWT_ERR_SIGNATURE);
    free(longer);

    /* another valid header with the original signature */
    char *h = mk("{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"1\"}", "x", SIG_NONE);
    char *dot = strchr(h, '.');
    char *swapped = malloc(len + 64);
    snprintf(swapped, len + 64, "%.*s%s", (int)(dot - h), h, dot1);
    expect_reason_at(swapped, strlen(swapped), T0, 10, KS_JWT_ERR_SIGNATURE);
    free(swapped);
    free(h);

    /* the signature of one token on the payload of another */
    char mixed[sizeof(vec1) + sizeof(vec2)];
    const char *sig1 = strrchr(vec1, '.');
    const char *sig2 = strrchr(vec2, '.');
    snprintf(mixed, sizeof(mixed), "%.*s%s", (int)(sig2 - vec2), vec2, sig1);
    expect_reason_at(mixed, strlen(mixed), T0, 10, KS_JWT_ERR_SIGNATURE);
}

/* ---- algorithms ---- */

static void test_alg_none(void **state)
{
    (void)state;
    /* unsigned ("h.p."), and with an HS256 signature over it: still refused */
    expect_mk("{\"alg\":\"none\",\"typ\":\"JWT\"}", good_payload, SIG_NONE, KS_JWT_ERR_ALG_NONE);
    expect_mk("{\"alg\":\"none\",\"typ\":\"JWT\"}", good_payload, SIG_HMAC, KS_JWT_ERR_ALG_NONE);
    expect_mk("{\"alg\":\"none\"}", good_payload, SIG_GARBAGE, KS_JWT_ERR_ALG_NONE);
    expect_mk("{\"alg\":\"None\"}", good_payload, SIG_NONE, KS_JWT_ERR_ALG_NONE);
    expect_mk("{\"alg\":\"NONE\"}", good_payload, SIG_HMAC, KS_JWT_ERR_ALG_NONE);
    /* "h.p" without the last dot is not a JWS at all */
    char *t = mk("{\"alg\":\"none\"}", good_payload, SIG_NONE);
    t[strlen(t) - 1] = '\0';
    expect_reason(t, KS_JWT_ERR_MALFORMED);
    free(t);
}

static void test_alg_confusion(void **state)
{
    (void)state;
    static const char *algs[] = {
        "{\"alg\":\"HS384\",\"typ\":\"JWT\"}", "{\"alg\":\"HS512\"}", "{\"alg\":\"RS256\"}",
        "{\"alg\":\"ES256\"}", "{\"alg\":\"PS256\"}", "{\"alg\":\"EdDSA\"}", "{\"alg\":\"hs256\"}",
        "{\"alg\":\"HS256 \"}", "{\"alg\":\"\"}", "{\"alg\":\"HS256\\u0000\"}",
    };
    for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
        ks_jwt_reason want = i == sizeof(algs) / sizeof(algs[0]) - 1 ? KS_JWT_ERR_HEADER_JSON
                                                                   : KS_JWT_ERR_ALG_UNSUPPORTED;
        /* the signature is a valid HMAC-SHA256 with the shared secret, the
         * classic confusion (an RS256 public key used as an HMAC secret) */
        expect_mk(algs[i], good_payload, SIG_HMAC, want);
    }
    expect_mk("{\"typ\":\"JWT\"}", good_payload, SIG_HMAC, KS_JWT_ERR_ALG_MISSING);
    expect_mk("{}", good_payload, SIG_HMAC, KS_JWT_ERR_ALG_MISSING);
    expect_mk("{\"alg\":256}", good_payload, SIG_HMAC, KS_JWT_ERR_ALG_NOT_STRING);
    expect_mk("{\"alg\":null}", good_payload, SIG_HMAC, KS_JWT_ERR_ALG_NOT_STRING);
    expect_mk("{\"alg\":[\"HS256\"]}", good_payload, SIG_HMAC, KS_JWT_ERR_ALG_NOT_STRING);
    expect_mk("{\"alg\":\"HS256\",\"alg\":\"none\"}", good_payload, SIG_HMAC,
              KS_JWT_ERR_HEADER_DUPLICATE);
    expect_mk("{\"alg\":\"HS256\",\"alg\":\"HS256\"}", good_payload, SIG_HMAC,
              KS_JWT_ERR_HEADER_DUPLICATE);
    expect_mk("{\"alg\":\"HS256\",\"typ\":\"JWS\"}", good_payload, SIG_HMAC,
              KS_JWT_ERR_HEADER_UNSUPPORTED);
    expect_mk("{\"alg\":\"HS256\",\"typ\":7}", good_payload, SIG_HMAC,
              KS_JWT_ERR_HEADER_UNSUPPORTED);
    expect_mk("{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}", good_payload, SIG_HMAC,
              KS_JWT_ERR_HEADER_UNSUPPORTED);
    expect_mk("[\"HS256\"]", good_payload, SIG_HMAC, KS_JWT_ERR_HEADER_JSON);
    expect_mk("\"HS256\"", good_payload, SIG_HMAC, KS_JWT_ERR_HEADER_JSON);
    expect_mk("{\"alg\":\"HS256\"", good_payload, SIG_HMAC, KS_JWT_ERR_HEADER_JSON);
    expect_mk("{\"alg\":\"HS256\"} x", good_payload, SIG_HMAC, KS_JWT_ERR_HEADER_JSON);
    /* accepted variants: other member order, whitespace, lower-case typ, no
     * typ, unknown members */
    expect_mk("{ \"typ\" : \"JWT\" ,\n \"alg\" : \"HS256\" }", good_payload, SIG_HMAC, KS_JWT_OK);
    expect_mk("{\"alg\":\"HS256\",\"typ\":\"jwt\"}", good_payload, SIG_HMAC, KS_JWT_OK);
    expect_mk("{\"alg\":\"HS256\"}", good_payload, SIG_HMAC, KS_JWT_OK);
    expect_mk("{\"alg\":\"HS256\",\"kid\":\"k1\",\"x\":{\"y\":[1,2]}}", good_payload, SIG_HMAC,
              KS_JWT_OK);
}

/* ---- times ---- */

static char *timed(int64_t iat, int64_t exp, int64_t nbf)
{
    char p[512];
    if (nbf)
        snprintf(p, sizeof(p),
                 "{\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
                 "\"jti\":\"j\",\"iat\":%lld,\"exp\":%lld,\"nbf\":%lld}",
                 (long long)iat, (long long)exp, (long long)nbf);
    else
        snprintf(p, sizeof(p),
                 "{\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
                 "\"jti\":\"j\",\"iat\":%lld,\"exp\":%lld}",
                 (long long)iat, (long long)exp);
    return mk(hs256, p, SIG_HMAC);
}

static void test_times(void **state)
{
    (void)state;
    const int64_t E = T0 + 7200, N = T0 + 100;
    char *t = timed(T0, E, 0);
    size_t n = strlen(t);

    /* exp: refused once exp <= now - skew */
    expect_reason_at(t, n, E - 1, 0, KS_JWT_OK);
    expect_reason_at(t, n, E, 0, KS_JWT_ERR_EXPIRED);
    expect_reason_at(t, n, E + 9, 10, KS_JWT_OK);
    expect_reason_at(t, n, E + 10, 10, KS_JWT_ERR_EXPIRED);
    expect_reason_at(t, n, E + 100000, 10, KS_JWT_ERR_EXPIRED);
    /* iat: refused once iat > now + skew */
    expect_reason_at(t, n, T0 - 10, 10, KS_JWT_OK);
    expect_reason_at(t, n, T0 - 11, 10, KS_JWT_ERR_ISSUED_IN_FUTURE);
    expect_reason_at(t, n, T0 - 1, 0, KS_JWT_ERR_ISSUED_IN_FUTURE);
    free(t);

    /* nbf: refused while nbf > now + skew */
    t = timed(T0, E, N);
    n = strlen(t);
    expect_reason_at(t, n, N - 10, 10, KS_JWT_OK);
    expect_reason_at(t, n, N - 11, 10, KS_JWT_ERR_NOT_YET_VALID);
    expect_reason_at(t, n, N, 0, KS_JWT_OK);
    expect_reason_at(t, n, N - 1, 0, KS_JWT_ERR_NOT_YET_VALID);
    free(t);

    /* bad arguments are not token reasons */
    ks_jwt_key *k = key_new();
    ks_jwt_reason r;
    assert_int_equal(ks_jwt_verify_key(k, vec1, strlen(vec1), T0, -1, NULL, &r), KS_ERR_INVALID);
    assert_int_equal(ks_jwt_verify_key(k, vec1, strlen(vec1), T0, KS_JWT_MAX_SKEW_S + 1, NULL, &r),
                     KS_ERR_INVALID);
    assert_int_equal(ks_jwt_verify_key(k, vec1, strlen(vec1), -5, 10, NULL, &r), KS_ERR_INVALID);
    assert_int_equal(ks_jwt_verify_key(NULL, vec1, strlen(vec1), T0, 10, NULL, &r), KS_ERR_INVALID);
    assert_int_equal(ks_jwt_verify_key(k, NULL, 5, T0, 10, NULL, &r), KS_ERR_INVALID);
    ks_jwt_key_destroy(k);
}

/* ---- claims ---- */

#define CL(body) "{" body "}"
#define BASE_REST "\"iat\":1700000000,\"exp\":1700007200"

static void test_claims(void **state)
{
    (void)state;
    static const struct { const char *payload; ks_jwt_reason want; } v[] = {
        {CL("\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\",\"jti\":\"j\","
            BASE_REST), KS_JWT_ERR_CLAIM_MISSING},
        {CL("\"iss\":\"i\",\"username\":\"u\",\"token_type\":\"access_token\",\"jti\":\"j\","
            BASE_REST), KS_JWT_ERR_CLAIM_MISSING},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"token_type\":\"access_token\",\"jti\":\"j\","
            BASE_REST), KS_JWT_ERR_CLAIM_MISSING},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"jti\":\"j\"," BASE_REST),
         KS_JWT_ERR_CLAIM_MISSING},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            BASE_REST), KS_JWT_ERR_CLAIM_MISSING},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\",\"exp\":1700007200"), KS_JWT_ERR_CLAIM_MISSING},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\",\"iat\":1700000000"), KS_JWT_ERR_CLAIM_MISSING},
        /* wrong types and values */
        {CL("\"iss\":\"i\",\"sub\":\"\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":7,\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":null,\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"id_token\","
            "\"jti\":\"j\"," BASE_REST), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\",\"iat\":\"1700000000\",\"exp\":1700007200"), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\",\"iat\":1700000000,\"exp\":1700007200.5"), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\",\"iat\":-1,\"exp\":1700007200"), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\",\"iat\":1700000000,\"exp\":1700000000"), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\",\"iat\":1700000000,\"exp\":999999999999999"), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST ",\"nbf\":0"), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST ",\"groups\":\"dev\""), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST ",\"groups\":[\"dev\",1]"), KS_JWT_ERR_CLAIM_INVALID},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST ",\"groups\":null"), KS_JWT_ERR_CLAIM_INVALID},
        /* not an object, duplicates, bad JSON */
        {"[1,2]", KS_JWT_ERR_PAYLOAD_JSON},
        {"\"claims\"", KS_JWT_ERR_PAYLOAD_JSON},
        {"{\"iss\":", KS_JWT_ERR_PAYLOAD_JSON},
        {"not json", KS_JWT_ERR_PAYLOAD_JSON},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"sub\":\"admin\",\"username\":\"u\",\"token_type\":"
            "\"access_token\",\"jti\":\"j\"," BASE_REST), KS_JWT_ERR_PAYLOAD_JSON},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\\u0000admin\",\"token_type\":"
            "\"access_token\",\"jti\":\"j\"," BASE_REST), KS_JWT_ERR_PAYLOAD_JSON},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST ",\"x\":01"), KS_JWT_ERR_PAYLOAD_JSON},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST ",}"), KS_JWT_ERR_PAYLOAD_JSON},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST) " {}", KS_JWT_ERR_PAYLOAD_JSON},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\",\"iat\":1700000000,\"exp\":1700007200,\"exp\":1900000000"),
         KS_JWT_ERR_PAYLOAD_JSON},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\\ud800\",\"token_type\":"
            "\"access_token\",\"jti\":\"j\"," BASE_REST), KS_JWT_ERR_PAYLOAD_JSON},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\xc0\xaf\",\"token_type\":"
            "\"access_token\",\"jti\":\"j\"," BASE_REST), KS_JWT_ERR_PAYLOAD_JSON},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\tv\",\"token_type\":"
            "\"access_token\",\"jti\":\"j\"," BASE_REST), KS_JWT_ERR_PAYLOAD_JSON},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST ",\"deep\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]"
            "]]]]]]]]]]]]]]]]"), KS_JWT_ERR_PAYLOAD_JSON},
        /* accepted: extra claims (even repeated, or numbers of any size), empty
         * groups, nested unknowns, escapes and surrogate pairs */
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"access_token\","
            "\"jti\":\"j\"," BASE_REST ",\"big\":1e400,\"big\":-0.5E-3,\"t\":[true,false,null]"),
         KS_JWT_OK},
        {" \r\n\t" CL("\"iss\":\"i\",\"sub\":\"\\u00e9\\ud83d\\ude00\\n\\\"\\/\",\"username\":\"u\","
            "\"token_type\":\"access_token\",\"jti\":\"j\"," BASE_REST) "\n", KS_JWT_OK},
        {CL("\"iss\":\"i\",\"sub\":\"s\",\"username\":\"u\",\"token_type\":\"refresh_token\","
            "\"jti\":\"j\"," BASE_REST ",\"groups\":[],\"aud\":[\"x\"],\"o\":{\"a\":[{}]}"),
         KS_JWT_OK},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        expect_mk(hs256, v[i].payload, SIG_HMAC, v[i].want);
}

/* The payload reader against jansson: mutate valid payloads at random; the
 * token must be refused as bad_payload exactly when jansson refuses the text
 * (or finds no object), and when both accept, the claims read must be the
 * strings jansson reads. Texts where the two are allowed to differ are
 * skipped: repeated members (the reader ignores repeats of unknown ones) and
 * numbers too big for jansson. */
static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static void check_claims_like_jansson(const ks_jwt_claims *c, json_t *o)
{
    assert_string_equal(c->iss, json_string_value(json_object_get(o, "iss")));
    assert_string_equal(c->sub, json_string_value(json_object_get(o, "sub")));
    assert_string_equal(c->username, json_string_value(json_object_get(o, "username")));
    assert_string_equal(c->jti, json_string_value(json_object_get(o, "jti")));
    json_t *g = json_object_get(o, "groups");
    assert_int_equal(c->ngroups, g ? json_array_size(g) : 0);
    for (size_t i = 0; i < c->ngroups; i++) {
        json_t *e = json_array_get(g, i);
        assert_int_equal(strlen(c->groups[i]), json_string_length(e));
        assert_string_equal(c->groups[i], json_string_value(e));
    }
    assert_int_equal(c->iat, json_integer_value(json_object_get(o, "iat")));
    assert_int_equal(c->exp, json_integer_value(json_object_get(o, "exp")));
}

static void test_payload_reader_vs_jansson(void **state)
{
    (void)state;
    static const char *const seeds[] = {
        good_payload,
        "{\"iss\":\"kubesphere\",\"sub\":\"al\\u00efce\",\"username\":\"a \\\"q\\\" \\\\ \\/\","
        "\"token_type\":\"refresh_token\",\"jti\":\"j\\ud83d\\ude00\",\"groups\":[\"d\\tev\","
        "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\",\"\"],\"iat\":1700000000,\"exp\":1700007200,"
        "\"nbf\":1700000000,\"aud\":[\"x\",{\"y\":[1,2.5e3,-0,true,false,null]}]}",
        " { \"x\" : { } , \"iss\" : \"i\" , \"sub\" : \"s\" , \"username\" : \"u\" , "
        "\"token_type\" : \"access_token\" , \"jti\" : \"j\" , \"iat\" : 1700000000 , "
        "\"exp\" : 1700007200 , \"groups\" : [ ] } ",
    };
    static const char alphabet[] = "\"\\{}[],:01-.eEu a\n\t\x80\xc3\xa9\xff\xed\xf0ntfdU+/";
    ks_jwt_key *k = key_new();
    char text[1024];
    int refused = 0, accepted = 0, skipped = 0;

    for (int iter = 0; iter < 20000; iter++) {
        const char *seed = seeds[rnd(sizeof(seeds) / sizeof(seeds[0]))];
        size_t n = strlen(seed);
        memcpy(text, seed, n + 1);
        for (int m = 1 + (int)rnd(3); m > 0; m--) {
            size_t at = rnd((uint32_t)n + 1);
            char ch = alphabet[rnd(sizeof(alphabet) - 1)];
            switch (rnd(4)) {
            case 0: /* replace */
                if (at < n)
                    text[at] = ch;
                break;
            case 1: /* insert */
                if (n + 2 < sizeof(text)) {
                    memmove(text + at + 1, text + at, n - at + 1);
                    text[at] = ch;
                    n++;
                }
                break;
            case 2: /* delete */
                if (at < n) {
                    memmove(text + at, text + at + 1, n - at);
                    n--;
                }
                break;
            default: { /* repeat a slice */
                size_t len = rnd(12);
                if (at + len <= n && n + len + 1 < sizeof(text)) {
                    memmove(text + at + len, text + at, n - at + 1);
                    n += len;
                }
                break;
            }
            }
        }
        text[n] = '\0';

        json_error_t err;
        json_t *o = json_loadb(text, n, JSON_REJECT_DUPLICATES, &err);
        if (o == NULL && (json_error_code(&err) == json_error_duplicate_key ||
                          json_error_code(&err) == json_error_numeric_overflow)) {
            skipped++;
            continue;
        }
        int want_bad = o == NULL || !json_is_object(o);
        char *t = mk(hs256, text, SIG_HMAC);
        ks_jwt_claims c = {0};
        ks_jwt_reason r = KS_JWT_OK;
        ks_status s = ks_jwt_verify_key(k, t, strlen(t), T0 + 60, 10, &c, &r);
        if (want_bad != (r == KS_JWT_ERR_PAYLOAD_JSON))
            fail_msg("payload %s: reason %s, jansson %s", text, ks_jwt_reason_name(r),
                     o ? "accepts" : err.text);
        if (s == KS_OK)
            check_claims_like_jansson(&c, o);
        want_bad ? refused++ : accepted++;
        ks_jwt_claims_clear(&c);
        json_decref(o);
        free(t);
    }
    print_message("payload reader vs jansson: %d refused, %d accepted, %d skipped\n", refused,
                  accepted, skipped);
    assert_true(refused > 1000 && accepted > 1000);
    ks_jwt_key_destroy(k);
}

/* ---- structure and size ---- */

static void test_garbage(void **state)
{
    (void)state;
    static const struct { const char *t; ks_jwt_reason want; } v[] = {
        {"", KS_JWT_ERR_MALFORMED},
        {".", KS_JWT_ERR_MALFORMED},
        {"..", KS_JWT_ERR_MALFORMED},
        {"abc", KS_JWT_ERR_MALFORMED},
        {"a.b", KS_JWT_ERR_MALFORMED},
        {"a..c", KS_JWT_ERR_MALFORMED},
        {".b.c", KS_JWT_ERR_MALFORMED},
        {"a.b.c.d", KS_JWT_ERR_MALFORMED},
        {"a.b.c.d.e", KS_JWT_ERR_MALFORMED}, /* JWE compact form */
        {"Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.x", KS_JWT_ERR_BASE64},
        {"eyJhbGciOiJIUzI1NiJ9=.e30.x", KS_JWT_ERR_BASE64},
        {"eyJhbGciOiJIUzI1NiJ9.e30.x=", KS_JWT_ERR_BASE64},
        {"eyJhbGciOiJIUzI1NiJ9.e30.a+b/", KS_JWT_ERR_BASE64},
        {"e.e30.xx", KS_JWT_ERR_BASE64},
        {"eyJhbGciOiJIUzI1NiJ9.e30.", KS_JWT_ERR_SIGNATURE},
        {"eyJhbGciOiJIUzI1NiJ9.e30.xx", KS_JWT_ERR_SIGNATURE},
        {"eyJhbGciOiJIUzI1NiJ9.e30.Gxvdte8Cd3dTUXUF2RuC4Dxz94G_taE0gaixB-6xsdU",
         KS_JWT_ERR_SIGNATURE},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        expect_reason(v[i].t, v[i].want);

    /* bytes the text never shows: NUL inside, high bytes */
    static const char nul[] = "eyJhbGciOiJIUzI1NiJ9\0.e30.x";
    expect_reason_at(nul, sizeof(nul) - 1, T0, 10, KS_JWT_ERR_BASE64);
    static const char high[] = "\xff\xfe.\x80.\x01";
    expect_reason_at(high, sizeof(high) - 1, T0, 10, KS_JWT_ERR_BASE64);

    /* padding inside a correctly signed payload */
    char *t = mk(hs256, good_payload, SIG_NONE);
    char *dot = strrchr(t, '.');
    size_t n = (size_t)(dot - t);
    char buf[1024];
    unsigned char mac[32];
    unsigned int ml = 0;
    snprintf(buf, sizeof(buf), "%.*s=", (int)n, t);
    HMAC(EVP_sha256(), KEY, (int)KEYLEN, (unsigned char *)buf, strlen(buf), mac, &ml);
    size_t bl = strlen(buf);
    buf[bl++] = '.';
    ks_jwt_b64url_encode(mac, 32, buf + bl, sizeof(buf) - bl);
    expect_reason(buf, KS_JWT_ERR_BASE64);
    free(t);
}

static void test_oversize(void **state)
{
    (void)state;
    ks_jwt_key *k = key_new();
    char *big = malloc(KS_JWT_MAX_TOKEN + 2);
    const char *groups[KS_JWT_MAX_GROUPS + 1];
    char name[64];
    ks_jwt_claims c = base_claims();
    char *tok = NULL;

    /* one byte over the cap, whatever it holds */
    memset(big, 'A', KS_JWT_MAX_TOKEN + 1);
    big[KS_JWT_MAX_TOKEN + 1] = '\0';
    memcpy(big, vec1, strlen(vec1));
    expect_reason_at(big, KS_JWT_MAX_TOKEN + 1, T0, 10, KS_JWT_ERR_TOO_LARGE);
    expect_reason_at(big, SIZE_MAX, T0, 10, KS_JWT_ERR_TOO_LARGE);

    /* sign refuses what verify would refuse */
    memset(name, 'g', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    for (int i = 0; i < KS_JWT_MAX_GROUPS + 1; i++)
        groups[i] = name;
    c.groups = groups;
    c.ngroups = 120; /* ~8 KiB of JSON, ~10.7 KiB encoded */
    assert_int_equal(ks_jwt_sign_key(k, &c, &tok), KS_ERR_TOO_LARGE);
    assert_null(tok);
    c.ngroups = KS_JWT_MAX_GROUPS + 1;
    assert_int_equal(ks_jwt_sign_key(k, &c, &tok), KS_ERR_INVALID);

    /* the largest token that fits still verifies */
    size_t lo = 1, hi = 120, best = 0;
    while (lo <= hi) {
        size_t mid = (lo + hi) / 2;
        c.ngroups = mid;
        if (ks_jwt_sign_key(k, &c, &tok) == KS_OK) {
            best = mid;
            free(tok);
            tok = NULL;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    assert_true(best > 50);
    c.ngroups = best;
    assert_int_equal(ks_jwt_sign_key(k, &c, &tok), KS_OK);
    assert_true(strlen(tok) <= KS_JWT_MAX_TOKEN);
    assert_true(strlen(tok) > KS_JWT_MAX_TOKEN - 100);
    expect_reason_at(tok, strlen(tok), T0, 10, KS_JWT_OK);
    free(tok);
    free(big);
    ks_jwt_key_destroy(k);
}

/* ---- sign input, keys, jti ---- */

static void test_sign_invalid(void **state)
{
    (void)state;
    ks_jwt_key *k = key_new();
    char *tok = NULL;
    const char *bad_group[] = {"ok", NULL};
    ks_jwt_claims c;

#define SIGN_BAD(mutation)                                            \
    do {                                                              \
        c = base_claims();                                            \
        mutation;                                                     \
        assert_int_equal(ks_jwt_sign_key(k, &c, &tok), KS_ERR_INVALID); \
        assert_null(tok);                                             \
    } while (0)

    SIGN_BAD(c.iss = NULL);
    SIGN_BAD(c.sub = "");
    SIGN_BAD(c.username = NULL);
    SIGN_BAD(c.jti = "");
    SIGN_BAD(c.token_type = "id_token");
    SIGN_BAD(c.token_type = NULL);
    SIGN_BAD(c.iat = 0);
    SIGN_BAD(c.exp = c.iat);
    SIGN_BAD(c.exp = KS_JWT_MAX_TIME + 1);
    SIGN_BAD(c.nbf = -3);
    SIGN_BAD(c.username = "bad \xff utf8");
    SIGN_BAD((c.groups = bad_group, c.ngroups = 2));
    SIGN_BAD((c.groups = NULL, c.ngroups = 1));
#undef SIGN_BAD
    c = base_claims();
    assert_int_equal(ks_jwt_sign_key(NULL, &c, &tok), KS_ERR_INVALID);
    assert_int_equal(ks_jwt_sign_key(k, NULL, &tok), KS_ERR_INVALID);
    assert_int_equal(ks_jwt_sign_key(k, &c, NULL), KS_ERR_INVALID);
    ks_jwt_key_destroy(k);

    /* a claims struct filled by the caller can be cleared: only zeroed */
    ks_jwt_claims_clear(&c);
    assert_null(c.iss);
    ks_jwt_claims_clear(NULL);
}

static void test_keys(void **state)
{
    (void)state;
    ks_jwt_key *k = NULL;
    char big[KS_JWT_MAX_SECRET + 1];
    ks_jwt_claims c = base_claims();
    char *tok = NULL;

    memset(big, 's', sizeof(big));
    assert_int_equal(ks_jwt_key_create(KEY, KS_JWT_MIN_SECRET - 1, &k), KS_ERR_INVALID);
    assert_null(k);
    assert_int_equal(ks_jwt_key_create(NULL, 40, &k), KS_ERR_INVALID);
    assert_int_equal(ks_jwt_key_create(big, sizeof(big), &k), KS_ERR_INVALID);
    assert_int_equal(ks_jwt_key_create(big, KS_JWT_MAX_SECRET, &k), KS_OK);
    ks_jwt_key_destroy(k);
    ks_jwt_key_destroy(NULL);
    assert_int_equal(ks_jwt_sign("short", 5, &c, &tok), KS_ERR_INVALID);
    ks_jwt_reason r = KS_JWT_OK;
    assert_int_equal(ks_jwt_verify("short", 5, vec1, strlen(vec1), T0, 10, NULL, &r),
                     KS_ERR_INVALID);
    assert_int_equal(r, KS_JWT_ERR_INTERNAL);
}

static void test_jti(void **state)
{
    (void)state;
    enum { N = 2000 };
    char (*ids)[KS_JWT_JTI_SIZE] = calloc(N, KS_JWT_JTI_SIZE);

    for (int i = 0; i < N; i++) {
        uint8_t raw[16];
        size_t n = 0;
        assert_int_equal(ks_jwt_new_jti(ids[i]), KS_OK);
        assert_int_equal(strlen(ids[i]), KS_JWT_JTI_LEN);
        assert_int_equal(ks_jwt_b64url_decode(ids[i], KS_JWT_JTI_LEN, raw, sizeof(raw), &n), KS_OK);
        assert_int_equal(n, 16);
        for (int j = 0; j < i; j++)
            assert_string_not_equal(ids[i], ids[j]);
    }
    free(ids);
}

static void test_reason_names(void **state)
{
    (void)state;
    for (int i = 0; i < KS_JWT_REASON_COUNT; i++) {
        const char *a = ks_jwt_reason_name((ks_jwt_reason)i);
        assert_non_null(a);
        assert_string_not_equal(a, "unknown");
        for (int j = 0; j < i; j++)
            assert_string_not_equal(a, ks_jwt_reason_name((ks_jwt_reason)j));
    }
    assert_string_equal(ks_jwt_reason_name(KS_JWT_REASON_COUNT), "unknown");
    assert_string_equal(ks_jwt_reason_name(KS_JWT_ERR_ALG_NONE), "alg_none");
    assert_string_equal(ks_jwt_reason_name(KS_JWT_ERR_EXPIRED), "expired");
}

/* ---- one key, many threads ---- */

typedef struct {
    ks_jwt_key *key;
    int failures;
} thr_arg;

static void *verify_loop(void *p)
{
    thr_arg *a = p;
    for (int i = 0; i < 3000; i++) {
        ks_jwt_claims c = {0};
        const char *t = (i & 1) ? vec1 : vec2;
        if (ks_jwt_verify_key(a->key, t, strlen(t), T0 + 5, 10, &c, NULL) != KS_OK)
            a->failures++;
        ks_jwt_claims_clear(&c);
        if (i % 100 == 0) {
            ks_jwt_claims s = base_claims();
            char *tok = NULL;
            if (ks_jwt_sign_key(a->key, &s, &tok) != KS_OK || strcmp(tok, vec1) != 0)
                a->failures++;
            free(tok);
        }
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    enum { T = 6 };
    pthread_t th[T];
    thr_arg a[T];
    ks_jwt_key *k = key_new();

    for (int i = 0; i < T; i++) {
        a[i] = (thr_arg){.key = k};
        assert_int_equal(pthread_create(&th[i], NULL, verify_loop, &a[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(a[i].failures, 0);
    }
    ks_jwt_key_destroy(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_vectors),
        cmocka_unit_test(test_b64url_strict),
        cmocka_unit_test(test_sign_known_vector),
        cmocka_unit_test(test_verify_known_vector),
        cmocka_unit_test(test_rfc7515_a1),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_alg_confusion),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_claims),
        cmocka_unit_test(test_payload_reader_vs_jansson),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_sign_invalid),
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_jti),
        cmocka_unit_test(test_reason_names),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
