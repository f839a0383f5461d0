/* Unit tests of lib/kube.c: kubeconfig parsing, Status parsing and mapping,
 * the watch splitter, and the client against a canned HTTP responder on
 * 127.0.0.1 (a socket in a thread of this test, not a real server). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kube.h"
#include "log.h"

/* ---- helpers ---------------------------------------------------------- */

static char tmpdir[256];

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup_tmp(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ks-kube-unit-XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    write_file(tmpdir, "ca.crt", "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n");
    write_file(tmpdir, "client.crt", "CERT\n");
    write_file(tmpdir, "client.key", "KEY\n");
    write_file(tmpdir, "token", "file-token-123\n");
    return 0;
}

static int teardown_tmp(void **state)
{
    char cmd[300];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static ks_status parse(const char *text, const char *context, ks_kube_config *cfg)
{
    return ks_kube_config_parse_kubeconfig(text, strlen(text), "test.yaml", tmpdir, context, cfg);
}

/* base64("ca-pem") = Y2EtcGVt, base64("cert-pem!") = Y2VydC1wZW0h, base64("k") = aw== */
static const char *kubectl_style =
    "apiVersion: v1\n"
    "clusters:\n"
    "- cluster:\n"
    "    certificate-authority-data: Y2EtcGVt\n"
    "    server: https://127.0.0.1:6443/\n"
    "  name: kind-kind\n"
    "contexts:\n"
    "- context:\n"
    "    cluster: kind-kind\n"
    "    user: kind-kind\n"
    "  name: kind-kind\n"
    "current-context: kind-kind\n"
    "kind: Config\n"
    "preferences: {}\n"
    "users:\n"
    "- name: kind-kind\n"
    "  user:\n"
    "    client-certificate-data: Y2VydC1wZW0h\n"
    "    client-key-data: aw==\n";

/* ---- kubeconfig ------------------------------------------------------- */

static void test_kubeconfig_kubectl_style(void **state)
{
    ks_kube_config cfg = {0};

    (void)state;
    assert_int_equal(parse(kubectl_style, NULL, &cfg), KS_OK);
    assert_string_equal(cfg.server, "https://127.0.0.1:6443");
    assert_int_equal(cfg.ca_data_len, 6);
    assert_memory_equal(cfg.ca_data, "ca-pem", 6);
    assert_int_equal(cfg.cert_data_len, 9);
    assert_memory_equal(cfg.cert_data, "cert-pem!", 9);
    assert_int_equal(cfg.key_data_len, 1);
    assert_memory_equal(cfg.key_data, "k", 1);
    assert_null(cfg.ca_file);
    assert_null(cfg.token);
    assert_null(cfg.token_file);
    assert_int_equal(cfg.insecure, 0);
    ks_kube_config_clear(&cfg);
    assert_null(cfg.server);
    ks_kube_config_clear(&cfg);   /* twice is fine */
    ks_kube_config_clear(NULL);
}

static const char *two_contexts =
    "---\n"
    "# two clusters, two users\n"
    "apiVersion: v1\n"
    "kind: Config\n"
    "current-context: \"alpha\"   # the default\n"
    "clusters:\n"
    "  - name: a\n"
    "    cluster:\n"
    "      server: 'https://a.example:6443'\n"
    "      insecure-skip-tls-verify: true\n"
    "      extensions:\n"
    "      - name: client.authentication.k8s.io/exec\n"
    "        extension:\n"
    "          provider: x\n"
    "  - name: b\n"
    "    cluster:\n"
    "      server: http://127.0.0.1:8080\n"
    "      certificate-authority: ca.crt\n"
    "contexts:\n"
    "  - name: alpha\n"
    "    context: {\"cluster\": \"a\", \"user\": \"ua\", \"namespace\": \"default\"}\n"
    "  - name: beta\n"
    "    context:\n"
    "      cluster: b\n"
    "      user: ub\n"
    "users:\n"
    "  - name: ua\n"
    "    user:\n"
    "      token: \"tok\\u0041-a\"\n"
    "  - name: ub\n"
    "    user:\n"
    "      tokenFile: token\n"
    "      note: |\n"
    "        block scalars are skipped\n"
    "        # even with this\n"
    "preferences: {}\n";

static void test_kubeconfig_context_selection(void **state)
{
    ks_kube_config cfg = {0};
    char want[512];

    (void)state;
    assert_int_equal(parse(two_contexts, NULL, &cfg), KS_OK);
    assert_string_equal(cfg.server, "https://a.example:6443");
    assert_int_equal(cfg.insecure, 1);
    assert_string_equal(cfg.token, "tokA-a");
    assert_null(cfg.ca_file);
    ks_kube_config_clear(&cfg);

    assert_int_equal(parse(two_contexts, "beta", &cfg), KS_OK);
    assert_string_equal(cfg.server, "http://127.0.0.1:8080");
    assert_int_equal(cfg.insecure, 0);
    assert_null(cfg.token);
    snprintf(want, sizeof(want), "%s/token", tmpdir);
    assert_string_equal(cfg.token_file, want);
    snprintf(want, sizeof(want), "%s/ca.crt", tmpdir);
    assert_string_equal(cfg.ca_file, want);
    ks_kube_config_clear(&cfg);

    assert_int_equal(parse(two_contexts, "gamma", &cfg), KS_ERR_INVALID);
    assert_non_null(strstr(ks_status_last(), "no entry named \"gamma\""));
    assert_null(cfg.server);
}

static void test_kubeconfig_files_relative(void **state)
{
    ks_kube_config cfg = {0};
    char path[512], want[512];

    (void)state;
    write_file(tmpdir, "kubeconfig",
               "apiVersion: v1\r\n"
               "clusters:\r\n"
               "- cluster:\r\n"
               "    certificate-authority: ca.crt\r\n"
               "    server: https://127.0.0.1:6443\r\n"
               "  name: c\r\n"
               "contexts:\r\n"
               "- context:\r\n"
               "    cluster: c\r\n"
               "    user: u\r\n"
               "  name: x\r\n"
               "current-context: x\r\n"
               "users:\r\n"
               "- name: u\r\n"
               "  user:\r\n"
               "    client-certificate: ./client.crt\r\n"
               "    client-key: client.key\r\n");
    snprintf(path, sizeof(path), "%s/kubeconfig", tmpdir);
    assert_int_equal(ks_kube_config_from_kubeconfig(path, NULL, &cfg), KS_OK);
    snprintf(want, sizeof(want), "%s/ca.crt", tmpdir);
    assert_string_equal(cfg.ca_file, want);
    snprintf(want, sizeof(want), "%s/./client.crt", tmpdir);
    assert_string_equal(cfg.cert_file, want);
    snprintf(want, sizeof(want), "%s/client.key", tmpdir);
    assert_string_equal(cfg.key_file, want);
    assert_null(cfg.ca_data);
    ks_kube_config_clear(&cfg);

    /* a missing referenced file: KS_ERR_IO naming the kubeconfig, the field and the path */
    write_file(tmpdir, "kubeconfig2",
               "clusters:\n- name: c\n  cluster:\n    server: https://h:1\n"
               "    certificate-authority: nope.crt\n"
               "contexts:\n- name: x\n  context:\n    cluster: c\n"
               "current-context: x\n");
    snprintf(path, sizeof(path), "%s/kubeconfig2", tmpdir);
    assert_int_equal(ks_kube_config_from_kubeconfig(path, NULL, &cfg), KS_ERR_IO);
    assert_non_null(strstr(ks_status_last(), path));
    assert_non_null(strstr(ks_status_last(), "clusters[\"c\"].cluster.certificate-authority"));
    assert_non_null(strstr(ks_status_last(), "nope.crt"));

    snprintf(path, sizeof(path), "%s/does-not-exist", tmpdir);
    assert_int_equal(ks_kube_config_from_kubeconfig(path, NULL, &cfg), KS_ERR_IO);
    assert_non_null(strstr(ks_status_last(), path));
    assert_null(cfg.server);
}

static void test_kubeconfig_json(void **state)
{
    ks_kube_config cfg = {0};
    const char *json =
        "  {\"apiVersion\":\"v1\",\"kind\":\"Config\",\"current-context\":\"c\","
        "\"clusters\":[{\"name\":\"k\",\"cluster\":{\"server\":\"https://10.0.0.1\","
        "\"insecure-skip-tls-verify\":false}}],"
        "\"contexts\":[{\"name\":\"c\",\"context\":{\"cluster\":\"k\",\"user\":\"u\"}}],"
        "\"users\":[{\"name\":\"u\",\"user\":{\"token\":\"abc\"}}]}";

    (void)state;
    assert_int_equal(parse(json, NULL, &cfg), KS_OK);
    assert_string_equal(cfg.server, "https://10.0.0.1");
    assert_string_equal(cfg.token, "abc");
    ks_kube_config_clear(&cfg);
}

/* A minimal valid document with one line replaced, for the malformed cases. */
#define KC_HEAD "clusters:\n- name: c\n  cluster:\n"
#define KC_SERVER "    server: https://h:6443\n"
#define KC_CTX "contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n"
#define KC_CUR "current-context: x\n"
#define KC_USERS "users:\n- name: u\n  user:\n"

static void test_kubeconfig_malformed(void **state)
{
    static const struct {
        const char *text;
        ks_status want;
        const char *needle;   /* must appear in ks_status_last() */
    } cases[] = {
        {"", KS_ERR_INVALID, "empty"},
        {"# only a comment\n", KS_ERR_INVALID, "empty"},
        {"- a\n- b\n", KS_ERR_INVALID, "top level"},
        {"just a scalar\n", KS_ERR_INVALID, "test.yaml:1"},
        {KC_HEAD "\tserver: x\n", KS_ERR_INVALID, "test.yaml:4: tab"},
        {KC_HEAD KC_SERVER "      extra: 1\n", KS_ERR_INVALID, "test.yaml:5: bad indentation"},
        {KC_HEAD KC_SERVER "    server: https://again\n", KS_ERR_INVALID, "duplicate key \"server\""},
        {KC_HEAD "    server: \"https://h:6443\n", KS_ERR_INVALID, "unterminated"},
        {KC_HEAD "    server: \"https://h\" trailing\n", KS_ERR_INVALID, "after a quoted"},
        {KC_HEAD "    server: &a https://h\n", KS_ERR_INVALID, "anchors"},
        {KC_HEAD "    server: *a\n", KS_ERR_INVALID, "anchors"},
        {KC_HEAD "    server: !!str https://h\n", KS_ERR_INVALID, "tags"},
        {KC_HEAD "    server: a: b\n", KS_ERR_INVALID, "unexpected ':'"},
        {KC_HEAD "    server: [a, b\n", KS_ERR_INVALID, "expected ',' or ']'"},
        {KC_HEAD "    server: {a: b\n", KS_ERR_INVALID, "expected ',' or '}'"},
        {KC_HEAD "    server: {a b}\n", KS_ERR_INVALID, "expected ':' after a key"},
        {KC_HEAD "    server: {a: b, a: c}\n", KS_ERR_INVALID, "duplicate key \"a\""},
        {KC_HEAD "    server: {a: *x}\n", KS_ERR_INVALID, "unsupported value"},
        {KC_HEAD "    server: [a] x\n", KS_ERR_INVALID, "after a flow collection"},
        {KC_HEAD "    server: \"bad \\q escape\"\n", KS_ERR_INVALID, "escape"},
        {KC_HEAD "    server:\n      multi\n      line\n", KS_ERR_INVALID, "multi-line"},
        {KC_HEAD KC_SERVER "---\n" KC_CTX KC_CUR, KS_ERR_INVALID, "multiple YAML documents"},
        {"%YAML 1.2\n" KC_HEAD KC_SERVER KC_CTX KC_CUR, KS_ERR_INVALID, "directives"},
        {KC_HEAD KC_SERVER KC_CTX KC_CUR "...\nmore: x\n", KS_ERR_INVALID, "after the end"},
        {KC_HEAD KC_SERVER KC_CTX, KS_ERR_INVALID, "current-context is not set"},
        {KC_HEAD KC_SERVER KC_CTX "current-context: y\n", KS_ERR_INVALID,
         "contexts: no entry named \"y\""},
        {KC_HEAD "    insecure-skip-tls-verify: true\n" KC_CTX KC_CUR, KS_ERR_INVALID,
         "clusters[\"c\"].cluster.server: missing"},
        {KC_HEAD "    server: ftp://h\n" KC_CTX KC_CUR, KS_ERR_INVALID,
         "clusters[\"c\"].cluster.server: must be an http"},
        {KC_HEAD "    server: [1]\n" KC_CTX KC_CUR, KS_ERR_INVALID, "server: must be a string"},
        {KC_HEAD KC_SERVER "    certificate-authority-data: Y2EtcGVt!\n" KC_CTX KC_CUR,
         KS_ERR_INVALID, "certificate-authority-data: invalid base64"},
        {KC_HEAD KC_SERVER "    certificate-authority-data: Y2E\n" KC_CTX KC_CUR, KS_ERR_INVALID,
         "invalid base64"},
        {KC_HEAD KC_SERVER "    certificate-authority-data: Y2=t\n" KC_CTX KC_CUR, KS_ERR_INVALID,
         "invalid base64"},
        {KC_HEAD KC_SERVER "    certificate-authority-data: Y2EtcGVt\n"
                           "    certificate-authority: ca.crt\n" KC_CTX KC_CUR,
         KS_ERR_INVALID, "both certificate-authority and certificate-authority-data"},
        {KC_HEAD KC_SERVER "    insecure-skip-tls-verify: maybe\n" KC_CTX KC_CUR, KS_ERR_INVALID,
         "insecure-skip-tls-verify: must be true or false"},
        {KC_HEAD KC_SERVER "contexts:\n- name: x\n  context:\n    user: u\n" KC_CUR,
         KS_ERR_INVALID, "contexts[\"x\"].context.cluster: missing"},
        {KC_HEAD KC_SERVER "contexts:\n- context: {}\n" KC_CUR, KS_ERR_INVALID,
         "contexts[0]: needs a name"},
        {KC_HEAD KC_SERVER "contexts: 3\n" KC_CUR, KS_ERR_INVALID, "contexts: must be a list"},
        {KC_HEAD KC_SERVER KC_CTX KC_CUR, KS_ERR_INVALID, "users: no entry named \"u\""},
        {KC_HEAD KC_SERVER KC_CTX KC_CUR KC_USERS "    token: a\n    tokenFile: token\n",
         KS_ERR_INVALID, "both token and tokenFile"},
        {KC_HEAD KC_SERVER KC_CTX KC_CUR KC_USERS "    token: \"a b\"\n", KS_ERR_INVALID,
         "users[\"u\"].user.token: contains blanks"},
        {KC_HEAD KC_SERVER KC_CTX KC_CUR KC_USERS "    client-certificate-data: aw==\n",
         KS_ERR_INVALID, "certificate and key must be set together"},
        {KC_HEAD KC_SERVER KC_CTX KC_CUR KC_USERS "    client-key-data: a\n", KS_ERR_INVALID,
         "users[\"u\"].user.client-key-data: invalid base64"},
        {KC_HEAD KC_SERVER KC_CTX KC_CUR KC_USERS "    exec:\n      command: x\n",
         KS_ERR_INVALID, "users[\"u\"].user.exec: not supported"},
        {KC_HEAD KC_SERVER KC_CTX KC_CUR KC_USERS "    tokenFile: missing-token\n", KS_ERR_IO,
         "users[\"u\"].user.tokenFile"},
        {KC_HEAD KC_SERVER KC_CTX KC_CUR "users:\n- name: u\n- name: v\n", KS_ERR_INVALID,
         "users[\"u\"].user: missing or not a mapping"},
    };
    char msg[600];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ks_kube_config cfg = {0};
        ks_status st;

        ks_status_clear();
        st = parse(cases[i].text, NULL, &cfg);
        snprintf(msg, sizeof(msg), "%s", ks_status_last());
        if (st != cases[i].want || strstr(msg, cases[i].needle) == NULL ||
            strstr(msg, "test.yaml") == NULL) {
            print_error("case %zu: status %s, message \"%s\", want %s and \"%s\"\n", i,
                        ks_status_name(st), msg, ks_status_name(cases[i].want), cases[i].needle);
            fail();
        }
        assert_null(cfg.server);
        /* the token never appears in an error */
        assert_null(strstr(msg, "\"a b\""));
    }
}

