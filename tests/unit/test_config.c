/* Unit tests for lib/config.c and lib/addr.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "addr.h"
#include "config.h"

struct tcfg {
    char *nats_url;
    char *admin_addr;
    long long workers;
    int debug;
    long long timeout_ms;
    char *log_level;
    char *data_dir;
    char *password;
    char *name;
    long long pin;
    char *optional_url;
};

static const ks_config_opt topts[] = {
    {"nats-url", KS_CFG_URL, "nats://127.0.0.1:4222", 0, 0, NULL, offsetof(struct tcfg, nats_url),
     "NATS server URL", 0},
    {"admin-addr", KS_CFG_ADDR, "127.0.0.1:9191", 0, 0, NULL, offsetof(struct tcfg, admin_addr),
     "admin listener", 0},
    {"workers", KS_CFG_INT, "4", 1, 64, NULL, offsetof(struct tcfg, workers), "worker threads", 0},
    {"debug", KS_CFG_BOOL, "false", 0, 0, NULL, offsetof(struct tcfg, debug), "debug mode", 0},
    {"timeout", KS_CFG_DURATION, "2s", 10, 60000, NULL, offsetof(struct tcfg, timeout_ms),
     "request timeout", 0},
    {"log-level", KS_CFG_ENUM, "info", 0, 0, "debug|info|warn|error",
     offsetof(struct tcfg, log_level), "minimum log level", 0},
    {"data-dir", KS_CFG_PATH, "/var/lib/kscore", 0, 0, NULL, offsetof(struct tcfg, data_dir),
     "data folder", 0},
    {"password", KS_CFG_STRING, "hunter2", 0, 0, NULL, offsetof(struct tcfg, password),
     "admin password", 1},
    {"name", KS_CFG_STRING, "kscore", 0, 0, NULL, offsetof(struct tcfg, name), "instance name", 0},
    {"pin", KS_CFG_INT, "1234", 0, 9999, NULL, offsetof(struct tcfg, pin), "a secret number", 1},
    {"optional-url", KS_CFG_URL, NULL, 0, 0, NULL, offsetof(struct tcfg, optional_url),
     "unset unless given", 0},
};
#define NOPTS (sizeof(topts) / sizeof(topts[0]))

static const char *const env_names[] = {
    "KS_NATS_URL", "KS_ADMIN_ADDR", "KS_WORKERS", "KS_DEBUG",    "KS_TIMEOUT",     "KS_LOG_LEVEL",
    "KS_DATA_DIR", "KS_PASSWORD",   "KS_NAME",    "KS_PIN",      "KS_OPTIONAL_URL",
};

static int clean_env(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++)
        unsetenv(env_names[i]);
    return 0;
}

/* Parse a NULL-terminated list of arguments (program name added). */
static ks_status parse(struct tcfg *c, ks_config_action *act, char *err, size_t errcap, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    const char *a;
    ks_status s;

    argv[argc++] = "prog";
    va_start(ap, errcap);
    while ((a = va_arg(ap, const char *)) != NULL && argc < 31)
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    s = ks_config_parse(topts, NOPTS, c, argc, argv, act, err, errcap);
    if (s != KS_OK && err != NULL && errcap > 0)
        print_message("parse: %s\n", err);
    return s;
}

static void test_defaults(void **state)
{
    struct tcfg c = {0};
    ks_config_action act = KS_CONFIG_HELP;
    char err[KS_CONFIG_ERR_MAX];

    assert_int_equal(parse(&c, &act, err, sizeof(err), NULL), KS_OK);
    assert_int_equal(act, KS_CONFIG_RUN);
    assert_string_equal(c.nats_url, "nats://127.0.0.1:4222");
    assert_string_equal(c.admin_addr, "127.0.0.1:9191");
    assert_int_equal(c.workers, 4);
    assert_int_equal(c.debug, 0);
    assert_int_equal(c.timeout_ms, 2000);
    assert_string_equal(c.log_level, "info");
    assert_string_equal(c.data_dir, "/var/lib/kscore");
    assert_string_equal(c.password, "hunter2");
    assert_string_equal(c.name, "kscore");
    assert_int_equal(c.pin, 1234);
    assert_null(c.optional_url);
    ks_config_free(topts, NOPTS, &c);
    assert_null(c.nats_url);
    assert_null(c.name);
    ks_config_free(topts, NOPTS, &c); /* twice is fine */
}

