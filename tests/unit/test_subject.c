/* Unit tests: lib/subject.c, the reversible escaping of tokens in NATS
 * subjects and KV keys (rules in lib/subject.h, examples in
 * docs/subjects.md).
 *
 * Output buffers are malloc'd with exactly the capacity passed, so the
 * sanitized build catches any write past cap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "subject.h"

typedef ks_status (*codec_fn)(const char *in, char *out, size_t cap);

/* Run fn with a heap buffer of exactly cap bytes; copy the result to res. */
static ks_status run_exact(codec_fn fn, const char *in, size_t cap, char *res, size_t rescap)
{
    char *buf = malloc(cap > 0 ? cap : 1);
    ks_status st;

    assert_non_null(buf);
    st = fn(in, buf, cap);
    if (st == KS_OK && res != NULL)
        snprintf(res, rescap, "%s", buf);
    free(buf);
    return st;
}

/* An escaped token may hold only [A-Za-z0-9=_-]: never ".", "*", ">", space. */
static void assert_subject_safe(const char *esc)
{
    assert_true(esc[0] != '\0');
    for (const char *p = esc; *p; p++) {
        char c = *p;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '=' || c == '_'))
            fail_msg("byte 0x%02x in escaped \"%s\"", (unsigned char)c, esc);
    }
}

/* Escape then unescape as a token and as a group; both must give in back. */
static void assert_round_trip(const char *in)
{
    size_t n = strlen(in), cap = KS_SUBJECT_ESCAPED_MAX(n);
    char *esc = malloc(cap), *back = malloc(n + 1);

    assert_non_null(esc);
    assert_non_null(back);
    assert_int_equal(ks_subject_escape_token(in, esc, cap), KS_OK);
    assert_subject_safe(esc);
    assert_true(strlen(esc) < cap);
    if (strcmp(esc, "_") != 0)
        assert_null(strchr(esc, '_')); /* "_" only ever means empty in a token */
    assert_int_equal(ks_subject_unescape_token(esc, back, n + 1), KS_OK);
    assert_string_equal(back, in);

    assert_int_equal(ks_subject_escape_group(in, esc, cap), KS_OK);
    assert_subject_safe(esc);
    assert_int_equal(ks_subject_unescape_group(esc, back, n + 1), KS_OK);
    assert_string_equal(back, in);
    free(esc);
    free(back);
}

/* ---- the rules, by example ---- */

static void test_token_examples(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"", "_"},
        {"default", "default"},
        {"kube-system", "kube-system"},
        {"Admin-01", "Admin-01"},
        {"my.config", "my=2Econfig"},
        {"a_b", "a=5Fb"},
        {"_", "=5F"},
        {"*", "=2A"},
        {">", "=3E"},
        {" ", "=20"},
        {"=", "=3D"},
        {"system:admin", "system=3Aadmin"},
        {"alice@example.com", "alice=40example=2Ecom"},
        {"pods/exec", "pods=2Fexec"},
        {"\x01", "=01"},
        {"\x7f", "=7F"},
        {"\xc3\xa9t\xc3\xa9", "=C3=A9t=C3=A9"}, /* "été" in UTF-8 */
        {"\xff", "=FF"},
    };
    char out[128], back[128];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(ks_subject_escape_token(cases[i].in, out, sizeof(out)), KS_OK);
        assert_string_equal(out, cases[i].out);
        assert_int_equal(ks_subject_unescape_token(out, back, sizeof(back)), KS_OK);
        assert_string_equal(back, cases[i].in);
    }
    /* NULL escapes like "" */
    assert_int_equal(ks_subject_escape_token(NULL, out, sizeof(out)), KS_OK);
    assert_string_equal(out, "_");
}

