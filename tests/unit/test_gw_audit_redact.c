/* Unit tests of the gateway's audit redaction (services/apigw/audit_redact.c):
 *
 *   - key names (case, '-', '_', '.' ignored) and secret-looking values
 *     (crypt hashes, JWTs, PEM private keys), including near misses;
 *   - JSON bodies: nested keys, arrays of objects, a hash or a JWT under an
 *     innocent key, Secret data/stringData (also in a SecretList and a watch
 *     event), kubectl's last-applied-configuration, JSON Patch, keys that
 *     are tokens themselves; exact output compared;
 *   - form bodies (the OAuth password and refresh grants), byte-identical
 *     non-secret fields, percent-decoded names, bad escapes not recorded;
 *   - request URIs; content types; the size cap with truncated=1; nesting
 *     depth bounded (not recorded, never a crash);
 *   - no output of any case contains any secret text (every secret here
 *     contains "hunter2", or is a JWT, a bcrypt hash or a base64 of
 *     "hunter2..."). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../services/apigw/audit_redact.c"

#define JWT                                                                                      \
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlX3NlY3JldA"
#define BCRYPT "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
#define R "[REDACTED]"
#define RE "%5BREDACTED%5D"
#define FORM "application/x-www-form-urlencoded"

/* Text that must not survive anywhere. */
static const char *const secret_markers[] = {
    "hunter2",                 /* every plain secret in this file */
    "aHVudGVyMi",              /* base64 of "hunter2" (Secret data) */
    "c2lnbmF0dXJlX3NlY3JldA",  /* the JWT's signature */
    "eyJzdWIiOiJhZG1pbiJ9",    /* the JWT's payload */
    "N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", /* the bcrypt hash */
};

static void assert_clean(const char *what, const char *out)
{
    if (out == NULL)
        return;
    for (size_t i = 0; i < sizeof(secret_markers) / sizeof(secret_markers[0]); i++)
        if (strstr(out, secret_markers[i]) != NULL)
            fail_msg("%s: secret \"%s\" survives in: %s", what, secret_markers[i], out);
}

/* ---- keys and values ---- */

