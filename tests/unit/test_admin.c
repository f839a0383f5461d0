/* Unit tests for lib/admin.c: a real listener on a free port, driven with
 * libcurl. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "log.h"
#include "metrics.h"

struct reply {
    long code;
    char body[65536];
    size_t len;
    char ctype[128];
    char allow[64];
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t len = size * n;

    if (len > sizeof(r->body) - 1 - r->len)
        return 0;
    memcpy(r->body + r->len, p, len);
    r->len += len;
    r->body[r->len] = '\0';
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t len = size * n;

    if (len > 6 && strncasecmp(p, "Allow:", 6) == 0)
        snprintf(r->allow, sizeof(r->allow), "%.*s", (int)(len - 6), p + 6);
    return len;
}

/* method NULL: GET. body non-NULL: sent as the request body. */
static void request(int port, const char *method, const char *path, const char *body,
                    struct reply *r)
{
    CURL *c = curl_easy_init();
    char url[256];
    char *ct = NULL;
    CURLcode rc;

    assert_non_null(c);
    memset(r, 0, sizeof(*r));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (method != NULL && strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else if (method != NULL)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    rc = curl_easy_perform(c);
    if (rc != CURLE_OK)
        fail_msg("%s %s: %s", method ? method : "GET", path, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->code);
    if (curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct != NULL)
        snprintf(r->ctype, sizeof(r->ctype), "%s", ct);
    curl_easy_cleanup(c);
}

static atomic_int ready_flag;
static atomic_int probe_calls;

static int probe(void *arg, char *why, size_t whycap)
{
    assert_ptr_equal(arg, &ready_flag);
    atomic_fetch_add(&probe_calls, 1);
    if (atomic_load(&ready_flag))
        return 1;
    snprintf(why, whycap, "waiting for the KS_OBJECTS mirror\n(line two)");
    return 0;
}

static void test_endpoints(void **state)
{
    ks_admin *a = NULL;
    struct reply *r = malloc(sizeof(*r));
    int port;

    assert_non_null(r);
    ks_metrics_reset();
    ks_metric_add(ks_metrics_counter("ks_test_admin_total", "Admin test counter.", "k=\"v\""), 7);
    atomic_store(&ready_flag, 0);
    assert_int_equal(ks_admin_start("127.0.0.1:0", probe, &ready_flag, &a), KS_OK);
    assert_non_null(a);
    port = ks_admin_port(a);
    assert_true(port > 0 && port < 65536);

    request(port, NULL, "/healthz", NULL, r);
    assert_int_equal(r->code, 200);
    assert_string_equal(r->body, "ok");
    assert_string_equal(r->ctype, "text/plain; charset=utf-8");
    request(port, NULL, "/livez", NULL, r);
    assert_int_equal(r->code, 200);
    assert_string_equal(r->body, "ok");
    request(port, "HEAD", "/healthz", NULL, r);
    assert_int_equal(r->code, 200);
    assert_int_equal(r->len, 0);
    request(port, NULL, "/healthz?verbose=1", NULL, r);
    assert_int_equal(r->code, 200);

    request(port, NULL, "/readyz", NULL, r);
    assert_int_equal(r->code, 503);
    assert_string_equal(r->body, "not ready: waiting for the KS_OBJECTS mirror (line two)");
    atomic_store(&ready_flag, 1);
    request(port, NULL, "/readyz", NULL, r);
    assert_int_equal(r->code, 200);
    assert_string_equal(r->body, "ok");
    assert_true(atomic_load(&probe_calls) >= 2);

    request(port, NULL, "/metrics", NULL, r);
    assert_int_equal(r->code, 200);
    assert_string_equal(r->ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert_non_null(strstr(r->body, "# TYPE ks_test_admin_total counter\n"
                                    "ks_test_admin_total{k=\"v\"} 7\n"));

    request(port, NULL, "/nope", NULL, r);
    assert_int_equal(r->code, 404);
    request(port, NULL, "/healthz/", NULL, r);
    assert_int_equal(r->code, 404);
    request(port, NULL, "/", NULL, r);
    assert_int_equal(r->code, 404);

    request(port, "POST", "/healthz", NULL, r);
    assert_int_equal(r->code, 405);
    assert_non_null(strstr(r->allow, "GET, HEAD"));
    request(port, "DELETE", "/metrics", NULL, r);
    assert_int_equal(r->code, 405);
    request(port, "POST", "/healthz", "some=body", r);
    assert_int_equal(r->code, 405);
    request(port, "GET", "/healthz", "a body", r);
    assert_int_equal(r->code, 413);
    /* Headers beyond the per-connection memory pool are refused. */
    {
        CURL *c = curl_easy_init();
        struct curl_slist *hdr = NULL;
        char *big = malloc(20010);
        char url[128];
        long code = 0;
        CURLcode rc;

        assert_non_null(c);
        assert_non_null(big);
        memcpy(big, "X-Big: ", 7);
        memset(big + 7, 'x', 20000);
        big[20007] = '\0';
        hdr = curl_slist_append(hdr, big);
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", port);
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        memset(r, 0, sizeof(*r));
        curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
        rc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        assert_true(rc != CURLE_OK || code >= 400); /* 431 with libmicrohttpd 0.9.75 */
        curl_slist_free_all(hdr);
        curl_easy_cleanup(c);
        free(big);
    }
    /* Still serving after all that. */
    request(port, NULL, "/healthz", NULL, r);
    assert_int_equal(r->code, 200);

    ks_admin_stop(a);
    ks_admin_stop(NULL);
    ks_metrics_reset();
    free(r);
}

static void test_no_probe_and_big_metrics(void **state)
{
    ks_admin *a = NULL;
    struct reply *r = malloc(sizeof(*r));
    char labels[32];

    assert_non_null(r);
    ks_metrics_reset();
    /* Several KB of metrics: the body must arrive whole. */
    for (int i = 0; i < 500; i++) {
        snprintf(labels, sizeof(labels), "i=\"%d\"", i);
        ks_metric_set(ks_metrics_gauge("ks_test_many", "Many.", labels), i);
    }
    assert_int_equal(ks_admin_start("localhost:0", NULL, NULL, &a), KS_OK);
    request(ks_admin_port(a), NULL, "/readyz", NULL, r);
    assert_int_equal(r->code, 200);
    request(ks_admin_port(a), NULL, "/metrics", NULL, r);
    assert_int_equal(r->code, 200);
    assert_true(r->len > 8000);
    assert_non_null(strstr(r->body, "ks_test_many{i=\"499\"} 499\n"));
    ks_admin_stop(a);
    ks_metrics_reset();
    free(r);
}

/* Two GETs on one handle share one connection: the answer is queued in the
 * second handler call, which keeps keep-alive working. */
static void test_keepalive(void **state)
{
    ks_admin *a = NULL;
    struct reply *r = malloc(sizeof(*r));
    CURL *c = curl_easy_init();
    char url[128];
    long conns = -1, code = 0;

    assert_non_null(r);
    assert_non_null(c);
    assert_int_equal(ks_admin_start("127.0.0.1:0", NULL, NULL, &a), KS_OK);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", ks_admin_port(a));
    memset(r, 0, sizeof(*r));
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    assert_int_equal(curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &conns), CURLE_OK);
    assert_int_equal(conns, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(curl_easy_perform(c), CURLE_OK);
        assert_int_equal(curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code), CURLE_OK);
        assert_int_equal(code, 200);
        assert_int_equal(curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &conns), CURLE_OK);
        assert_int_equal(conns, 0); /* reused */
    }
    assert_string_equal(r->body, "okokokok");
    curl_easy_cleanup(c);
    ks_admin_stop(a);
    free(r);
}