static void test_env_overrides_default(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];

    setenv("KS_WORKERS", "8", 1);
    setenv("KS_DEBUG", "yes", 1);
    setenv("KS_TIMEOUT", "45s", 1);
    setenv("KS_LOG_LEVEL", "debug", 1);
    setenv("KS_NATS_URL", "nats://a:4222,tls://b:4223", 1);
    setenv("KS_NAME", "", 1); /* empty string: unset */
    assert_int_equal(parse(&c, &act, err, sizeof(err), NULL), KS_OK);
    assert_int_equal(c.workers, 8);
    assert_int_equal(c.debug, 1);
    assert_int_equal(c.timeout_ms, 45000);
    assert_string_equal(c.log_level, "debug");
    assert_string_equal(c.nats_url, "nats://a:4222,tls://b:4223");
    assert_null(c.name);
    ks_config_free(topts, NOPTS, &c);
}

static void test_flag_overrides_env(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];

    setenv("KS_WORKERS", "8", 1);
    setenv("KS_ADMIN_ADDR", "0.0.0.0:1", 1);
    setenv("KS_LOG_LEVEL", "bogus", 1); /* overridden by a flag: never validated */
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers=16", "--admin-addr", "[::1]:9000",
                           "--log-level", "warn", "--timeout=250ms", "--name", "a b", NULL),
                     KS_OK);
    assert_int_equal(c.workers, 16);
    assert_string_equal(c.admin_addr, "[::1]:9000");
    assert_string_equal(c.log_level, "warn");
    assert_int_equal(c.timeout_ms, 250);
    assert_string_equal(c.name, "a b");
    ks_config_free(topts, NOPTS, &c);

    /* The last of two flags wins. */
    unsetenv("KS_LOG_LEVEL");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers=2", "--workers", "3", NULL), KS_OK);
    assert_int_equal(c.workers, 3);
    ks_config_free(topts, NOPTS, &c);
}

static void test_bool(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];

    assert_int_equal(parse(&c, &act, err, sizeof(err), "--debug", NULL), KS_OK);
    assert_int_equal(c.debug, 1);
    ks_config_free(topts, NOPTS, &c);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--debug", "--workers=5", NULL), KS_OK);
    assert_int_equal(c.debug, 1);
    assert_int_equal(c.workers, 5);
    ks_config_free(topts, NOPTS, &c);
    setenv("KS_DEBUG", "ON", 1);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--debug=off", NULL), KS_OK);
    assert_int_equal(c.debug, 0);
    ks_config_free(topts, NOPTS, &c);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--debug", "No", NULL), KS_OK);
    assert_int_equal(c.debug, 0);
    ks_config_free(topts, NOPTS, &c);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--debug", "1", NULL), KS_OK);
    assert_int_equal(c.debug, 1);
    ks_config_free(topts, NOPTS, &c);

    assert_int_equal(parse(&c, &act, err, sizeof(err), "--debug=maybe", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_DEBUG (--debug): not a boolean "
                             "(true/false/1/0/yes/no/on/off): maybe");
    setenv("KS_DEBUG", "2", 1);
    assert_int_equal(parse(&c, &act, err, sizeof(err), NULL), KS_ERR_INVALID);
    assert_non_null(strstr(err, "invalid KS_DEBUG (--debug)"));
}