static void test_kubeconfig_edge_forms(void **state)
{
    ks_kube_config cfg = {0};
    /* nested sequences, "-   key" with wider offsets, a key with a quoted name,
     * null values, empty strings treated as unset, a BOM, indented root */
    const char *text =
        "\xEF\xBB\xBF"
        "  apiVersion: v1\n"
        "  \"current-context\": x   \n"
        "  clusters:\n"
        "  -   name: c\n"
        "      cluster:\n"
        "        server: https://h:6443\n"
        "        certificate-authority-data: \"\"\n"
        "        proxy-url: ~\n"
        "  contexts:\n"
        "  - name: x\n"
        "    context:\n"
        "      cluster: c\n"
        "      user: u\n"
        "  users:\n"
        "  - name: u\n"
        "    user:\n"
        "      token: 'it''s'\n"
        "      lists:\n"
        "      - - a\n"
        "        - b\n"
        "      -\n"
        "      - \"c\"\n"
        "      flow: {a: [b, 'c', {d: e}], \"f\": https://x:1/y, g: [], h: {}, }   # comment\n";

    (void)state;
    assert_int_equal(parse(text, NULL, &cfg), KS_OK);
    assert_string_equal(cfg.server, "https://h:6443");
    assert_null(cfg.ca_data);
    assert_string_equal(cfg.token, "it's");
    ks_kube_config_clear(&cfg);

    /* a hand-written flow-style context with plain scalars */
    assert_int_equal(parse("clusters: [{name: k, cluster: {server: 'https://h:1'}}]\n"
                           "users: [{name: c, user: {token: abc}}]\n"
                           "contexts:\n- name: x\n  context: {cluster: k, user: c}\n"
                           "current-context: x\n",
                           NULL, &cfg),
                     KS_OK);
    assert_string_equal(cfg.server, "https://h:1");
    assert_string_equal(cfg.token, "abc");
    ks_kube_config_clear(&cfg);
}