static void test_key_is_secret(void **state)
{
    static const struct {
        const char *key;
        int want;
    } cases[] = {
        {"password", 1},
        {"Password", 1},
        {"PASSWORD", 1},
        {"new_password", 1},
        {"newPassword", 1},
        {"iam.kubesphere.io/password-encrypted", 1},
        {"pass-word", 1},
        {"pass_wo.rd", 1},
        {"passwd", 1},
        {"access_token", 1},
        {"refresh_token", 1},
        {"id_token", 1},
        {"Token", 1},
        {"clientSecret", 1},
        {"client_secret", 1},
        {"passwordHash", 1},
        {"credentials", 1},
        {"private_key", 1},
        {"privateKey", 1},
        {"private-key", 1},
        {"X-Api-Key", 1},
        {"apiKey", 1},
        {"Authorization", 1},
        {"proxy-authorization", 1},
        {"-password-", 1},
        {"username", 0},
        {"name", 0},
        {"pass", 0},
        {"word", 0},
        {"pass word", 0},
        {"private key", 0},
        {"email", 0},
        {"kind", 0},
        {"data", 0},
        {"", 0},
        {"---", 0},
        {"tokeN", 1},
        {"toke", 0},
        {"api", 0},
        {"hashed", 1},
        {"passwor", 0},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (gw_redact_key_is_secret(cases[i].key, strlen(cases[i].key)) != cases[i].want)
            fail_msg("key \"%s\": want %d", cases[i].key, cases[i].want);
    /* the length is honoured: only the first bytes count */
    assert_false(gw_redact_key_is_secret("passwordX", 4));
    assert_true(gw_redact_key_is_secret("tokens", 5));
    assert_false(gw_redact_key_is_secret("tokens", 4));
    /* NUL inside a form name is just a byte */
    assert_true(gw_redact_key_is_secret("a\0token", 7));
}

static void test_value_is_secret(void **state)
{
    static const struct {
        const char *v;
        int want;
    } cases[] = {
        {BCRYPT, 1},
        {"$2b$12$abcdefghijklmnopqrstuv", 1},
        {"$2y$05$abc", 1},
        {"$5$rounds=5000$salt$hash", 1},
        {"$6$salt$hash", 1},
        {"$y$j9T$salt$hash", 1},
        {"admin:$2y$05$abcdef", 1},
        {"$2a$", 0},
        {"$6$", 0},
        {"$6$ spaced", 0},
        {"$5", 0},
        {"$1$salt$md5", 0},
        {"costs $5 or $6", 0},
        {JWT, 1},
        {"Bearer " JWT, 1},
        {"token=" JWT "&x=1", 1},
        {"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", 1},    /* alg none: empty signature */
        {"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0", 0},     /* two parts */
        {"eyJ", 0},
        {"eyJa.b.c", 1},
        {"eyJ.b.c", 0},
        {"eyJab..c", 0},
        {"keyJar.a.b", 0},                                /* not at a run's start */
        {"a.b.c", 0},
        {"eyJnotajwt", 0},
        {"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n", 1},
        {"-----BEGIN PRIVATE KEY-----\nMIIE\n", 1},
        {"-----BEGIN OPENSSH PRIVATE KEY-----", 1},
        {"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", 0},
        {"-----BEGIN PUBLIC KEY-----", 0},
        {"hello world", 0},
        {"", 0},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (gw_redact_value_is_secret(cases[i].v, strlen(cases[i].v)) != cases[i].want)
            fail_msg("value \"%s\": want %d", cases[i].v, cases[i].want);
    /* the length is honoured */
    assert_false(gw_redact_value_is_secret(JWT, 40));
    assert_false(gw_redact_value_is_secret("$2a$1", 4));
}

/* Hostile values and keys stay linear: these would take minutes if not. */
static void test_linear(void **state)
{
    size_t n = 1u << 20;
    char *s = malloc(n);
    /* none of these repeated makes a secret, so every scan runs to the end */
    static const char *const units[] = {"eyJ",     "eyJab..",    "eyJab.=",       "$2x$",
                                        "$",       "passwor",    "-----BEGIN",    "p-a-s-s-w-o-r",
                                        "PRIVATE KEY-----"};

    (void)state;
    assert_non_null(s);
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        size_t ul = strlen(units[u]);
        for (size_t i = 0; i < n; i++)
            s[i] = units[u][i % ul];
        assert_false(gw_redact_value_is_secret(s, n));
        assert_false(gw_redact_key_is_secret(s, n));
    }
    free(s);
}

/* The same for forms and queries: one field of many ';' parts, many
 * fields, many escapes. */
static void test_linear_forms(void **state)
{
    size_t n = 720720;   /* a multiple of every unit's length: whole escapes */
    char *s = malloc(n + 3), *out;
    static const char *const units[] = {"a;", "a=b;", "&", "%41", "=", "a;b=c&"};

    (void)state;
    assert_non_null(s);
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        size_t ul = strlen(units[u]);
        for (size_t i = 0; i < n; i++)
            s[i] = units[u][i % ul];
        assert_int_equal(gw_redact_body(FORM, s, n, 0, &out, NULL, NULL), KS_OK);
        assert_non_null(out);
        assert_memory_equal(out, s, n);
        free(out);
        memmove(s + 2, s, n);
        memcpy(s, "/?", 2);
        s[n + 2] = '\0';
        assert_non_null(out = gw_redact_uri(s));
        assert_string_equal(out, s);
        free(out);
    }
    free(s);
}

/* ---- bodies ---- */

typedef struct {
    const char *name;
    const char *ct;
    const char *body;
    size_t max;
    const char *want;      /* exact output; NULL: not recorded */
    int want_trunc;
} body_case;