static void test_int_bounds(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];

    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers=0", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_WORKERS (--workers): out of range [1, 64]: 0");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers=65", NULL), KS_ERR_INVALID);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers=abc", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_WORKERS (--workers): not an integer: abc");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers=5x", NULL), KS_ERR_INVALID);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers= 5", NULL), KS_ERR_INVALID);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers=", NULL), KS_ERR_INVALID);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers=99999999999999999999", NULL),
                     KS_ERR_INVALID);
    setenv("KS_WORKERS", "", 1); /* explicitly empty is validated */
    assert_int_equal(parse(&c, &act, err, sizeof(err), NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_WORKERS (--workers): not an integer: ");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers=64", NULL), KS_OK);
    assert_int_equal(c.workers, 64);
    ks_config_free(topts, NOPTS, &c);
}

static void test_duration(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];
    long long ms = -1;
    char buf[32];

    assert_int_equal(ks_config_parse_duration("250ms", &ms), KS_OK);
    assert_int_equal(ms, 250);
    assert_int_equal(ks_config_parse_duration("2s", &ms), KS_OK);
    assert_int_equal(ms, 2000);
    assert_int_equal(ks_config_parse_duration("5m", &ms), KS_OK);
    assert_int_equal(ms, 300000);
    assert_int_equal(ks_config_parse_duration("1h", &ms), KS_OK);
    assert_int_equal(ms, 3600000);
    assert_int_equal(ks_config_parse_duration("42", &ms), KS_OK);
    assert_int_equal(ms, 42);
    assert_int_equal(ks_config_parse_duration("0", &ms), KS_OK);
    assert_int_equal(ms, 0);
    ms = 7;
    assert_int_equal(ks_config_parse_duration("1d", &ms), KS_ERR_INVALID);
    assert_int_equal(ks_config_parse_duration("-1s", &ms), KS_ERR_INVALID);
    assert_int_equal(ks_config_parse_duration("1.5s", &ms), KS_ERR_INVALID);
    assert_int_equal(ks_config_parse_duration("s", &ms), KS_ERR_INVALID);
    assert_int_equal(ks_config_parse_duration("", &ms), KS_ERR_INVALID);
    assert_int_equal(ks_config_parse_duration("9223372036854775807h", &ms), KS_ERR_INVALID);
    assert_int_equal(ks_config_parse_duration("99999999999999999999", &ms), KS_ERR_INVALID);
    assert_int_equal(ms, 7); /* untouched on failure */

    ks_config_format_duration(3600000, buf, sizeof(buf));
    assert_string_equal(buf, "1h");
    ks_config_format_duration(90000, buf, sizeof(buf));
    assert_string_equal(buf, "90s");
    ks_config_format_duration(250, buf, sizeof(buf));
    assert_string_equal(buf, "250ms");
    ks_config_format_duration(0, buf, sizeof(buf));
    assert_string_equal(buf, "0ms");
    ks_config_format_duration(-120000, buf, sizeof(buf));
    assert_string_equal(buf, "-2m");

    assert_int_equal(parse(&c, &act, err, sizeof(err), "--timeout=5", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_TIMEOUT (--timeout): out of range [10ms, 1m]: 5");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--timeout=2x", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_TIMEOUT (--timeout): not a duration "
                             "(like 250ms, 2s, 5m, 1h): 2x");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--timeout=1m", NULL), KS_OK);
    assert_int_equal(c.timeout_ms, 60000);
    ks_config_free(topts, NOPTS, &c);
}