static void test_config_explicit_and_in_cluster(void **state)
{
    ks_kube_config cfg = {0};
    char tok[512], ca[512];

    (void)state;
    snprintf(tok, sizeof(tok), "%s/token", tmpdir);
    snprintf(ca, sizeof(ca), "%s/ca.crt", tmpdir);
    assert_int_equal(ks_kube_config_explicit("https://127.0.0.1:6443//", tok, ca, &cfg), KS_OK);
    assert_string_equal(cfg.server, "https://127.0.0.1:6443");
    assert_string_equal(cfg.token_file, tok);
    assert_string_equal(cfg.ca_file, ca);
    ks_kube_config_clear(&cfg);
    assert_int_equal(ks_kube_config_explicit("127.0.0.1:6443", NULL, NULL, &cfg), KS_ERR_INVALID);
    assert_int_equal(ks_kube_config_explicit("https://h", "/nonexistent/token", NULL, &cfg),
                     KS_ERR_IO);
    assert_non_null(strstr(ks_status_last(), "/nonexistent/token"));

    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
    assert_int_equal(ks_kube_config_in_cluster(tmpdir, &cfg), KS_ERR_INVALID);
    assert_non_null(strstr(ks_status_last(), "KUBERNETES_SERVICE_HOST"));
    setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    assert_int_equal(ks_kube_config_in_cluster(tmpdir, &cfg), KS_OK);
    assert_string_equal(cfg.server, "https://10.96.0.1:443");
    assert_string_equal(cfg.token_file, tok);
    assert_string_equal(cfg.ca_file, ca);
    ks_kube_config_clear(&cfg);
    setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
    assert_int_equal(ks_kube_config_in_cluster(tmpdir, &cfg), KS_OK);
    assert_string_equal(cfg.server, "https://[fd00::1]:443");
    ks_kube_config_clear(&cfg);
    setenv("KUBERNETES_SERVICE_PORT", "99999", 1);
    assert_int_equal(ks_kube_config_in_cluster(tmpdir, &cfg), KS_ERR_INVALID);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    assert_int_equal(ks_kube_config_in_cluster("/nonexistent", &cfg), KS_ERR_IO);
    assert_non_null(strstr(ks_status_last(), "/nonexistent/token"));
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
}