static const body_case body_cases[] = {
    /* nested keys */
    {"user object", "application/json",
     "{\"apiVersion\":\"iam.kubesphere.io/v1beta1\",\"kind\":\"User\","
     "\"metadata\":{\"name\":\"admin\",\"annotations\":{"
     "\"iam.kubesphere.io/password-encrypted\":\"true-hunter2\",\"note\":\"x\"}},"
     "\"spec\":{\"email\":\"a@b.c\",\"password\":\"hunter2-a\",\"Password\":\"hunter2-b\","
     "\"new_password\":\"hunter2-c\",\"passwordHash\":\"hunter2-d\"},"
     "\"status\":{\"state\":\"Active\"},"
     "\"oauth\":{\"access_token\":\"hunter2-e\",\"refresh_token\":\"hunter2-f\","
     "\"token_type\":\"Bearer\",\"expires_in\":7200,\"clientSecret\":\"hunter2-g\"}}",
     0,
     "{\"apiVersion\":\"iam.kubesphere.io/v1beta1\",\"kind\":\"User\","
     "\"metadata\":{\"name\":\"admin\",\"annotations\":{"
     "\"iam.kubesphere.io/password-encrypted\":\"" R "\",\"note\":\"x\"}},"
     "\"spec\":{\"email\":\"a@b.c\",\"password\":\"" R "\",\"Password\":\"" R "\","
     "\"new_password\":\"" R "\",\"passwordHash\":\"" R "\"},"
     "\"status\":{\"state\":\"Active\"},"
     "\"oauth\":{\"access_token\":\"" R "\",\"refresh_token\":\"" R "\","
     "\"token_type\":\"" R "\",\"expires_in\":7200,\"clientSecret\":\"" R "\"}}",
     0},
    {"pretty-printed in, compact out", "application/json",
     "{\n  \"user\": \"alice\",\n  \"password\": \"hunter2-pp\"\n}\n", 0,
     "{\"user\":\"alice\",\"password\":\"" R "\"}", 0},
    {"secret values of any type", "application/json",
     "{\"token\":{\"a\":\"hunter2-h\",\"b\":[1,2]},\"secrets\":[\"hunter2-i\"],"
     "\"password\":null,\"apiKey\":12345,\"x\":true}",
     0,
     "{\"token\":\"" R "\",\"secrets\":\"" R "\",\"password\":\"" R "\",\"apiKey\":\"" R
     "\",\"x\":true}",
     0},
    {"arrays of objects", "application/json",
     "{\"items\":[{\"name\":\"a\",\"password\":\"hunter2-j\"},"
     "{\"name\":\"b\",\"credentials\":{\"user\":\"u\",\"pw\":\"hunter2-k\"}},"
     "[{\"private_key\":\"hunter2-l\"}]]}",
     0,
     "{\"items\":[{\"name\":\"a\",\"password\":\"" R "\"},{\"name\":\"b\",\"credentials\":\"" R
     "\"},[{\"private_key\":\"" R "\"}]]}",
     0},
    {"array at the top", "application/json",
     "[{\"Authorization\":\"Basic hunter2-m\"},\"plain\",{\"x-api-key\":\"hunter2-n\"},3]", 0,
     "[{\"Authorization\":\"" R "\"},\"plain\",{\"x-api-key\":\"" R "\"},3]", 0},
    /* values that are secrets under innocent keys */
    {"crypt hashes anywhere", "application/json",
     "{\"metadata\":{\"name\":\"u1\"},\"spec\":{\"encrypted\":\"" BCRYPT "\"},"
     "\"list\":[\"$6$saltsalt$hunter2hashhunter2\",\"ok\"],"
     "\"htpasswd\":\"admin:$2y$05$hunter2xxxxxxxxxx\",\"price\":\"$5 or $6\"}",
     0,
     "{\"metadata\":{\"name\":\"u1\"},\"spec\":{\"encrypted\":\"" R "\"},"
     "\"list\":[\"" R "\",\"ok\"],\"htpasswd\":\"" R "\",\"price\":\"$5 or $6\"}",
     0},
    {"JWTs in strings", "application/json",
     "{\"note\":\"Bearer " JWT "\",\"id\":\"eyJnotajwt\",\"msg\":\"keyJar.a.b\",\"jwt\":\"" JWT
     "\",\"l\":[\"" JWT "\"]}",
     0,
     "{\"note\":\"" R "\",\"id\":\"eyJnotajwt\",\"msg\":\"keyJar.a.b\",\"jwt\":\"" R
     "\",\"l\":[\"" R "\"]}",
     0},
    {"PEM private key", "application/json",
     "{\"cfg\":\"-----BEGIN RSA PRIVATE KEY-----\\nMIIhunter2\\n-----END RSA PRIVATE "
     "KEY-----\\n\",\"cert\":\"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END "
     "CERTIFICATE-----\\n\"}",
     0,
     "{\"cfg\":\"" R "\",\"cert\":\"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END "
     "CERTIFICATE-----\\n\"}",
     0},
    {"a key that is a token", "application/json", "{\"" JWT "\":true,\"a\":1}", 0,
     "{\"a\":1,\"" R "\":\"" R "\"}", 0},
    /* Secrets */
    {"Secret data, stringData, last-applied", "application/json",
     "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"db\",\"namespace\":"
     "\"ns\",\"annotations\":{\"kubectl.kubernetes.io/last-applied-configuration\":"
     "\"{\\\"apiVersion\\\":\\\"v1\\\",\\\"data\\\":{\\\"pw\\\":\\\"aHVudGVyMi1zZWNyZXQ=\\\"},"
     "\\\"kind\\\":\\\"Secret\\\",\\\"metadata\\\":{\\\"name\\\":\\\"db\\\"}}\\n\"}},"
     "\"data\":{\"pw\":\"aHVudGVyMi1zZWNyZXQ=\",\"tls.key\":\"aHVudGVyMi10bHM=\"},"
     "\"stringData\":{\"plain\":\"hunter2-o\"},\"type\":\"Opaque\"}",
     0,
     "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"db\",\"namespace\":"
     "\"ns\",\"annotations\":{\"kubectl.kubernetes.io/last-applied-configuration\":"
     "\"{\\\"apiVersion\\\":\\\"v1\\\",\\\"data\\\":{\\\"pw\\\":\\\"" R "\\\"},"
     "\\\"kind\\\":\\\"Secret\\\",\\\"metadata\\\":{\\\"name\\\":\\\"db\\\"}}\"}},"
     "\"data\":{\"pw\":\"" R "\",\"tls.key\":\"" R "\"},"
     "\"stringData\":{\"plain\":\"" R "\"},\"type\":\"Opaque\"}",
     0},
    {"Secret data not an object", "application/json",
     "{\"kind\":\"Secret\",\"data\":\"aHVudGVyMi1zZWNyZXQ=\"}", 0,
     "{\"kind\":\"Secret\",\"data\":\"" R "\"}", 0},
    {"SecretList items have no kind", "application/json",
     "{\"kind\":\"SecretList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"1\"},"
     "\"items\":[{\"metadata\":{\"name\":\"a\"},\"data\":{\"k\":\"aHVudGVyMi1h\"},\"type\":"
     "\"Opaque\"},{\"metadata\":{\"name\":\"b\"},\"stringData\":{\"k\":\"hunter2-p\"}}]}",
     0,
     "{\"kind\":\"SecretList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"1\"},"
     "\"items\":[{\"metadata\":{\"name\":\"a\"},\"data\":{\"k\":\"" R "\"},\"type\":"
     "\"Opaque\"},{\"metadata\":{\"name\":\"b\"},\"stringData\":{\"k\":\"" R "\"}}]}",
     0},
    {"watch event of a Secret", "application/json",
     "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Secret\",\"metadata\":{\"name\":\"a\"},"
     "\"data\":{\"k\":\"aHVudGVyMi13\"}}}",
     0,
     "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Secret\",\"metadata\":{\"name\":\"a\"},"
     "\"data\":{\"k\":\"" R "\"}}}",
     0},
    {"ConfigMap data is kept", "application/json",
     "{\"kind\":\"ConfigMap\",\"data\":{\"k\":\"v\"},\"binaryData\":{\"b\":\"AAE=\"}}", 0,
     "{\"kind\":\"ConfigMap\",\"data\":{\"k\":\"v\"},\"binaryData\":{\"b\":\"AAE=\"}}", 0},
    /* patches */
    {"JSON Patch", "application/json-patch+json",
     "[{\"op\":\"replace\",\"path\":\"/spec/password\",\"value\":\"hunter2-q\"},"
     "{\"op\":\"add\",\"path\":\"/metadata/labels/app\",\"value\":\"web\"},"
     "{\"op\":\"add\",\"path\":\"/metadata/annotations/iam.kubesphere.io~1password-encrypted\","
     "\"value\":\"hunter2-r\"},{\"op\":\"remove\",\"path\":\"/spec/password\"}]",
     0,
     "[{\"op\":\"replace\",\"path\":\"/spec/password\",\"value\":\"" R "\"},"
     "{\"op\":\"add\",\"path\":\"/metadata/labels/app\",\"value\":\"web\"},"
     "{\"op\":\"add\",\"path\":\"/metadata/annotations/iam.kubesphere.io~1password-encrypted\","
     "\"value\":\"" R "\"},{\"op\":\"remove\",\"path\":\"/spec/password\"}]",
     0},
    {"merge patch", "application/merge-patch+json",
     "{\"spec\":{\"password\":\"hunter2-mp\"}}", 0, "{\"spec\":{\"password\":\"" R "\"}}", 0},
    {"last-applied of a User; other strings kept", "application/strategic-merge-patch+json",
     "{\"kind\":\"User\",\"metadata\":{\"annotations\":{"
     "\"kubectl.kubernetes.io/last-applied-configuration\":"
     "\"{\\\"spec\\\":{\\\"password\\\":\\\"hunter2-s\\\"}}\","
     "\"other\":\"[not json\",\"j\":\"{\\\"a\\\": 1}\",\"e\":\"[]\"}}}",
     0,
     "{\"kind\":\"User\",\"metadata\":{\"annotations\":{"
     "\"kubectl.kubernetes.io/last-applied-configuration\":"
     "\"{\\\"spec\\\":{\\\"password\\\":\\\"" R "\\\"}}\","
     "\"other\":\"[not json\",\"j\":\"{\\\"a\\\": 1}\",\"e\":\"[]\"}}}",
     0},
    {"text kept as it is", "application/json",
     "{\"name\":\"\xe6\x97\xa5\xe6\x9c\xac\",\"s\":\"a\\\"b\\\\c\\u0001\",\"n\":-1.5,\"z\":[]}", 0,
     "{\"name\":\"\xe6\x97\xa5\xe6\x9c\xac\",\"s\":\"a\\\"b\\\\c\\u0001\",\"n\":-1.5,\"z\":[]}", 0},
    /* content types */
    {"no content type, JSON object", NULL, "{\"password\":\"hunter2-t\"}", 0,
     "{\"password\":\"" R "\"}", 0},
    {"empty content type, JSON array", "", "[{\"token\":\"hunter2-t2\"}]", 0,
     "[{\"token\":\"" R "\"}]", 0},
    {"no content type, not JSON", NULL, "password=hunter2-u", 0, NULL, 0},
    {"no content type, scalar", NULL, "\"hunter2-u\"", 0, NULL, 0},
    {"text/plain", "text/plain", "{\"a\":1}", 0, NULL, 0},
    {"yaml", "application/yaml", "password: hunter2-v", 0, NULL, 0},
    {"apply-patch+yaml", "application/apply-patch+yaml", "{\"a\":1}", 0, NULL, 0},
    {"multipart", "multipart/form-data; boundary=x", "password=hunter2", 0, NULL, 0},
    {"jsonl", "application/jsonl", "{\"a\":1}", 0, NULL, 0},
    {"+json without a type", "+json", "{\"a\":1}", 0, NULL, 0},
    {"invalid JSON", "application/json", "{\"password\":\"hunter2-w\"", 0, NULL, 0},
    {"JSON then garbage", "application/json", "{\"a\":1} password=hunter2", 0, NULL, 0},
    {"scalar JSON", "application/json", "\"hunter2-x\"", 0, NULL, 0},
    {"invalid UTF-8", "application/json", "{\"a\":\"\xff hunter2\"}", 0, NULL, 0},
    {"integer beyond 64 bits", "application/json", "{\"a\":123456789012345678901234567890}",
     0, NULL, 0},
    {"charset parameter", "application/json; charset=utf-8", "{\"a\":1}", 0, "{\"a\":1}", 0},
    {"upper case, spaces", "  Application/JSON ;charset=UTF-8", "{\"a\":1}", 0, "{\"a\":1}", 0},
    /* forms */
    {"OAuth password grant", FORM,
     "grant_type=password&username=admin&password=P%40ss-hunter2%21&client_id=kubesphere"
     "&client_secret=hunter2-cs",
     0,
     "grant_type=password&username=admin&password=" RE "&client_id=kubesphere&client_secret=" RE,
     0},
    {"OAuth refresh grant", FORM "; charset=UTF-8",
     "grant_type=refresh_token&refresh_token=" JWT "&client_id=kubesphere", 0,
     "grant_type=refresh_token&refresh_token=" RE "&client_id=kubesphere", 0},
    {"form fields kept byte for byte", FORM,
     "user+name=J%C3%B6rg+M%C3%BCller&pass%77ord=hunter2-y&q=a%2Fb%3Dc&empty=&flag&&Token=&x=1%2B1"
     "&t=%7e~",
     0,
     "user+name=J%C3%B6rg+M%C3%BCller&pass%77ord=" RE "&q=a%2Fb%3Dc&empty=&flag&&Token=" RE
     "&x=1%2B1&t=%7e~",
     0},
    {"form ';' parts", FORM, "a=1;password=hunter2-z&b=2", 0, "a=" RE "&b=2", 0},
    {"form ';' parts, the third", FORM, "a=1;b=2;access_token=hunter2-z2&c=3", 0,
     "a=" RE "&c=3", 0},
    {"form secret values under innocent names", FORM,
     "state=" JWT "&h=%242a%2410%24hunter2hash&x=1", 0, "state=" RE "&h=" RE "&x=1", 0},
    {"form encoded JWT", FORM,
     "x=%65yJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlX3NlY3JldA", 0,
     "x=" RE, 0},
    {"form names that are or hold secrets", FORM,
     JWT "=1&password&%7B%22password%22%3A%22hunter2-aa%22%7D&x%7Bpassword:hunter2-ab=1&"
         "password[]=hunter2-ac",
     0, RE "=1&password&" RE "&" RE "=" RE "&password[]=" RE, 0},
    {"form trailing newline", FORM, "password=hunter2-ad\r\n", 0, "password=" RE, 0},
    {"form with a bad escape", FORM, "a=1&password=%zzhunter2", 0, NULL, 0},
    {"form with a short escape", FORM, "password=hunter2&a=%4", 0, NULL, 0},
    {"form with a control byte", FORM, "a=1\x01&password=hunter2", 0, NULL, 0},
    {"form with raw UTF-8", FORM, "a=\xc3\xa9&password=hunter2", 0, NULL, 0},
    {"JSON sent as a form", FORM, "{\"password\":\"hunter2-ae\"}", 0, RE, 0},
    /* the cap */
    {"over the cap", "application/json", "{\"a\":\"0123456789\"}", 17, NULL, 1},
    {"over the cap, the copy would fit", "application/json", "{ \"a\" : 1 }", 8, NULL, 1},
    {"at the cap", "application/json", "{\"a\":\"0123456789\"}", 18, "{\"a\":\"0123456789\"}", 0},
    {"redacted copy over the cap", "application/json", "{\"token\":1}", 11, NULL, 1},
    {"redacted copy at the cap", "application/json", "{\"token\":1}", 22,
     "{\"token\":\"" R "\"}", 0},
    {"no cap", "application/json", "{\"token\":1}", 0, "{\"token\":\"" R "\"}", 0},
    {"form over the cap", FORM, "password=hunter2-af", 10, NULL, 1},
    {"form redacted copy over the cap", FORM, "password=x", 10, NULL, 1},
    {"other types are not 'truncated'", "text/plain", "0123456789abcdef", 4, NULL, 0},
    /* empty */
    {"empty body", "application/json", "", 0, NULL, 0},
};