static void test_url(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];
    static const char *const good[] = {
        "nats://h", "nats://h:4222", "tls://user:pw@h:4222", "http://[::1]:8080/x?y#z",
        "https://example.com/path", "NATS://H", "nats://a:1,nats://b:2", "http://[::1]",
    };
    static const char *const bad[] = {
        "localhost:4222", "ftp://h", "nats://", "nats://:4222", "nats://h:99999",
        "nats://h:", "nats://a,", ",nats://a", "nats://h x", "://h", "nats://h:0",
    };

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char arg[128];
        snprintf(arg, sizeof(arg), "--nats-url=%s", good[i]);
        if (parse(&c, &act, err, sizeof(err), arg, NULL) != KS_OK)
            fail_msg("%s rejected: %s", good[i], err);
        assert_string_equal(c.nats_url, good[i]);
        ks_config_free(topts, NOPTS, &c);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char arg[128];
        snprintf(arg, sizeof(arg), "--nats-url=%s", bad[i]);
        if (parse(&c, &act, err, sizeof(err), arg, NULL) != KS_ERR_INVALID)
            fail_msg("%s accepted", bad[i]);
        assert_non_null(strstr(err, "invalid KS_NATS_URL (--nats-url): "));
        assert_null(c.nats_url);
    }
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--nats-url=ftp://h", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_NATS_URL (--nats-url): unsupported scheme 'ftp' "
                             "(want nats, tls, http or https)");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--nats-url=nats://h:70000", NULL),
                     KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_NATS_URL (--nats-url): port out of range: 70000");
}

static void test_addr_setting(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];

    setenv("KS_ADMIN_ADDR", "127.0.0.1:70000", 1);
    assert_int_equal(parse(&c, &act, err, sizeof(err), NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_ADMIN_ADDR (--admin-addr): port out of range: 70000");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--admin-addr=nohost", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_ADMIN_ADDR (--admin-addr): missing port");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--admin-addr=::1:80", NULL), KS_ERR_INVALID);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--admin-addr=:80", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_ADMIN_ADDR (--admin-addr): missing host");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--admin-addr=localhost:0", NULL), KS_OK);
    assert_string_equal(c.admin_addr, "localhost:0");
    ks_config_free(topts, NOPTS, &c);
}

static void test_enum_path(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];

    assert_int_equal(parse(&c, &act, err, sizeof(err), "--log-level=verbose", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_LOG_LEVEL (--log-level): must be one of "
                             "debug|info|warn|error: verbose");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--log-level=INFO", NULL), KS_ERR_INVALID);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--log-level=inf", NULL), KS_ERR_INVALID);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--log-level=error", NULL), KS_OK);
    assert_string_equal(c.log_level, "error");
    ks_config_free(topts, NOPTS, &c);

    assert_int_equal(parse(&c, &act, err, sizeof(err), "--data-dir=", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_DATA_DIR (--data-dir): must not be empty");
}

static void test_unknown_and_positional(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];

    assert_int_equal(parse(&c, &act, err, sizeof(err), "--admin-adr=x:1", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "unknown flag --admin-adr");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--bogus", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "unknown flag --bogus");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "extra", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "unexpected argument 'extra'");
    assert_int_equal(parse(&c, &act, err, sizeof(err), "-v", NULL), KS_ERR_INVALID);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--", NULL), KS_ERR_INVALID);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--workers", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "missing value for --workers");
    /* A control byte in a flag cannot split the error line. */
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--a\nb", NULL), KS_ERR_INVALID);
    assert_null(strchr(err, '\n'));
    /* The first bad argument is the one reported. */
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--one", "--two", NULL), KS_ERR_INVALID);
    assert_string_equal(err, "unknown flag --one");
    /* A small err buffer truncates, never overflows. */
    char small[8];
    assert_int_equal(parse(&c, &act, small, sizeof(small), "--bogus", NULL), KS_ERR_INVALID);
    assert_string_equal(small, "unknown");
    assert_int_equal(parse(&c, &act, NULL, 0, "--bogus", NULL), KS_ERR_INVALID);
}

static void test_failure_leaves_cfg(void **state)
{
    char sentinel[] = "sentinel";
    struct tcfg c = {0};
    ks_config_action act = KS_CONFIG_CHECK;
    char err[KS_CONFIG_ERR_MAX];

    c.name = sentinel;
    c.workers = 77;
    /* Several fields convert before the bad one fails: none may leak. */
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--pin=100000", NULL), KS_ERR_INVALID);
    assert_ptr_equal(c.name, sentinel);
    assert_int_equal(c.workers, 77);
    assert_null(c.nats_url);
    assert_int_equal(act, KS_CONFIG_CHECK);
}

