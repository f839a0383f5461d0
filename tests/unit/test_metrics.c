/* Unit tests for lib/metrics.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"

static int reset(void **state)
{
    (void)state;
    ks_metrics_reset();
    return 0;
}

static char *render(void)
{
    size_t len = 12345;
    char *out = ks_metrics_render(&len);

    assert_non_null(out);
    assert_int_equal(len, strlen(out));
    return out;
}

static void test_counter_gauge(void **state)
{
    ks_metric *c = ks_metrics_counter("ks_t_total", "help", NULL);
    ks_metric *g = ks_metrics_gauge("ks_t_gauge", "help", NULL);

    assert_non_null(c);
    assert_non_null(g);
    ks_metric_inc(c);
    ks_metric_add(c, 2);
    ks_metric_add(c, 0.5);
    ks_metric_add(c, -1);   /* ignored: counters only go up */
    ks_metric_set(c, 100);  /* ignored */
    ks_metric_observe(c, 1); /* ignored */
    assert_true(ks_metric_value(c) == 3.5);

    ks_metric_inc(g);
    ks_metric_inc(g);
    ks_metric_dec(g);
    ks_metric_add(g, -3.25);
    assert_true(ks_metric_value(g) == -2.25);
    ks_metric_set(g, 42);
    assert_true(ks_metric_value(g) == 42);

    /* NULL is a no-op everywhere. */
    ks_metric_inc(NULL);
    ks_metric_dec(NULL);
    ks_metric_add(NULL, 1);
    ks_metric_set(NULL, 1);
    ks_metric_observe(NULL, 1);
    assert_true(ks_metric_value(NULL) == 0);
}

static void test_same_handle(void **state)
{
    ks_metric *a = ks_metrics_counter("ks_t_errors_total", "h", "kind=\"x\"");
    ks_metric *b = ks_metrics_counter("ks_t_errors_total", "other help", "kind=\"x\"");
    ks_metric *c = ks_metrics_counter("ks_t_errors_total", "h", "kind=\"y\"");
    ks_metric *d = ks_metrics_counter("ks_t_errors_total", "h", NULL);
    ks_metric *e = ks_metrics_counter("ks_t_errors_total", "h", "");
    ks_metric *p = ks_metrics_counter("ks_t_pairs_total", "h", "a=\"1\",b=\"2\"");
    ks_metric *q = ks_metrics_counter("ks_t_pairs_total", "h", "b=\"2\",a=\"1\"");
    ks_metric *h1 = ks_metrics_histogram("ks_t_h", "h", NULL, NULL, 0);
    ks_metric *h2 = ks_metrics_histogram("ks_t_h", "h", NULL, NULL, 0);

    assert_ptr_equal(a, b);
    assert_ptr_not_equal(a, c);
    assert_ptr_not_equal(a, d);
    assert_ptr_equal(d, e);
    assert_ptr_equal(p, q);
    assert_ptr_equal(h1, h2);
}