/* ---- Status parsing and mapping --------------------------------------- */

static void test_status_parse(void **state)
{
    ks_kube_status s;
    const char *nf = "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
                     "\"status\":\"Failure\",\"message\":\"configmaps \\\"x\\\" not found\","
                     "\"reason\":\"NotFound\",\"details\":{\"name\":\"x\",\"kind\":\"configmaps\"},"
                     "\"code\":404}";
    char big[3000];
    size_t o;

    (void)state;
    assert_int_equal(ks_kube_status_parse(nf, strlen(nf), &s), KS_OK);
    assert_int_equal(s.code, 404);
    assert_string_equal(s.reason, "NotFound");
    assert_string_equal(s.message, "configmaps \"x\" not found");

    assert_int_equal(ks_kube_status_parse("{\"kind\":\"ConfigMap\"}", 20, &s), KS_ERR_PROTOCOL);
    assert_int_equal(ks_kube_status_parse("not json", 8, &s), KS_ERR_PROTOCOL);
    assert_int_equal(ks_kube_status_parse("", 0, &s), KS_ERR_PROTOCOL);
    assert_int_equal(ks_kube_status_parse("{\"kind\":\"Status\",\"code\":\"404\"}", 30, &s),
                     KS_ERR_PROTOCOL);
    assert_int_equal(ks_kube_status_parse("{\"kind\":\"Status\"}", 17, &s), KS_OK);
    assert_int_equal(s.code, 0);
    assert_string_equal(s.reason, "");

    /* a long message made of 3-byte characters is cut on a character boundary */
    o = (size_t)snprintf(big, sizeof(big), "{\"kind\":\"Status\",\"code\":410,\"reason\":\"Expired\","
                                           "\"message\":\"");
    for (int i = 0; i < 700; i++) {
        memcpy(big + o, "\xE2\x82\xAC", 3);   /* the euro sign */
        o += 3;
    }
    o += (size_t)snprintf(big + o, sizeof(big) - o, "\"}");
    assert_int_equal(ks_kube_status_parse(big, o, &s), KS_OK);
    assert_true(strlen(s.message) < KS_KUBE_MESSAGE_MAX);
    assert_int_equal(strlen(s.message) % 3, 0);
    assert_true(ks_kube_status_is_expired(&s));
}

static void test_status_map(void **state)
{
    static const struct {
        long code;
        ks_status want;
    } m[] = {
        {200, KS_OK},
        {201, KS_OK},
        {204, KS_OK},
        {301, KS_ERR_PROTOCOL},
        {400, KS_ERR_INVALID},
        {401, KS_ERR_DENIED},
        {403, KS_ERR_DENIED},
        {404, KS_ERR_NOT_FOUND},
        {405, KS_ERR_INVALID},
        {408, KS_ERR_TIMEOUT},
        {409, KS_ERR_CONFLICT},
        {410, KS_ERR_CONFLICT},
        {413, KS_ERR_TOO_LARGE},
        {415, KS_ERR_INVALID},
        {422, KS_ERR_INVALID},
        {429, KS_ERR_UNAVAILABLE},
        {500, KS_ERR_UNAVAILABLE},
        {503, KS_ERR_UNAVAILABLE},
        {504, KS_ERR_UNAVAILABLE},
        {0, KS_ERR_PROTOCOL},
        {100, KS_ERR_PROTOCOL},
        {600, KS_ERR_PROTOCOL},
    };
    ks_kube_status s = {.code = 410};
    ks_kube_response r = {0};

    (void)state;
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++) {
        if (ks_kube_status_map(m[i].code) != m[i].want) {
            print_error("code %ld -> %s\n", m[i].code, ks_status_name(ks_kube_status_map(m[i].code)));
            fail();
        }
    }
    assert_string_equal(ks_kube_reason_for_code(404), "NotFound");
    assert_string_equal(ks_kube_reason_for_code(410), "Expired");
    assert_string_equal(ks_kube_reason_for_code(299), "");
    assert_true(ks_kube_status_is_expired(&s));
    s.code = 200;
    snprintf(s.reason, sizeof(s.reason), "Expired");
    assert_true(ks_kube_status_is_expired(&s));
    snprintf(s.reason, sizeof(s.reason), "Conflict");
    s.code = 409;
    assert_false(ks_kube_status_is_expired(&s));
    ks_kube_response_clear(&r);
    assert_false(ks_kube_response_expired(&r));
    assert_int_equal(r.retry_after_s, -1);
    r.http_code = 410;
    assert_true(ks_kube_response_expired(&r));
}