static void test_help(void **state)
{
    struct tcfg c = {0};
    ks_config_action act = KS_CONFIG_RUN;
    char err[KS_CONFIG_ERR_MAX];
    char *out = NULL;
    size_t len = 0;
    FILE *f;

    /* --help wins over bad values and unknown flags, and touches nothing. */
    setenv("KS_WORKERS", "0", 1);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--bogus", "--help", NULL), KS_OK);
    assert_int_equal(act, KS_CONFIG_HELP);
    assert_null(c.nats_url);
    assert_int_equal(parse(&c, &act, err, sizeof(err), "-h", NULL), KS_OK);
    assert_int_equal(act, KS_CONFIG_HELP);

    f = open_memstream(&out, &len);
    assert_non_null(f);
    ks_config_print_help(f, "kscore-test", "Test service.", topts, NOPTS);
    fclose(f);
    assert_non_null(strstr(out, "Usage: kscore-test"));
    assert_non_null(strstr(out, "Test service."));
    assert_non_null(strstr(out, "  --nats-url URL\n      NATS server URL\n"
                                "      env KS_NATS_URL; URL; default nats://127.0.0.1:4222\n"));
    assert_non_null(strstr(out, "  --workers N\n      worker threads\n"
                                "      env KS_WORKERS; integer in [1, 64]; default 4\n"));
    assert_non_null(strstr(out, "env KS_TIMEOUT; duration in [10ms, 1m]; default 2s"));
    assert_non_null(strstr(out, "--log-level debug|info|warn|error"));
    assert_non_null(strstr(out, "env KS_OPTIONAL_URL; URL; no default"));
    assert_non_null(strstr(out, "env KS_PASSWORD; string; default (secret); secret"));
    assert_null(strstr(out, "hunter2"));
    assert_null(strstr(out, "1234"));
    assert_non_null(strstr(out, "--check-config"));
    assert_non_null(strstr(out, "status 2"));
    free(out);
}

static void test_check_config(void **state)
{
    struct tcfg c = {0};
    ks_config_action act = KS_CONFIG_RUN;
    char err[KS_CONFIG_ERR_MAX];
    char *out = NULL;
    size_t len = 0;
    FILE *f;

    assert_int_equal(parse(&c, &act, err, sizeof(err), "--check-config", "--nats-url",
                           "nats://alice:s3cr3t@h:4222,nats://b:1,tls://T0KEN@c", "--debug", NULL),
                     KS_OK);
    assert_int_equal(act, KS_CONFIG_CHECK);
    f = open_memstream(&out, &len);
    assert_non_null(f);
    ks_config_print_values(f, "kscore-test", topts, NOPTS, &c);
    fclose(f);
    assert_string_equal(out, "kscore-test: configuration ok\n"
                             "  nats-url = nats://alice:***@h:4222,nats://b:1,tls://***@c\n"
                             "  admin-addr = 127.0.0.1:9191\n"
                             "  workers = 4\n"
                             "  debug = true\n"
                             "  timeout = 2s\n"
                             "  log-level = info\n"
                             "  data-dir = /var/lib/kscore\n"
                             "  password = (secret)\n"
                             "  name = kscore\n"
                             "  pin = (secret)\n"
                             "  optional-url = (unset)\n");
    free(out);
    ks_config_free(topts, NOPTS, &c);

    /* --check-config still fails on a bad value. */
    act = KS_CONFIG_RUN;
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--check-config", "--workers=0", NULL),
                     KS_ERR_INVALID);
    assert_int_equal(act, KS_CONFIG_RUN);
}

static void test_secret_not_echoed(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];

    assert_int_equal(parse(&c, &act, err, sizeof(err), "--pin=abc123x", NULL), KS_ERR_INVALID);
    assert_non_null(strstr(err, "invalid KS_PIN (--pin): not an integer"));
    assert_null(strstr(err, "abc123x"));
    assert_int_equal(parse(&c, &act, err, sizeof(err), "--pin=77777", NULL), KS_ERR_INVALID);
    assert_null(strstr(err, "77777"));
}