static void test_render_exact(void **state)
{
    static const double bounds[] = {0.1, 1};
    ks_metric *req = ks_metrics_counter("ks_t_requests_total", "Requests served.", NULL);
    ks_metric *slow = ks_metrics_counter("ks_t_errors_total", "Errors by kind.",
                                         "kind=\"slow_consumer\"");
    ks_metric *lat = ks_metrics_histogram("ks_t_latency_seconds", "Latency.", "op=\"get\"", bounds, 2);
    ks_metric *to = ks_metrics_counter("ks_t_errors_total", "ignored", "kind=\"timeout\"");
    ks_metric *g = ks_metrics_gauge("ks_t_inflight", "In flight.\nSecond \\ line", NULL);
    ks_metric *plain = ks_metrics_histogram("ks_t_size_bytes", "Sizes.", NULL,
                                            (const double[]){1024, INFINITY}, 2);
    ks_metric *esc = ks_metrics_gauge("ks_t_info", "Build.", "b=\"q\\\"x\\\\y\\nz\",a=\"1\"");
    char *out;

    ks_metric_add(req, 3);
    ks_metric_inc(slow);
    ks_metric_add(to, 2.5);
    ks_metric_set(g, -1.5);
    ks_metric_observe(lat, 0.1); /* le is inclusive */
    ks_metric_observe(lat, 0.5);
    ks_metric_observe(lat, 4);
    ks_metric_observe(lat, 0.25);
    ks_metric_observe(plain, 2048);
    ks_metric_set(esc, 1);

    out = render();
    assert_string_equal(out,
        "# HELP ks_t_requests_total Requests served.\n"
        "# TYPE ks_t_requests_total counter\n"
        "ks_t_requests_total 3\n"
        "# HELP ks_t_errors_total Errors by kind.\n"
        "# TYPE ks_t_errors_total counter\n"
        "ks_t_errors_total{kind=\"slow_consumer\"} 1\n"
        "ks_t_errors_total{kind=\"timeout\"} 2.5\n"
        "# HELP ks_t_latency_seconds Latency.\n"
        "# TYPE ks_t_latency_seconds histogram\n"
        "ks_t_latency_seconds_bucket{op=\"get\",le=\"0.1\"} 1\n"
        "ks_t_latency_seconds_bucket{op=\"get\",le=\"1\"} 3\n"
        "ks_t_latency_seconds_bucket{op=\"get\",le=\"+Inf\"} 4\n"
        "ks_t_latency_seconds_sum{op=\"get\"} 4.85\n"
        "ks_t_latency_seconds_count{op=\"get\"} 4\n"
        "# HELP ks_t_inflight In flight.\\nSecond \\\\ line\n"
        "# TYPE ks_t_inflight gauge\n"
        "ks_t_inflight -1.5\n"
        "# HELP ks_t_size_bytes Sizes.\n"
        "# TYPE ks_t_size_bytes histogram\n"
        "ks_t_size_bytes_bucket{le=\"1024\"} 0\n"
        "ks_t_size_bytes_bucket{le=\"+Inf\"} 1\n"
        "ks_t_size_bytes_sum 2048\n"
        "ks_t_size_bytes_count 1\n"
        "# HELP ks_t_info Build.\n"
        "# TYPE ks_t_info gauge\n"
        "ks_t_info{a=\"1\",b=\"q\\\"x\\\\y\\nz\"} 1\n");
    assert_true(ks_metric_value(lat) == 4);
    assert_true(ks_metric_sum(lat) == 4.85);
    free(out);
}

static void test_render_empty_and_reset(void **state)
{
    char *out = render();

    assert_string_equal(out, "");
    free(out);
    ks_metric_inc(ks_metrics_counter("ks_t_total", "h", NULL));
    out = render();
    assert_non_null(strstr(out, "ks_t_total 1\n"));
    free(out);
    ks_metrics_reset();
    out = render();
    assert_string_equal(out, "");
    free(out);
    /* A fresh registration after reset starts from zero. */
    assert_true(ks_metric_value(ks_metrics_counter("ks_t_total", "h", NULL)) == 0);
}

static void test_numbers(void **state)
{
    ks_metric *a = ks_metrics_gauge("ks_t_a", "", NULL);
    ks_metric *b = ks_metrics_gauge("ks_t_b", "", NULL);
    ks_metric *c = ks_metrics_gauge("ks_t_c", "", NULL);
    ks_metric *d = ks_metrics_gauge("ks_t_d", "", NULL);
    ks_metric *e = ks_metrics_gauge("ks_t_e", NULL, NULL);
    char *out;

    ks_metric_set(a, 0.1);
    ks_metric_set(b, 1e20);
    ks_metric_set(c, 1.0 / 3.0);
    ks_metric_set(d, INFINITY);
    ks_metric_set(e, NAN);
    out = render();
    assert_non_null(strstr(out, "\nks_t_a 0.1\n"));
    assert_non_null(strstr(out, "\nks_t_b 1e+20\n"));
    assert_non_null(strstr(out, "\nks_t_c 0.33333333333333331\n"));
    assert_non_null(strstr(out, "\nks_t_d +Inf\n"));
    assert_non_null(strstr(out, "\nks_t_e NaN\n"));
    assert_non_null(strstr(out, "# HELP ks_t_e \n"));
    free(out);
}