/* ---- splitter --------------------------------------------------------- */

typedef struct {
    char *ev[32];
    size_t n;
    size_t stop_after;   /* 0 = never */
} collected;

static int collect(const char *event, size_t len, void *arg)
{
    collected *c = arg;

    assert_int_equal(event[len], '\0');
    assert_true(c->n < 32);
    c->ev[c->n] = strndup(event, len);
    c->n++;
    return c->stop_after && c->n >= c->stop_after;
}

static void collected_free(collected *c)
{
    for (size_t i = 0; i < c->n; i++)
        free(c->ev[i]);
    c->n = 0;
}

static const char *events[] = {
    "{\"type\":\"ADDED\",\"object\":{\"kind\":\"ConfigMap\",\"data\":{\"k\":\"}{\\\"\\\\\"}}}",
    "{\"type\":\"MODIFIED\",\"object\":{\"a\":[1,{\"b\":[]}],\"s\":\"[[[\"}}",
    "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"12\"}}}",
    "{}",
    "{\"type\":\"DELETED\",\"object\":{\"u\":\"\\u00e9\xC3\xA9\"}}",
};
#define NEVENTS (sizeof(events) / sizeof(events[0]))

static size_t build_stream(char *out, size_t cap)
{
    static const char *seps[] = {"\n", "\r\n", "  \n\n", "\t", "\n"};
    size_t o = 0;

    for (size_t i = 0; i < NEVENTS; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", events[i], seps[i]);
    return o;
}

static void check_events(collected *c)
{
    assert_int_equal(c->n, NEVENTS);
    for (size_t i = 0; i < NEVENTS; i++)
        assert_string_equal(c->ev[i], events[i]);
}

static void test_splitter_every_offset(void **state)
{
    char stream[2048];
    size_t len = build_stream(stream, sizeof(stream));
    ks_kube_splitter *sp = NULL;
    collected c = {0};

    (void)state;
    assert_int_equal(ks_kube_splitter_create(4096, &sp), KS_OK);
    /* two pieces, split at every offset */
    for (size_t i = 0; i <= len; i++) {
        assert_int_equal(ks_kube_splitter_feed(sp, stream, i, collect, &c), KS_OK);
        assert_int_equal(ks_kube_splitter_feed(sp, stream + i, len - i, collect, &c), KS_OK);
        assert_int_equal(ks_kube_splitter_finish(sp), KS_OK);
        check_events(&c);
        collected_free(&c);
    }
    /* three pieces, every pair of offsets */
    for (size_t i = 0; i <= len; i++) {
        for (size_t j = i; j <= len; j += 7) {
            assert_int_equal(ks_kube_splitter_feed(sp, stream, i, collect, &c), KS_OK);
            assert_int_equal(ks_kube_splitter_feed(sp, stream + i, j - i, collect, &c), KS_OK);
            assert_int_equal(ks_kube_splitter_feed(sp, stream + j, len - j, collect, &c), KS_OK);
            check_events(&c);
            collected_free(&c);
        }
    }
    /* one byte at a time */
    for (size_t i = 0; i < len; i++)
        assert_int_equal(ks_kube_splitter_feed(sp, stream + i, 1, collect, &c), KS_OK);
    check_events(&c);
    collected_free(&c);
    assert_int_equal(ks_kube_splitter_pending(sp), 0);

    /* a stream cut inside an event */
    assert_int_equal(ks_kube_splitter_feed(sp, stream, 10, collect, &c), KS_OK);
    assert_int_equal(ks_kube_splitter_pending(sp), 10);
    assert_int_equal(ks_kube_splitter_finish(sp), KS_ERR_PROTOCOL);
    ks_kube_splitter_reset(sp);
    assert_int_equal(ks_kube_splitter_finish(sp), KS_OK);
    ks_kube_splitter_destroy(sp);
    ks_kube_splitter_destroy(NULL);
}

static void test_splitter_cap_and_errors(void **state)
{
    ks_kube_splitter *sp = NULL;
    collected c = {0};
    char ev[200];

    (void)state;
    /* an event of exactly the cap passes, one byte more does not, whatever the chunks */
    memset(ev, 'x', sizeof(ev));
    ev[0] = '{';
    ev[1] = '"';
    ev[98] = '"';
    ev[99] = '}';
    assert_int_equal(ks_kube_splitter_create(100, &sp), KS_OK);
    assert_int_equal(ks_kube_splitter_feed(sp, ev, 100, collect, &c), KS_OK);
    assert_int_equal(c.n, 1);
    collected_free(&c);
    for (size_t cut = 0; cut <= 101; cut++) {
        char big[101];

        memcpy(big, ev, 98);
        big[98] = 'x';
        big[99] = '"';
        big[100] = '}';
        ks_kube_splitter_reset(sp);
        ks_status st = ks_kube_splitter_feed(sp, big, cut, collect, &c);
        if (st == KS_OK)
            st = ks_kube_splitter_feed(sp, big + cut, 101 - cut, collect, &c);
        assert_int_equal(st, KS_ERR_TOO_LARGE);
        assert_int_equal(c.n, 0);
        /* sticky */
        assert_int_equal(ks_kube_splitter_feed(sp, "{}", 2, collect, &c), KS_ERR_TOO_LARGE);
        assert_int_equal(ks_kube_splitter_finish(sp), KS_ERR_TOO_LARGE);
    }
    ks_kube_splitter_reset(sp);
    assert_int_equal(ks_kube_splitter_feed(sp, "{}\n{\"a\":1}", 10, collect, &c), KS_OK);
    assert_int_equal(c.n, 2);
    collected_free(&c);

    /* garbage between events */
    assert_int_equal(ks_kube_splitter_feed(sp, "{}\nx{}", 6, collect, &c), KS_ERR_PROTOCOL);
    assert_int_equal(c.n, 1);
    collected_free(&c);
    ks_kube_splitter_reset(sp);

    /* the callback stops the stream */
    c.stop_after = 1;
    assert_int_equal(ks_kube_splitter_feed(sp, "{}{}{}", 6, collect, &c), KS_ERR_CLOSED);
    assert_int_equal(c.n, 1);
    collected_free(&c);
    ks_kube_splitter_destroy(sp);
}

static void test_event_parse(void **state)
{
    ks_kube_event_type t = 0;
    json_t *obj = NULL;
    ks_kube_status s;
    const char *err = "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\","
                      "\"status\":\"Failure\",\"message\":\"too old resource version: 1 (2)\","
                      "\"reason\":\"Expired\",\"code\":410}}";

    (void)state;
    assert_int_equal(ks_kube_event_parse(events[0], strlen(events[0]), &t, &obj), KS_OK);
    assert_int_equal(t, KS_KUBE_EVENT_ADDED);
    assert_string_equal(json_string_value(json_object_get(obj, "kind")), "ConfigMap");
    json_decref(obj);
    obj = NULL;
    assert_int_equal(ks_kube_event_parse(err, strlen(err), &t, &obj), KS_OK);
    assert_int_equal(t, KS_KUBE_EVENT_ERROR);
    assert_string_equal(ks_kube_event_name(t), "ERROR");
    assert_int_equal(ks_kube_status_from_json(obj, &s), KS_OK);
    assert_true(ks_kube_status_is_expired(&s));
    json_decref(obj);
    obj = NULL;
    t = 0;
    assert_int_equal(ks_kube_event_parse("{\"type\":\"ODD\",\"object\":{}}", 27, &t, &obj),
                     KS_ERR_PROTOCOL);
    assert_int_equal(ks_kube_event_parse("{\"type\":\"ADDED\"}", 16, &t, &obj), KS_ERR_PROTOCOL);
    assert_int_equal(ks_kube_event_parse("{", 1, &t, &obj), KS_ERR_PROTOCOL);
    assert_int_equal(t, 0);
    assert_null(obj);
    assert_string_equal(ks_kube_event_name(99), "UNKNOWN");
}

static void test_query_escape(void **state)
{
    char out[64];

    (void)state;
    assert_int_equal(ks_kube_query_escape("app in (a,b),x!=y", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "app%20in%20%28a%2Cb%29%2Cx%21%3Dy");
    assert_int_equal(ks_kube_query_escape("a-b.c_d~", out, sizeof(out)), KS_OK);
    assert_string_equal(out, "a-b.c_d~");
    assert_int_equal(ks_kube_query_escape("abc", out, 4), KS_OK);
    snprintf(out, sizeof(out), "keep");
    assert_int_equal(ks_kube_query_escape("abc=", out, 6), KS_ERR_TOO_LARGE);
    assert_string_equal(out, "keep");
}

/* ---- client against a canned responder -------------------------------- */

typedef struct {
    int lfd;
    int port;
    const char *reply;       /* written verbatim; NULL: send big_len bytes of body */
    size_t big_len;
    char request[8192];      /* what the client sent (headers + start of body) */
    pthread_t thread;
} canned;

/* head: status line and headers without Content-Length, each ending in CRLF */
static const char *reply_with(char *buf, size_t cap, const char *head, const char *body)
{
    snprintf(buf, cap, "%sContent-Length: %zu\r\n\r\n%s", head, strlen(body), body);
    return buf;
}

static void *canned_run(void *arg)
{
    canned *cs = arg;
    int fd = accept(cs->lfd, NULL, NULL);
    size_t got = 0;

    if (fd < 0)
        return NULL;
    /* read until the end of the headers (and a small body if any) */
    for (;;) {
        ssize_t n = read(fd, cs->request + got, sizeof(cs->request) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        cs->request[got] = '\0';
        char *hend = strstr(cs->request, "\r\n\r\n");
        if (hend != NULL) {
            char *cl = strcasestr(cs->request, "Content-Length:");
            size_t want = (size_t)(hend + 4 - cs->request);
            if (cl != NULL && cl < hend)
                want += strtoul(cl + 15, NULL, 10);
            if (got >= want)
                break;
        }
        if (got == sizeof(cs->request) - 1)
            break;
    }
    if (cs->reply != NULL) {
        ssize_t w = write(fd, cs->reply, strlen(cs->reply));
        (void)w;
    } else {
        char head[128], chunk[65536];
        size_t sent = 0;
        int hl = snprintf(head, sizeof(head),
                          "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\n\r\n",
                          cs->big_len);
        if (write(fd, head, (size_t)hl) == hl) {
            memset(chunk, ' ', sizeof(chunk));
            while (sent < cs->big_len) {
                size_t n = cs->big_len - sent < sizeof(chunk) ? cs->big_len - sent : sizeof(chunk);
                ssize_t w = write(fd, chunk, n);
                if (w <= 0)
                    break;
                sent += (size_t)w;
            }
        }
    }
    shutdown(fd, SHUT_WR);
    close(fd);
    return NULL;
}

static void canned_start(canned *cs)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);

    if (cs->port == 0) {   /* the listener stays for the next canned_start */
        cs->lfd = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(cs->lfd >= 0);
        assert_int_equal(bind(cs->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
        assert_int_equal(listen(cs->lfd, 4), 0);
        assert_int_equal(getsockname(cs->lfd, (struct sockaddr *)&a, &al), 0);
        cs->port = ntohs(a.sin_port);
    }
    memset(cs->request, 0, sizeof(cs->request));
    assert_int_equal(pthread_create(&cs->thread, NULL, canned_run, cs), 0);
}

static void canned_stop(canned *cs)
{
    pthread_join(cs->thread, NULL);
}

static void canned_close(canned *cs)
{
    close(cs->lfd);
    cs->port = 0;
}

static ks_kube_client *client_for(int port, const char *token)
{
    ks_kube_config cfg = {0};
    ks_kube_client *c = NULL;
    char url[64];

    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    cfg.server = url;
    cfg.token = (char *)token;
    assert_int_equal(ks_kube_client_create(&cfg, &c), KS_OK);
    return c;
}

static void test_client_args(void **state)
{
    ks_kube_config cfg = {0};
    ks_kube_client *c = NULL;
    ks_kube_response r;

    (void)state;
    ks_kube_client_destroy(NULL);
    assert_int_equal(ks_kube_client_create(&cfg, &c), KS_ERR_INVALID);
    assert_null(c);
    cfg.server = "https://127.0.0.1:1";
    cfg.token_file = "/nonexistent/token";
    assert_int_equal(ks_kube_client_create(&cfg, &c), KS_ERR_IO);
    assert_null(c);

    c = client_for(1, NULL);
    assert_int_equal(ks_kube_request(c, "GET", "no-slash", NULL, NULL, 0, &r), KS_ERR_INVALID);
    assert_int_equal(ks_kube_request(c, "GET", "/a b", NULL, NULL, 0, &r), KS_ERR_INVALID);
    assert_int_equal(ks_kube_request(c, "GET", "/a\r\nX: y", NULL, NULL, 0, &r), KS_ERR_INVALID);
    assert_int_equal(ks_kube_request(c, "HEAD", "/a", NULL, NULL, 0, &r), KS_ERR_INVALID);
    assert_int_equal(ks_kube_request(c, "POST", "/a", NULL, NULL, 0, &r), KS_ERR_INVALID);
    assert_int_equal(ks_kube_request(c, "GET", "/a", "{}", NULL, 0, &r), KS_ERR_INVALID);
    assert_int_equal(ks_kube_request(c, "PATCH", "/a", "{}", "a\r\nb", 0, &r), KS_ERR_INVALID);
    assert_int_equal(r.http_code, 0);
    assert_null(r.body);
    /* nothing listens on port 1 */
    assert_int_equal(ks_kube_request(c, "GET", "/api", NULL, NULL, 2000, &r), KS_ERR_UNAVAILABLE);
    assert_int_equal(r.http_code, 0);
    ks_kube_client_shutdown(c);
    assert_int_equal(ks_kube_request(c, "GET", "/api", NULL, NULL, 2000, &r), KS_ERR_CLOSED);
    ks_kube_client_destroy(c);
}

static void test_client_error_answer(void **state)
{
    char reply[1024];
    canned cs = {.reply = reply_with(
                     reply, sizeof(reply),
                     "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                     "Retry-After: 7\r\nConnection: close\r\n",
                     "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\","
                     "\"message\":\"slow down\",\"reason\":\"TooManyRequests\",\"code\":429}")};
    ks_kube_client *c;
    ks_kube_response r;
    int fds[2];
    char logbuf[8192];
    ssize_t n;

    (void)state;
    /* debug logging on, into a pipe, to check the token never shows up */
    assert_int_equal(pipe(fds), 0);
    ks_log_init("test", KS_LOG_DEBUG);
    ks_log_set_fd(fds[1]);
    canned_start(&cs);
    c = client_for(cs.port, "s3cr3t-token");
    assert_int_equal(ks_kube_request(c, "PATCH", "/api/v1/namespaces/x", "{\"a\":1}", NULL, 5000, &r),
                     KS_ERR_UNAVAILABLE);
    canned_stop(&cs);
    assert_int_equal(r.http_code, 429);
    assert_int_equal(r.retry_after_s, 7);
    assert_int_equal(r.status.code, 429);
    assert_string_equal(r.status.reason, "TooManyRequests");
    assert_string_equal(r.status.message, "slow down");
    assert_non_null(r.body);
    assert_non_null(strstr(cs.request, "PATCH /api/v1/namespaces/x HTTP/1.1\r\n"));
    assert_non_null(strstr(cs.request, "Authorization: Bearer s3cr3t-token\r\n"));
    assert_non_null(strstr(cs.request, "Content-Type: application/merge-patch+json\r\n"));
    assert_non_null(strstr(cs.request, "\r\n\r\n{\"a\":1}"));
    assert_non_null(strstr(ks_status_last(), "slow down"));
    assert_null(strstr(ks_status_last(), "s3cr3t"));
    ks_kube_response_clear(&r);
    ks_kube_client_destroy(c);
    canned_close(&cs);
    ks_log_set_fd(2);
    ks_log_init("test", KS_LOG_INFO);
    close(fds[1]);
    n = read(fds[0], logbuf, sizeof(logbuf) - 1);
    close(fds[0]);
    assert_true(n > 0);
    logbuf[n] = '\0';
    assert_non_null(strstr(logbuf, "/api/v1/namespaces/x"));
    assert_null(strstr(logbuf, "s3cr3t"));
}

static void test_client_not_status_body(void **state)
{
    char reply[512];
    canned cs = {.reply = reply_with(reply, sizeof(reply),
                                     "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                                     "Connection: close\r\n",
                                     "not found")};
    ks_kube_client *c;
    json_t *obj = NULL;

    (void)state;
    canned_start(&cs);
    c = client_for(cs.port, NULL);
    assert_int_equal(ks_kube_get(c, "/api/v1/namespaces/nope", &obj), KS_ERR_NOT_FOUND);
    canned_stop(&cs);
    assert_null(obj);
    assert_non_null(strstr(ks_status_last(), "404 NotFound"));
    assert_null(strstr(cs.request, "Authorization"));
    ks_kube_client_destroy(c);
    canned_close(&cs);
}

static void test_client_ok_and_wrappers(void **state)
{
    char reply[512];
    canned cs = {.reply = reply_with(reply, sizeof(reply),
                                     "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                                     "Connection: close\r\n",
                                     "{\"kind\":\"ConfigMap\",\"x\":\"y\"}")};
    ks_kube_client *c;
    json_t *in = json_pack("{s:s}", "kind", "ConfigMap"), *out = NULL;

    (void)state;
    canned_start(&cs);
    c = client_for(cs.port, NULL);
    assert_int_equal(ks_kube_create(c, "/api/v1/namespaces/d/configmaps", in, &out), KS_OK);
    canned_stop(&cs);
    assert_string_equal(json_string_value(json_object_get(out, "x")), "y");
    assert_non_null(strstr(cs.request, "POST /api/v1/namespaces/d/configmaps HTTP/1.1\r\n"));
    assert_non_null(strstr(cs.request, "Content-Type: application/json\r\n"));
    json_decref(out);
    json_decref(in);
    ks_kube_client_destroy(c);
    canned_close(&cs);
}

static void test_client_body_cap(void **state)
{
    canned cs = {.reply = NULL, .big_len = (size_t)KS_KUBE_MAX_BODY + 1};
    ks_kube_client *c;
    ks_kube_response r;

    (void)state;
    canned_start(&cs);
    c = client_for(cs.port, NULL);
    assert_int_equal(ks_kube_request(c, "GET", "/big", NULL, NULL, 20000, &r), KS_ERR_TOO_LARGE);
    canned_stop(&cs);
    assert_null(r.body);
    ks_kube_client_destroy(c);
    canned_close(&cs);
}

typedef struct {
    ks_kube_splitter *sp;
    collected col;
} stream_ctx;

static int stream_chunk(const char *chunk, size_t len, void *arg)
{
    stream_ctx *s = arg;

    return ks_kube_splitter_feed(s->sp, chunk, len, collect, &s->col) != KS_OK;
}

static void test_client_stream(void **state)
{
    char reply[4096], stream[2048];
    size_t len = build_stream(stream, sizeof(stream));
    canned cs = {.reply = reply};
    ks_kube_client *c;
    stream_ctx s = {0};
    ks_kube_response r;
    int o;

    (void)state;
    /* chunked transfer, chunk boundaries in the middle of events */
    o = snprintf(reply, sizeof(reply),
                 "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n");
    for (size_t i = 0; i < len; i += 13) {
        size_t n = len - i < 13 ? len - i : 13;
        o += snprintf(reply + o, sizeof(reply) - (size_t)o, "%zx\r\n%.*s\r\n", n, (int)n, stream + i);
    }
    snprintf(reply + o, sizeof(reply) - (size_t)o, "0\r\n\r\n");
    assert_int_equal(ks_kube_splitter_create(0, &s.sp), KS_OK);
    canned_start(&cs);
    c = client_for(cs.port, NULL);
    assert_int_equal(ks_kube_stream(c, "/api/v1/configmaps?watch=1", 5000, stream_chunk, &s, &r),
                     KS_OK);
    canned_stop(&cs);
    assert_int_equal(r.http_code, 200);
    assert_int_equal(ks_kube_splitter_finish(s.sp), KS_OK);
    check_events(&s.col);
    collected_free(&s.col);

    /* the callback stops after the first event */
    ks_kube_splitter_reset(s.sp);
    s.col.stop_after = 1;
    canned_start(&cs);
    assert_int_equal(ks_kube_stream(c, "/w", 5000, stream_chunk, &s, NULL), KS_OK);
    canned_stop(&cs);
    assert_int_equal(s.col.n, 1);
    collected_free(&s.col);

    /* a 410 answer to the watch itself */
    cs.reply = reply_with(reply, sizeof(reply),
                          "HTTP/1.1 410 Gone\r\nContent-Type: application/json\r\nConnection: close\r\n",
                          "{\"kind\":\"Status\",\"status\":\"Failure\",\"message\":\"too old\","
                          "\"reason\":\"Expired\",\"code\":410}");
    canned_start(&cs);
    assert_int_equal(ks_kube_stream(c, "/w", 5000, stream_chunk, &s, &r), KS_ERR_CONFLICT);
    canned_stop(&cs);
    assert_int_equal(s.col.n, 0);
    assert_true(ks_kube_response_expired(&r));
    assert_string_equal(r.status.message, "too old");
    ks_kube_response_clear(&r);
    assert_int_equal(ks_kube_stream(c, "/w", 0, stream_chunk, &s, &r), KS_ERR_INVALID);
    ks_kube_client_destroy(c);
    canned_close(&cs);
    ks_kube_splitter_destroy(s.sp);
}

static void test_client_stream_deadline(void **state)
{
    /* a listener that accepts and never answers: the deadline must end the stream */
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    ks_kube_client *c;
    stream_ctx s = {0};

    (void)state;
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(lfd, 4), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &al), 0);
    assert_int_equal(ks_kube_splitter_create(0, &s.sp), KS_OK);
    c = client_for(ntohs(a.sin_port), NULL);
    assert_int_equal(ks_kube_stream(c, "/w", 300, stream_chunk, &s, NULL), KS_ERR_TIMEOUT);
    assert_int_equal(ks_kube_request(c, "GET", "/x", NULL, NULL, 300, &(ks_kube_response){0}),
                     KS_ERR_TIMEOUT);
    ks_kube_client_destroy(c);
    ks_kube_splitter_destroy(s.sp);
    close(lfd);
}

typedef struct {
    ks_kube_client *c;
    stream_ctx *s;
    ks_status st;
} shutdown_run;

static void *stream_thread(void *arg)
{
    shutdown_run *t = arg;

    t->st = ks_kube_stream(t->c, "/w", 30000, stream_chunk, t->s, NULL);
    return NULL;
}

static void test_client_shutdown_in_flight(void **state)
{
    /* a stream waiting on a silent server ends with KS_ERR_CLOSED soon after shutdown */
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    stream_ctx s = {0};
    shutdown_run t = {0};
    pthread_t th;
    struct timespec t0, t1;
    long ms;

    (void)state;
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(lfd, 4), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &al), 0);
    assert_int_equal(ks_kube_splitter_create(0, &s.sp), KS_OK);
    t.c = client_for(ntohs(a.sin_port), NULL);
    t.s = &s;
    assert_int_equal(pthread_create(&th, NULL, stream_thread, &t), 0);
    usleep(300 * 1000);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ks_kube_client_shutdown(t.c);
    pthread_join(th, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_int_equal(t.st, KS_ERR_CLOSED);
    assert_true(ms < 2500);
    ks_kube_client_destroy(t.c);
    ks_kube_splitter_destroy(s.sp);
    close(lfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kubeconfig_kubectl_style),
        cmocka_unit_test(test_kubeconfig_context_selection),
        cmocka_unit_test(test_kubeconfig_files_relative),
        cmocka_unit_test(test_kubeconfig_json),
        cmocka_unit_test(test_kubeconfig_malformed),
        cmocka_unit_test(test_kubeconfig_edge_forms),
        cmocka_unit_test(test_config_explicit_and_in_cluster),
        cmocka_unit_test(test_status_parse),
        cmocka_unit_test(test_status_map),
        cmocka_unit_test(test_splitter_every_offset),
        cmocka_unit_test(test_splitter_cap_and_errors),
        cmocka_unit_test(test_event_parse),
        cmocka_unit_test(test_query_escape),
        cmocka_unit_test(test_client_args),
        cmocka_unit_test(test_client_error_answer),
        cmocka_unit_test(test_client_not_status_body),
        cmocka_unit_test(test_client_ok_and_wrappers),
        cmocka_unit_test(test_client_body_cap),
        cmocka_unit_test(test_client_stream),
        cmocka_unit_test(test_client_stream_deadline),
        cmocka_unit_test(test_client_shutdown_in_flight),
    };

    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