static void test_bad_table(void **state)
{
    struct tcfg c = {0};
    ks_config_action act;
    char err[KS_CONFIG_ERR_MAX];
    char *argv[] = {"prog", NULL};
    ks_config_opt dup[2] = {topts[2], topts[2]};
    ks_config_opt reserved[1] = {topts[2]};
    ks_config_opt upper[1] = {topts[2]};
    ks_config_opt noenum[1] = {topts[5]};

    assert_int_equal(ks_config_parse(dup, 2, &c, 1, argv, &act, err, sizeof(err)), KS_ERR_INVALID);
    assert_non_null(strstr(err, "bad option table"));
    reserved[0].name = "help";
    assert_int_equal(ks_config_parse(reserved, 1, &c, 1, argv, &act, err, sizeof(err)),
                     KS_ERR_INVALID);
    upper[0].name = "Workers";
    assert_int_equal(ks_config_parse(upper, 1, &c, 1, argv, &act, err, sizeof(err)), KS_ERR_INVALID);
    noenum[0].choices = NULL;
    assert_int_equal(ks_config_parse(noenum, 1, &c, 1, argv, &act, err, sizeof(err)),
                     KS_ERR_INVALID);
    /* A bad default is reported like any other bad value. */
    upper[0].name = "workers";
    upper[0].def = "zero";
    assert_int_equal(ks_config_parse(upper, 1, &c, 1, argv, &act, err, sizeof(err)), KS_ERR_INVALID);
    assert_string_equal(err, "invalid KS_WORKERS (--workers): not an integer: zero");
    /* An empty table parses (argc 0 too). */
    assert_int_equal(ks_config_parse(NULL, 0, &c, 0, NULL, &act, err, sizeof(err)), KS_OK);
}

/* Run ks_config_load_or_exit in a child; return its exit status and what it
 * wrote to stdout and stderr (merged). */
