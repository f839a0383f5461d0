/* Unit tests: lib/log.c (JSON lines) and lib/status.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "status.h"

/* Capture what the logger writes through a pipe. */
static int pipe_fds[2];

static int setup(void **state)
{
    if (pipe(pipe_fds) != 0)
        return -1;
    ks_log_set_fd(pipe_fds[1]);
    ks_log_init("unit", KS_LOG_INFO);
    ks_log_set_request_id(NULL);
    return 0;
}

static int teardown(void **state)
{
    ks_log_set_fd(2);
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return 0;
}

static size_t drain(char *buf, size_t cap)
{
    ssize_t n;
    close(pipe_fds[1]);
    n = read(pipe_fds[0], buf, cap - 1);
    buf[n > 0 ? n : 0] = '\0';
    if (pipe(pipe_fds) == 0)
        ks_log_set_fd(pipe_fds[1]);
    return n > 0 ? (size_t)n : 0;
}

static void test_line_is_json_with_fields(void **state)
{
    char buf[8192];
    json_error_t err;
    json_t *o;

    ks_log_set_request_id("req-42");
    ks_info("hello \"world\"\n\ttab %d", 7);
    drain(buf, sizeof(buf));
    assert_non_null(strchr(buf, '\n'));
    assert_int_equal(strchr(buf, '\n')[1], '\0'); /* exactly one line */
    o = json_loads(buf, 0, &err);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(o, "service")), "unit");
    assert_string_equal(json_string_value(json_object_get(o, "msg")), "hello \"world\"\n\ttab 7");
    assert_string_equal(json_string_value(json_object_get(o, "request_id")), "req-42");
    assert_non_null(json_string_value(json_object_get(o, "ts")));
    json_decref(o);
}

static void test_level_filters_before_formatting(void **state)
{
    char buf[1024];
    ks_debug("invisible %s", "x");
    ks_warn("visible");
    drain(buf, sizeof(buf));
    assert_null(strstr(buf, "invisible"));
    assert_non_null(strstr(buf, "\"level\":\"warn\""));
    assert_int_equal(ks_log_enabled(KS_LOG_DEBUG), 0);
    assert_int_equal(ks_log_enabled(KS_LOG_ERROR), 1);
}

static void test_control_bytes_escaped(void **state)
{
    char buf[1024];
    json_t *o;
    ks_error("bell\x07 esc\x1b");
    drain(buf, sizeof(buf));
    o = json_loads(buf, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "msg")), "bell\x07 esc\x1b");
    json_decref(o);
}

static void test_long_message_stays_valid_json(void **state)
{
    char *big = malloc(10000);
    char buf[16384];
    json_t *o;

    memset(big, '"', 9999);
    big[9999] = '\0';
    ks_info("%s", big);
    drain(buf, sizeof(buf));
    o = json_loads(buf, 0, NULL);
    assert_non_null(o);
    json_decref(o);
    free(big);
}

static void test_level_parse(void **state)
{
    ks_log_level l;
    assert_int_equal(ks_log_level_parse("debug", &l), 0);
    assert_int_equal(l, KS_LOG_DEBUG);
    assert_int_equal(ks_log_level_parse("error", &l), 0);
    assert_int_equal(l, KS_LOG_ERROR);
    assert_int_equal(ks_log_level_parse("loud", &l), -1);
}

static void test_status_names_and_last_error(void **state)
{
    ks_status s;
    assert_string_equal(ks_status_name(KS_OK), "ok");
    assert_string_equal(ks_status_name(KS_ERR_TIMEOUT), "timeout");
    assert_string_equal(ks_status_name((ks_status)999), "unknown status");
    for (int i = 0; i < KS_STATUS_COUNT; i++)
        assert_non_null(ks_status_name((ks_status)i));
    s = KS_FAIL(KS_ERR_INVALID, "bad %s", "thing");
    assert_int_equal(s, KS_ERR_INVALID);
    assert_non_null(strstr(ks_status_last(), "invalid: bad thing"));
    assert_non_null(strstr(ks_status_last(), "test_log.c:"));
    ks_status_clear();
    assert_string_equal(ks_status_last(), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_line_is_json_with_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_level_filters_before_formatting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_control_bytes_escaped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_message_stays_valid_json, setup, teardown),
        cmocka_unit_test(test_level_parse),
        cmocka_unit_test(test_status_names_and_last_error),
    };
    return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