static char *redact(const char *ct, const char *body, size_t len, size_t max, int *trunc)
{
    char *out = (char *)(uintptr_t)0x1;
    size_t olen = 12345;
    ks_status st;

    *trunc = -1;
    st = gw_redact_body(ct, body, len, max, &out, &olen, trunc);
    assert_int_equal(st, KS_OK);
    assert_true(*trunc == 0 || *trunc == 1);
    if (out != NULL) {
        assert_int_equal(olen, strlen(out));
        if (max > 0)
            assert_true(olen <= max);
    } else {
        assert_int_equal(olen, 0);
    }
    return out;
}

static void test_bodies(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(body_cases) / sizeof(body_cases[0]); i++) {
        const body_case *c = &body_cases[i];
        int trunc;
        char *out = redact(c->ct, c->body, strlen(c->body), c->max, &trunc);

        assert_clean(c->name, out);
        if (c->want == NULL && out != NULL)
            fail_msg("case \"%s\": recorded, want not: %s", c->name, out);
        if (c->want != NULL && out == NULL)
            fail_msg("case \"%s\": not recorded, want: %s", c->name, c->want);
        if (c->want != NULL && strcmp(out, c->want) != 0)
            fail_msg("case \"%s\":\n  got:  %s\n  want: %s", c->name, out, c->want);
        if (trunc != c->want_trunc)
            fail_msg("case \"%s\": truncated %d, want %d", c->name, trunc, c->want_trunc);
        free(out);
    }
}