static void test_group_examples(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"", "_"}, /* the core group */
        {"apps", "apps"},
        {"iam.kubesphere.io", "iam_kubesphere_io"},
        {"tenant.kubesphere.io", "tenant_kubesphere_io"},
        {"rbac.authorization.k8s.io", "rbac_authorization_k8s_io"},
        {"Example.COM", "Example_COM"},
        {"x_y.io", "x=5Fy_io"}, /* a literal underscore stays distinct */
        /* not API groups, but still reversible */
        {".", "=2E"},
        {"a.", "a_"},
        {".a", "_a"},
        {"..", "__"},
        {"a..b", "a__b"},
        {"a b", "a=20b"},
    };
    char out[128], back[128];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(ks_subject_escape_group(cases[i].in, out, sizeof(out)), KS_OK);
        assert_string_equal(out, cases[i].out);
        assert_int_equal(ks_subject_unescape_group(out, back, sizeof(back)), KS_OK);
        assert_string_equal(back, cases[i].in);
    }
    /* the core group and "." no longer collide */
    assert_int_equal(ks_subject_unescape_group("_", back, sizeof(back)), KS_OK);
    assert_string_equal(back, "");
    assert_int_equal(ks_subject_escape_group(NULL, out, sizeof(out)), KS_OK);
    assert_string_equal(out, "_");
}

/* ---- round trips ---- */

/* Deterministic xorshift, so a failure reproduces. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static void random_from(char *out, size_t len, const char *alphabet)
{
    size_t n = strlen(alphabet);
    for (size_t i = 0; i < len; i++)
        out[i] = alphabet[rng() % n];
    out[len] = '\0';
}

/* A DNS-1123 label: [a-z0-9]([-a-z0-9]*[a-z0-9])?, 1..63 bytes. */
static void random_label(char *out, size_t len)
{
    random_from(out, len, "abcdefghijklmnopqrstuvwxyz0123456789-");
    out[0] = "abcdefghijklmnopqrstuvwxyz0123456789"[rng() % 36];
    out[len - 1] = "abcdefghijklmnopqrstuvwxyz0123456789"[rng() % 36];
}