static void test_default_buckets(void **state)
{
    ks_metric *h = ks_metrics_histogram("ks_t_seconds", "h", NULL, NULL, 0);
    char *out;

    ks_metric_observe(h, 0.003);
    ks_metric_observe(h, 11);
    ks_metric_observe(h, NAN); /* ignored */
    out = render();
    assert_non_null(strstr(out, "ks_t_seconds_bucket{le=\"0.005\"} 1\n"
                                "ks_t_seconds_bucket{le=\"0.01\"} 1\n"));
    assert_non_null(strstr(out, "ks_t_seconds_bucket{le=\"10\"} 1\n"
                                "ks_t_seconds_bucket{le=\"+Inf\"} 2\n"
                                "ks_t_seconds_sum 11.003\n"
                                "ks_t_seconds_count 2\n"));
    free(out);
}

static void test_misuse_gives_sink(void **state)
{
    ks_metric *good = ks_metrics_counter("ks_t_total", "h", NULL);
    ks_metric *wrong_type = ks_metrics_gauge("ks_t_total", "h", NULL);
    ks_metric *bad_name = ks_metrics_counter("9lives", "h", NULL);
    ks_metric *bad_name2 = ks_metrics_counter("a-b", "h", NULL);
    ks_metric *empty_name = ks_metrics_counter("", "h", NULL);
    ks_metric *null_name = ks_metrics_counter(NULL, "h", NULL);
    ks_metric *le = ks_metrics_histogram("ks_t_h", "h", "le=\"1\"", NULL, 0);
    static const double unsorted[] = {1, 0.5};
    ks_metric *bad_bounds = ks_metrics_histogram("ks_t_h2", "h", NULL, unsorted, 2);
    static const char *const bad_labels[] = {
        "kind", "kind=x", "kind=\"x", "kind=\"x\"y", "kind=\"\\t\"", "=\"x\"", "__x=\"1\"",
        "a=\"1\",a=\"2\"", "a=\"1\",,b=\"2\"", "1a=\"x\"", "a=\"\xff\"", "a = \"1\"",
    };
    char *out;

    assert_non_null(wrong_type);
    assert_ptr_not_equal(good, wrong_type);
    assert_non_null(bad_name);
    assert_non_null(bad_name2);
    assert_non_null(empty_name);
    assert_non_null(null_name);
    assert_non_null(le);
    assert_non_null(bad_bounds);
    for (size_t i = 0; i < sizeof(bad_labels) / sizeof(bad_labels[0]); i++) {
        ks_metric *m = ks_metrics_counter("ks_t_bad_total", "h", bad_labels[i]);
        assert_non_null(m);
        ks_metric_inc(m);
    }
    ks_metric_set(wrong_type, 5);
    ks_metric_inc(bad_name);
    ks_metric_observe(le, 1);
    ks_metric_observe(bad_bounds, 1);
    out = render();
    /* Only the one good registration is exported. */
    assert_string_equal(out, "# HELP ks_t_total h\n# TYPE ks_t_total counter\nks_t_total 0\n");
    free(out);
    /* A trailing comma is tolerated, like Prometheus does. */
    assert_ptr_equal(ks_metrics_counter("ks_t_ok_total", "h", "a=\"1\","),
                     ks_metrics_counter("ks_t_ok_total", "h", "a=\"1\""));
}

static void test_series_cap(void **state)
{
    char labels[64];
    ks_metric *m;

    for (int i = 0; i < KS_METRICS_MAX_SERIES; i++) {
        snprintf(labels, sizeof(labels), "i=\"%d\"", i);
        m = ks_metrics_gauge("ks_t_many", "h", labels);
        assert_non_null(m);
        ks_metric_set(m, i);
    }
    m = ks_metrics_gauge("ks_t_many", "h", "i=\"one too many\"");
    assert_non_null(m);
    ks_metric_set(m, -1);
    /* Existing series are still found. */
    m = ks_metrics_gauge("ks_t_many", "h", "i=\"77\"");
    assert_true(ks_metric_value(m) == 77);
    char *out = render();
    assert_null(strstr(out, "one too many"));
    assert_non_null(strstr(out, "ks_t_many{i=\"9999\"} 9999\n"));
    free(out);
}