static void test_body_edges(void **state)
{
    char *out = (char *)(uintptr_t)0x1;
    int trunc = -1;

    (void)state;
    /* NULL body, NULL out_len and truncated */
    assert_int_equal(gw_redact_body("application/json", NULL, 0, 0, &out, NULL, NULL), KS_OK);
    assert_null(out);
    out = (char *)(uintptr_t)0x1;
    assert_int_equal(gw_redact_body(NULL, "{\"a\":1}", 7, 0, &out, NULL, &trunc), KS_OK);
    assert_string_equal(out, "{\"a\":1}");
    assert_int_equal(trunc, 0);
    free(out);
    /* the length counts, not a NUL */
    assert_int_equal(gw_redact_body(NULL, "{\"a\":1}{\"password\":\"hunter2\"}", 7, 0, &out, NULL,
                                     NULL),
                     KS_OK);
    assert_string_equal(out, "{\"a\":1}");
    free(out);
    /* a form with a NUL byte is not a form */
    assert_int_equal(gw_redact_body(FORM, "a=1\0password=hunter2", 20, 0, &out, NULL, NULL),
                     KS_OK);
    assert_null(out);
}

/* "[[...]]" n deep, or {"a":{"a":...{"password":"hunter2"}}}. */
static char *nested(size_t n, int objects)
{
    char *s = malloc(n * 6 + 64), *p = s;

    assert_non_null(s);
    for (size_t i = 0; i < n; i++)
        p += objects ? (size_t)sprintf(p, "{\"a\":") : (size_t)sprintf(p, "[");
    p += objects ? (size_t)sprintf(p, "{\"password\":\"hunter2\"}") : (size_t)sprintf(p, "1");
    for (size_t i = 0; i < n; i++)
        *p++ = objects ? '}' : ']';
    *p = '\0';
    return s;
}