static void test_round_trip_kubernetes_names(void **state)
{
    static const char *const fixed[] = {
        "a", "0", "default", "kube-system", "kube-node-lease", "system-workspace",
        "ks-console.kubesphere-system", "sh.helm.release.v1.ks-core.v1",
        "system:controller:bootstrap-signer", "system:aggregate-to-admin",
        "workspace-admin", "platform-admin", "Admin", "JohnDoe", "john.doe@example.com",
        "role-template-view-members", "v1", "v1beta1", "v1alpha2", "users", "pods/exec",
        "iam.kubesphere.io", "tenant.kubesphere.io", "rbac.authorization.k8s.io", "",
    };
    char name[260];

    (void)state;
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        assert_round_trip(fixed[i]);
    for (int i = 0; i < 2000; i++) {
        /* labels of 1..63, subdomains up to 253 */
        size_t len = 1 + rng() % 63, total;
        random_label(name, len);
        assert_round_trip(name);
        total = len;
        while (total + 2 <= 253 && rng() % 3 != 0) {
            size_t l = 1 + rng() % 63;
            if (total + 1 + l > 253)
                l = 253 - total - 1;
            name[total++] = '.';
            random_label(name + total, l);
            total += l;
        }
        assert_true(strlen(name) <= 253);
        assert_round_trip(name);
        /* path-segment names (RBAC, users) allow upper case and more */
        random_from(name, 1 + rng() % 100,
                    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.:@_+~");
        assert_round_trip(name);
    }
}

static void test_round_trip_every_byte(void **state)
{
    char in[2], s[301];

    (void)state;
    for (int b = 1; b <= 255; b++) {
        in[0] = (char)b;
        in[1] = '\0';
        assert_round_trip(in);
    }
    for (int i = 0; i < 3000; i++) {
        size_t len = rng() % 301;
        for (size_t k = 0; k < len; k++)
            s[k] = (char)(1 + rng() % 255);
        s[len] = '\0';
        assert_round_trip(s);
    }
    /* the worst case fits KS_SUBJECT_ESCAPED_MAX exactly as documented */
    memset(s, '.', 255);
    s[255] = '\0';
    {
        char out[KS_SUBJECT_ESCAPED_MAX(255)];
        assert_int_equal(ks_subject_escape_token(s, out, sizeof(out)), KS_OK);
        assert_int_equal(strlen(out), 3 * 255);
    }
}

/* ---- rejected inputs ---- */

static void test_unescape_rejects_invalid(void **state)
{
    static const char *const bad_token[] = {
        "",       /* empty is "_", never "" */
        "=",      /* truncated escapes */
        "=4",
        "a=",
        "=G0",    /* not hex */
        "=2e",    /* lower-case hex: escaping writes upper case */
        "=00",    /* NUL */
        "=41",    /* 'A' stands for itself */
        "=2D",    /* '-' too */
        "=30",    /* '0' too */
        "a.b",    /* a subject separator inside a token */
        "a b", "a*", ">", "a\tb", "\xc3\xa9",
        "a_b",    /* '_' is only ever the whole token */
        "__", "_a", "a_",
    };
    static const char *const bad_group[] = {
        "", "=", "=2e", "=41", "a=2Eb", "=2E_", "_=2E", "a.b", "a b", "*", "=00",
    };
    char out[64];

    (void)state;
    for (size_t i = 0; i < sizeof(bad_token) / sizeof(bad_token[0]); i++) {
        ks_status st = ks_subject_unescape_token(bad_token[i], out, sizeof(out));
        if (st != KS_ERR_INVALID)
            fail_msg("token \"%s\": %s, expected invalid", bad_token[i], ks_status_name(st));
    }
    for (size_t i = 0; i < sizeof(bad_group) / sizeof(bad_group[0]); i++) {
        ks_status st = ks_subject_unescape_group(bad_group[i], out, sizeof(out));
        if (st != KS_ERR_INVALID)
            fail_msg("group \"%s\": %s, expected invalid", bad_group[i], ks_status_name(st));
    }
    /* what escaping does produce is accepted */
    assert_int_equal(ks_subject_unescape_token("=5F", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "_");
    assert_int_equal(ks_subject_unescape_group("=2E", out, sizeof(out)), KS_OK);
    assert_string_equal(out, ".");
    assert_int_equal(ks_subject_unescape_group("__", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "..");
    assert_int_equal(ks_subject_unescape_group("=5F", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "_");
}

/* ---- buffer caps ---- */

/* For every cap below the needed size: KS_ERR_TOO_LARGE; at it: KS_OK. */
static void assert_caps(codec_fn fn, const char *in, const char *expect)
{
    size_t need = strlen(expect) + 1;
    char res[1024];

    for (size_t cap = 0; cap < need; cap++) {
        ks_status st = run_exact(fn, in, cap, NULL, 0);
        if (st != KS_ERR_TOO_LARGE)
            fail_msg("\"%s\" with cap %zu: %s, expected too_large", in, cap, ks_status_name(st));
    }
    assert_int_equal(run_exact(fn, in, need, res, sizeof(res)), KS_OK);
    assert_string_equal(res, expect);
}

static void test_buffer_caps(void **state)
{
    (void)state;
    assert_caps(ks_subject_escape_token, "abc", "abc");
    assert_caps(ks_subject_escape_token, "", "_");
    assert_caps(ks_subject_escape_token, "a.b", "a=2Eb");
    assert_caps(ks_subject_escape_token, "..", "=2E=2E");
    assert_caps(ks_subject_escape_group, "iam.kubesphere.io", "iam_kubesphere_io");
    assert_caps(ks_subject_escape_group, ".", "=2E");
    assert_caps(ks_subject_escape_group, "", "_");
    assert_caps(ks_subject_unescape_token, "abc", "abc");
    assert_caps(ks_subject_unescape_token, "a=2Eb", "a.b");
    assert_caps(ks_subject_unescape_token, "_", "");
    assert_caps(ks_subject_unescape_group, "iam_kubesphere_io", "iam.kubesphere.io");
}

/* Composite subjects: every cap below the length fails cleanly. */
static void test_composite_caps(void **state)
{
    const char *expect = "ks.audit.ws-1.kube-system.pods=2Fexec.create";
    size_t need = strlen(expect) + 1;
    char key[64], g[64], r[64], n[64], nm[64];

    (void)state;
    for (size_t cap = 0; cap <= need; cap++) {
        char *buf = malloc(cap > 0 ? cap : 1);
        ks_status st;
        assert_non_null(buf);
        st = ks_subject_audit("ws-1", "kube-system", "pods/exec", "create", buf, cap);
        if (cap < need)
            assert_int_equal(st, KS_ERR_TOO_LARGE);
        else {
            assert_int_equal(st, KS_OK);
            assert_string_equal(buf, expect);
        }
        st = ks_subject_api("iam.kubesphere.io", "v1beta1", buf, cap);
        if (cap < strlen("ks.api.iam_kubesphere_io.v1beta1") + 1)
            assert_int_equal(st, KS_ERR_TOO_LARGE);
        else
            assert_int_equal(st, KS_OK);
        free(buf);
    }
    /* key parse: each part must fit cap */
    assert_int_equal(ks_subject_object_key("iam.kubesphere.io", "users", "", "admin", key,
                                           sizeof(key)), KS_OK);
    assert_int_equal(ks_subject_object_key_parse(key, g, r, n, nm, 6), KS_ERR_TOO_LARGE);
    assert_int_equal(ks_subject_object_key_parse(key, g, r, n, nm, 18), KS_OK);
    assert_string_equal(g, "iam.kubesphere.io");
    assert_string_equal(r, "users");
    assert_string_equal(n, "");
    assert_string_equal(nm, "admin");
}

/* ---- subjects and keys ---- */

static void test_api_subject(void **state)
{
    char out[128];

    (void)state;
    assert_int_equal(ks_subject_api("iam.kubesphere.io", "v1beta1", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "ks.api.iam_kubesphere_io.v1beta1");
    assert_int_equal(ks_subject_api("tenant.kubesphere.io", "v1alpha2", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "ks.api.tenant_kubesphere_io.v1alpha2");
    assert_int_equal(ks_subject_api("", "v1", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "ks.api._.v1");
    /* a version is a token: a hostile one cannot add tokens or wildcards */
    assert_int_equal(ks_subject_api("x.io", "v1.>", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "ks.api.x_io.v1=2E=3E");
}

static void test_audit_subject(void **state)
{
    char out[256];

    (void)state;
    assert_int_equal(ks_subject_audit("", "", "users", "create", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "ks.audit._._.users.create");
    assert_int_equal(ks_subject_audit("system-workspace", "kube-system", "pods", "delete", out,
                                      sizeof(out)), KS_OK);
    assert_string_equal(out, "ks.audit.system-workspace.kube-system.pods.delete");
    assert_int_equal(ks_subject_audit("ws", "ns", "pods/log", "get", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "ks.audit.ws.ns.pods=2Flog.get");
    assert_int_equal(ks_subject_audit(NULL, NULL, "*", ">", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "ks.audit._._.=2A.=3E");
}

static void test_object_key_and_parse(void **state)
{
    static const struct {
        const char *group, *resource, *ns, *name, *key;
    } cases[] = {
        {"", "namespaces", "", "default", "_.namespaces._.default"},
        {"iam.kubesphere.io", "users", "", "admin", "iam_kubesphere_io.users._.admin"},
        {"iam.kubesphere.io", "globalroles", "", "platform-admin",
         "iam_kubesphere_io.globalroles._.platform-admin"},
        {"rbac.authorization.k8s.io", "roles", "kube-system", "system:controller:bootstrap-signer",
         "rbac_authorization_k8s_io.roles.kube-system.system=3Acontroller=3Abootstrap-signer"},
        {"tenant.kubesphere.io", "workspacetemplates", "", "my.ws",
         "tenant_kubesphere_io.workspacetemplates._.my=2Ews"},
        {"iam.kubesphere.io", "loginrecords", "", "Alice_01@corp",
         "iam_kubesphere_io.loginrecords._.Alice=5F01=40corp"},
    };
    char key[512], g[256], r[256], n[256], nm[256];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(ks_subject_object_key(cases[i].group, cases[i].resource, cases[i].ns,
                                               cases[i].name, key, sizeof(key)), KS_OK);
        assert_string_equal(key, cases[i].key);
        assert_int_equal(ks_subject_object_key_parse(key, g, r, n, nm, sizeof(g)), KS_OK);
        assert_string_equal(g, cases[i].group);
        assert_string_equal(r, cases[i].resource);
        assert_string_equal(n, cases[i].ns);
        assert_string_equal(nm, cases[i].name);
    }
    /* NULL namespace: cluster-scoped */
    assert_int_equal(ks_subject_object_key("", "namespaces", NULL, "x", key, sizeof(key)), KS_OK);
    assert_string_equal(key, "_.namespaces._.x");

    /* random parts of every byte round-trip through a key */
    for (int i = 0; i < 1000; i++) {
        char parts[4][64];
        for (int p = 0; p < 4; p++) {
            size_t len = rng() % 40;
            for (size_t k = 0; k < len; k++)
                parts[p][k] = (char)(1 + rng() % 255);
            parts[p][len] = '\0';
        }
        assert_int_equal(ks_subject_object_key(parts[0], parts[1], parts[2], parts[3], key,
                                               sizeof(key)), KS_OK);
        assert_int_equal(ks_subject_object_key_parse(key, g, r, n, nm, sizeof(g)), KS_OK);
        assert_string_equal(g, parts[0]);
        assert_string_equal(r, parts[1]);
        assert_string_equal(n, parts[2]);
        assert_string_equal(nm, parts[3]);
    }
}

static void test_object_key_parse_rejects(void **state)
{
    static const char *const bad[] = {
        "",                  /* no tokens */
        "a.b.c",             /* three */
        "a.b.c.d.e",         /* five */
        "a..c.d",            /* an empty token */
        "a.b.c.",
        ".b.c.d",
        "a.b.c.=4",          /* a broken escape */
        "a.b.c.=41",         /* a needless escape */
        "a.b_x.c.d",         /* '_' inside a plain token */
        "a.b.c.d*",
        "a.b.c.>",
    };
    char g[64], r[64], n[64], nm[64];
    char *longkey;

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ks_status st = ks_subject_object_key_parse(bad[i], g, r, n, nm, sizeof(g));
        if (st != KS_ERR_INVALID)
            fail_msg("key \"%s\": %s, expected invalid", bad[i], ks_status_name(st));
    }
    /* a token beyond the parser's 1 KiB cap */
    longkey = malloc(1100 + 8);
    assert_non_null(longkey);
    memcpy(longkey, "a.b.c.", 6);
    memset(longkey + 6, 'x', 1100);
    longkey[1106] = '\0';
    assert_int_equal(ks_subject_object_key_parse(longkey, g, r, n, nm, sizeof(g)), KS_ERR_TOO_LARGE);
    free(longkey);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_examples),
        cmocka_unit_test(test_group_examples),
        cmocka_unit_test(test_round_trip_kubernetes_names),
        cmocka_unit_test(test_round_trip_every_byte),
        cmocka_unit_test(test_unescape_rejects_invalid),
        cmocka_unit_test(test_buffer_caps),
        cmocka_unit_test(test_composite_caps),
        cmocka_unit_test(test_api_subject),
        cmocka_unit_test(test_audit_subject),
        cmocka_unit_test(test_object_key_and_parse),
        cmocka_unit_test(test_object_key_parse_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