static int run_load(char *out, size_t outcap, const char *a1, const char *a2)
{
    int pfd[2];
    pid_t pid;
    int st = 0;
    size_t n = 0;
    ssize_t r;

    assert_int_equal(pipe(pfd), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char *argv[] = {"kscore-test", (char *)a1, (char *)a2, NULL};
        int argc = a1 == NULL ? 1 : a2 == NULL ? 2 : 3;
        struct tcfg c = {0};
        close(pfd[0]);
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        ks_config_load_or_exit(topts, NOPTS, &c, argc, argv, "kscore-test", "Test.");
        printf("RUN workers=%lld\n", c.workers);
        ks_config_free(topts, NOPTS, &c);
        fflush(stdout);
        _exit(42);
    }
    close(pfd[1]);
    while (n + 1 < outcap && (r = read(pfd[0], out + n, outcap - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(pfd[0]);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

static void test_load_or_exit(void **state)
{
    char out[8192];

    assert_int_equal(run_load(out, sizeof(out), "--workers=0", NULL), 2);
    assert_non_null(strstr(out, "kscore-test: invalid KS_WORKERS (--workers): out of range"));
    assert_int_equal(run_load(out, sizeof(out), "--nope", NULL), 2);
    /* exactly one line, naming the flag */
    assert_string_equal(out, "kscore-test: unknown flag --nope (see --help)\n");
    assert_int_equal(run_load(out, sizeof(out), "--help", NULL), 0);
    assert_non_null(strstr(out, "Usage: kscore-test"));
    assert_int_equal(run_load(out, sizeof(out), "--check-config", "--workers=9"), 0);
    assert_non_null(strstr(out, "kscore-test: configuration ok\n"));
    assert_non_null(strstr(out, "  workers = 9\n"));
    assert_int_equal(run_load(out, sizeof(out), "--workers", "7"), 42);
    assert_string_equal(out, "RUN workers=7\n");
}

static void test_addr_parse(void **state)
{
    char host[64], why[128];
    int port = -1;

    assert_int_equal(ks_addr_parse("127.0.0.1:9191", host, sizeof(host), &port), KS_OK);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 9191);
    assert_int_equal(ks_addr_parse("[::1]:0", host, sizeof(host), &port), KS_OK);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 0);
    assert_int_equal(ks_addr_parse("localhost:65535", host, sizeof(host), &port), KS_OK);
    assert_string_equal(host, "localhost");
    assert_int_equal(port, 65535);
    assert_int_equal(ks_addr_parse("[fe80::1%eth0]:80", host, sizeof(host), &port), KS_OK);
    assert_string_equal(host, "fe80::1%eth0");

    snprintf(host, sizeof(host), "keep");
    port = -1;
    static const char *const bad[] = {
        "", ":80", "host", "host:", "host:65536", "host:-1", "host:+1", "host:0x10", "host: 80",
        "::1:80", "[::1]", "[::1]80", "[]:80", "[::1:80", "a b:80", "a/b:80", "u@h:80",
        "host:1234567", "host:80 ",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (ks_addr_parse(bad[i], host, sizeof(host), &port) != KS_ERR_INVALID)
            fail_msg("'%s' accepted", bad[i]);
    }
    assert_string_equal(host, "keep");
    assert_int_equal(port, -1);
    assert_int_equal(ks_addr_parse(NULL, host, sizeof(host), &port), KS_ERR_INVALID);

    assert_int_equal(ks_addr_parse_why("h:70000", host, sizeof(host), &port, why, sizeof(why)),
                     KS_ERR_INVALID);
    assert_string_equal(why, "port out of range: 70000");
    assert_int_equal(ks_addr_parse_why("::1:80", host, sizeof(host), &port, why, sizeof(why)),
                     KS_ERR_INVALID);
    assert_string_equal(why, "an IPv6 host needs brackets: [host]:port");
    assert_int_equal(ks_addr_parse("abcdefgh:1", host, 8, &port), KS_ERR_TOO_LARGE);
    assert_int_equal(ks_addr_parse("abcdefg:1", host, 8, &port), KS_OK);

    assert_int_equal(ks_addr_format(why, sizeof(why), "::1", 80), KS_OK);
    assert_string_equal(why, "[::1]:80");
    assert_int_equal(ks_addr_format(why, sizeof(why), "10.0.0.1", 0), KS_OK);
    assert_string_equal(why, "10.0.0.1:0");
    assert_int_equal(ks_addr_format(why, 4, "10.0.0.1", 0), KS_ERR_TOO_LARGE);
    assert_int_equal(ks_addr_format(why, sizeof(why), "h", 65536), KS_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults, clean_env),
        cmocka_unit_test_setup(test_env_overrides_default, clean_env),
        cmocka_unit_test_setup(test_flag_overrides_env, clean_env),
        cmocka_unit_test_setup(test_bool, clean_env),
        cmocka_unit_test_setup(test_int_bounds, clean_env),
        cmocka_unit_test_setup(test_duration, clean_env),
        cmocka_unit_test_setup(test_url, clean_env),
        cmocka_unit_test_setup(test_addr_setting, clean_env),
        cmocka_unit_test_setup(test_enum_path, clean_env),
        cmocka_unit_test_setup(test_unknown_and_positional, clean_env),
        cmocka_unit_test_setup(test_failure_leaves_cfg, clean_env),
        cmocka_unit_test_setup(test_help, clean_env),
        cmocka_unit_test_setup(test_check_config, clean_env),
        cmocka_unit_test_setup(test_secret_not_echoed, clean_env),
        cmocka_unit_test_setup(test_bad_table, clean_env),
        cmocka_unit_test_setup(test_load_or_exit, clean_env),
        cmocka_unit_test_setup(test_addr_parse, clean_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