static void test_depth(void **state)
{
    static const struct {
        size_t n;
        int objects;
        int recorded;
    } cases[] = {
        {GW_REDACT_MAX_DEPTH, 0, 1},       /* containers at depths 0..63 */
        {GW_REDACT_MAX_DEPTH + 1, 0, 0},
        {GW_REDACT_MAX_DEPTH - 1, 1, 1},   /* the innermost object makes 64 */
        {GW_REDACT_MAX_DEPTH, 1, 0},
        {1500, 0, 0},                      /* beyond ours, within jansson's */
        {1500, 1, 0},
        {100000, 0, 0},                    /* beyond jansson's */
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *in = nested(cases[i].n, cases[i].objects), *out;
        int trunc;

        out = redact("application/json", in, strlen(in), 0, &trunc);
        assert_clean("depth", out);
        if ((out != NULL) != cases[i].recorded)
            fail_msg("depth %zu (%s): recorded %d", cases[i].n,
                     cases[i].objects ? "objects" : "arrays", out != NULL);
        assert_int_equal(trunc, 0);
        free(out);
        free(in);
    }

    /* the depth counts inside a string holding JSON too */
    {
        char *inner = nested(GW_REDACT_MAX_DEPTH, 0);
        char *in = malloc(strlen(inner) + 16), *out;
        int trunc;

        assert_non_null(in);
        sprintf(in, "{\"s\":\"%s\"}", inner);
        out = redact("application/json", in, strlen(in), 0, &trunc);
        assert_null(out);
        free(in);
        free(inner);
    }
}