static void test_bad_addresses(void **state)
{
    ks_admin *a = (ks_admin *)&a; /* must stay untouched on failure */
    ks_admin *b = NULL;
    ks_admin *keep = a;
    char addr[64];

    assert_int_equal(ks_admin_start("127.0.0.1", NULL, NULL, &a), KS_ERR_INVALID);
    assert_int_equal(ks_admin_start("127.0.0.1:99999", NULL, NULL, &a), KS_ERR_INVALID);
    assert_int_equal(ks_admin_start(NULL, NULL, NULL, &a), KS_ERR_INVALID);
    assert_int_equal(ks_admin_start("no-such-host.invalid:0", NULL, NULL, &a), KS_ERR_INVALID);
    assert_ptr_equal(a, keep);
    assert_int_equal(ks_admin_start("127.0.0.1:0", NULL, NULL, NULL), KS_ERR_INVALID);

    /* The port of a running listener is taken. */
    assert_int_equal(ks_admin_start("127.0.0.1:0", NULL, NULL, &b), KS_OK);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", ks_admin_port(b));
    assert_int_equal(ks_admin_start(addr, NULL, NULL, &a), KS_ERR_IO);
    assert_ptr_equal(a, keep);
    ks_admin_stop(b);
}

static void test_ipv6(void **state)
{
    ks_admin *a = NULL;

    /* Skip quietly where the host has no IPv6 loopback. */
    if (ks_admin_start("[::1]:0", NULL, NULL, &a) != KS_OK)
        skip();
    assert_true(ks_admin_port(a) > 0);
    ks_admin_stop(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_no_probe_and_big_metrics),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_bad_addresses),
        cmocka_unit_test(test_ipv6),
    };
    int rc;

    ks_log_init("test_admin", KS_LOG_WARN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