static void test_label_append(void **state)
{
    char buf[64] = "";
    char small[12] = "";

    assert_int_equal(ks_metrics_label_append(buf, sizeof(buf), "route", "/api/\"x\"\\y\nz"), KS_OK);
    assert_string_equal(buf, "route=\"/api/\\\"x\\\"\\\\y\\nz\"");
    buf[0] = '\0';
    assert_int_equal(ks_metrics_label_append(buf, sizeof(buf), "code", "200"), KS_OK);
    assert_int_equal(ks_metrics_label_append(buf, sizeof(buf), "user", "j\xc3\xb6rg\t\xff"), KS_OK);
    assert_string_equal(buf, "code=\"200\",user=\"j\xc3\xb6rg??\"");
    assert_int_equal(ks_metrics_label_append(buf, sizeof(buf), "bad-name", "x"), KS_ERR_INVALID);
    assert_int_equal(ks_metrics_label_append(buf, sizeof(buf), "", "x"), KS_ERR_INVALID);
    /* A body built this way is accepted by the registry. */
    assert_ptr_equal(ks_metrics_counter("ks_t_total", "h", buf),
                     ks_metrics_counter("ks_t_total", "h", "user=\"j\xc3\xb6rg??\",code=\"200\""));

    assert_int_equal(ks_metrics_label_append(small, sizeof(small), "a", "12345"), KS_OK);
    assert_string_equal(small, "a=\"12345\"");
    assert_int_equal(ks_metrics_label_append(small, sizeof(small), "b", "1"), KS_ERR_TOO_LARGE);
    assert_string_equal(small, "a=\"12345\""); /* unchanged */
}

#define THREADS 8
#define ROUNDS 100000

struct worker {
    ks_metric *c, *g, *h, *f;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;

    for (int i = 0; i < ROUNDS; i++) {
        ks_metric_inc(w->c);
        ks_metric_add(w->f, 0.5);
        ks_metric_inc(w->g);
        ks_metric_observe(w->h, (i & 1) ? 0.5 : 2);
        if (i % 10000 == 0) {
            /* Registration and rendering race with updates too. */
            char *out = ks_metrics_render(NULL);
            free(out);
            (void)ks_metrics_counter("ks_t_total", "h", NULL);
        }
    }
    return NULL;
}

static void test_concurrency(void **state)
{
    static const double bounds[] = {1};
    struct worker w = {
        .c = ks_metrics_counter("ks_t_total", "h", NULL),
        .f = ks_metrics_counter("ks_t_frac_total", "h", NULL),
        .g = ks_metrics_gauge("ks_t_gauge", "h", NULL),
        .h = ks_metrics_histogram("ks_t_h", "h", NULL, bounds, 1),
    };
    pthread_t t[THREADS];
    char *out;
    char want[128];

    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_true(ks_metric_value(w.c) == (double)THREADS * ROUNDS);
    assert_true(ks_metric_value(w.f) == (double)THREADS * ROUNDS / 2); /* halves add exactly */
    assert_true(ks_metric_value(w.g) == (double)THREADS * ROUNDS);
    assert_true(ks_metric_value(w.h) == (double)THREADS * ROUNDS);
    assert_true(ks_metric_sum(w.h) == (double)THREADS * ROUNDS / 2 * 2.5);
    out = render();
    snprintf(want, sizeof(want), "ks_t_h_bucket{le=\"1\"} %d\n", THREADS * ROUNDS / 2);
    assert_non_null(strstr(out, want));
    snprintf(want, sizeof(want), "ks_t_h_count %d\n", THREADS * ROUNDS);
    assert_non_null(strstr(out, want));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_counter_gauge, reset),
        cmocka_unit_test_setup(test_same_handle, reset),
        cmocka_unit_test_setup(test_render_exact, reset),
        cmocka_unit_test_setup(test_render_empty_and_reset, reset),
        cmocka_unit_test_setup(test_numbers, reset),
        cmocka_unit_test_setup(test_default_buckets, reset),
        cmocka_unit_test_setup(test_misuse_gives_sink, reset),
        cmocka_unit_test_setup(test_series_cap, reset),
        cmocka_unit_test_setup(test_label_append, reset),
        cmocka_unit_test_setup(test_concurrency, reset),
    };
    int rc;

    ks_log_init("test_metrics", KS_LOG_ERROR);
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    ks_metrics_reset();
    return rc;
}