/* ---- gw_redact_json ---- */

static void test_redact_json(void **state)
{
    json_t *v;
    char *text, *deep;

    (void)state;
    gw_redact_json(NULL);

    /* a deep tree: the part beyond the limit goes */
    deep = nested(100, 1);
    assert_non_null(v = json_loads(deep, 0, NULL));
    gw_redact_json(v);
    assert_non_null(text = json_dumps(v, JSON_COMPACT));
    assert_clean("deep tree", text);
    assert_non_null(strstr(text, "\"a\":\"" R "\""));
    free(text);
    json_decref(v);
    free(deep);

    /* a string at the root */
    v = json_string("Bearer " JWT);
    gw_redact_json(v);
    assert_string_equal(json_string_value(v), R);
    json_decref(v);
    v = json_string("{\"password\":\"hunter2\",\"a\":1}");
    gw_redact_json(v);
    assert_string_equal(json_string_value(v), "{\"password\":\"" R "\",\"a\":1}");
    json_decref(v);
    v = json_string("plain");
    gw_redact_json(v);
    assert_string_equal(json_string_value(v), "plain");
    json_decref(v);
    v = json_integer(7);
    gw_redact_json(v);
    assert_int_equal(json_integer_value(v), 7);
    json_decref(v);

    /* a value shared by two parents is redacted in both, the shared
     * "[REDACTED]" itself is never changed */
    {
        json_t *shared = json_pack("{s:s}", "token", "hunter2-shared");
        json_t *root = json_pack("{s:O,s:O}", "a", shared, "b", shared);
        gw_redact_json(root);
        assert_non_null(text = json_dumps(root, JSON_COMPACT));
        assert_string_equal(text, "{\"a\":{\"token\":\"" R "\"},\"b\":{\"token\":\"" R "\"}}");
        free(text);
        json_decref(shared);
        json_decref(root);
    }
}

/* ---- URIs ---- */

static void test_uri(void **state)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"/oauth/authorize?client_id=kubesphere&access_token=hunter2-u1&x=1",
         "/oauth/authorize?client_id=kubesphere&access_token=" RE "&x=1"},
        {"/api/v1/pods?watch=1&labelSelector=app%3Dweb&fieldSelector=metadata.name%3Dx",
         "/api/v1/pods?watch=1&labelSelector=app%3Dweb&fieldSelector=metadata.name%3Dx"},
        {"/p", "/p"},
        {"/p?", "/p?"},
        {"", ""},
        {"/p?token", "/p?token"},
        {"/p?token=", "/p?token=" RE},
        {"/cb?id_token=" JWT "&state=" JWT, "/cb?id_token=" RE "&state=" RE},
        {"/p?password=%zzhunter2", "/p?password=" RE},
        {"/p?a=1&&b=", "/p?a=1&&b="},
        {"/p?Refresh-Token=hunter2-u2", "/p?Refresh-Token=" RE},
        {"/p?in=query?more&x=%ZZ", "/p?in=query?more&x=%ZZ"},
        {"/p?a=1;access_token=hunter2-u3", "/p?a=" RE},
        {"/p?x=%65yJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlX3NlY3JldA",
         "/p?x=" RE},
        {"/p?pass%77ord=hunter2-u4&q=%E4%BD%A0", "/p?pass%77ord=" RE "&q=%E4%BD%A0"},
        {"/p?%zz=1&b=%", "/p?%zz=1&b=%"},
        {"/kapis/x/" JWT "?a=1", "/kapis/x/" JWT "?a=1"},  /* the path is not ours */
    };
    char *out;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        out = gw_redact_uri(cases[i].in);
        assert_non_null(out);
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("uri %s:\n  got:  %s\n  want: %s", cases[i].in, out, cases[i].want);
        if (strchr(cases[i].in, '?') != NULL)
            assert_clean(cases[i].in, strchr(out, '?'));
        free(out);
    }
    out = gw_redact_uri(NULL);
    assert_string_equal(out, "");
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_is_secret),
        cmocka_unit_test(test_value_is_secret),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_linear_forms),
        cmocka_unit_test(test_bodies),
        cmocka_unit_test(test_body_edges),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_redact_json),
        cmocka_unit_test(test_uri),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
