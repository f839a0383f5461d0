/* Unit tests: lib/password.c (libcrypt hashing, policy, the worker pool).
 *
 * Known hashes:
 *   - "U*U" / $2a$05$CCCCCCCCCCCCCCCCCCCCC. is the classic bcrypt vector of
 *     OpenBSD and John the Ripper (computed elsewhere);
 *   - "pleaseletmein" / $y$jD5.7$... is from yescrypt's reference TESTS-OK;
 *   - the "Kscore-Test-1" hashes were made once with crypt_r and
 *     crypt_gensalt_rn(prefix, 4 or 0, "0123456789abcdef", 16) in a scratch
 *     program, and hard-coded.
 * The pool tests keep a worker busy with cost-12 hashes (hundreds of ms) and
 * wait for states by polling with a deadline, never by a fixed sleep. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"
#include "password.h"

#define PW "Kscore-Test-1"
#define H2A "$2a$04$KBCwKxOzLha2MUDgW0PjXeOqG.Dy8oUGPMFF0WJAbzNnHgAA/ZjiS"
#define H2B "$2b$04$KBCwKxOzLha2MUDgW0PjXeOqG.Dy8oUGPMFF0WJAbzNnHgAA/ZjiS"
#define H2Y "$2y$04$KBCwKxOzLha2MUDgW0PjXeOqG.Dy8oUGPMFF0WJAbzNnHgAA/ZjiS"
#define HY "$y$j9T$k2XAnEHBqQ1Ct2aMXFKNa/$5VjUyDNJWbF9f/clilEGwwVetj12/e0lBGhCtikRG02"
#define UU "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
#define YREF "$y$jD5.7$LdJMENpBABJJ3hIHjB1Bi.$HboGM6qPrsK.StKYGt6KErmUYtioHreJd98oIugoNB6"
#define BODY53 "KBCwKxOzLha2MUDgW0PjXeOqG.Dy8oUGPMFF0WJAbzNnHgAA/ZjiS"
#define H43 "5VjUyDNJWbF9f/clilEGwwVetj12/e0lBGhCtikRG02"

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Call cond(arg) until it holds or deadline_ms passes; 1 if it held. */
static int poll_until(int (*cond)(void *), void *arg, int64_t deadline_ms)
{
    int64_t end = mono_ms() + deadline_ms;
    struct timespec nap = {0, 1000000};

    for (int i = 0;; i++) {
        if (cond(arg))
            return 1;
        if (mono_ms() > end)
            return 0;
        if (i < 100)
            sched_yield();
        else
            nanosleep(&nap, NULL);
    }
}

/* ---- known hashes ---- */

static void test_known_hashes(void **state)
{
    (void)state;
    static const char *const good[] = {H2A, H2B, H2Y, HY};

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        assert_int_equal(ks_password_verify(PW, good[i]), KS_OK);
        assert_int_equal(ks_password_verify("Kscore-Test-2", good[i]), KS_ERR_DENIED);
        assert_int_equal(ks_password_verify("", good[i]), KS_ERR_DENIED);
        assert_int_equal(ks_password_verify("kscore-test-1", good[i]), KS_ERR_DENIED);
        assert_int_equal(ks_password_verify(PW "\n", good[i]), KS_ERR_DENIED);
    }
    assert_int_equal(ks_password_verify("U*U", UU), KS_OK);
    assert_int_equal(ks_password_verify("U*V", UU), KS_ERR_DENIED);
    assert_int_equal(ks_password_verify("pleaseletmein", YREF), KS_OK);
    assert_int_equal(ks_password_verify("pleaseletmeout", YREF), KS_ERR_DENIED);
}

static void test_round_trip(void **state)
{
    (void)state;
    char *h1 = NULL, *h2 = NULL, *h10 = NULL;

    assert_int_equal(ks_password_hash("Secr3t-password", 4, &h1), KS_OK);
    assert_int_equal(ks_password_hash("Secr3t-password", 4, &h2), KS_OK);
    assert_int_equal(strlen(h1), 60);
    assert_memory_equal(h1, "$2b$04$", 7);
    assert_true(ks_password_is_hash(h1));
    assert_string_not_equal(h1, h2); /* a fresh salt each time */
    assert_int_equal(ks_password_verify("Secr3t-password", h1), KS_OK);
    assert_int_equal(ks_password_verify("Secr3t-password", h2), KS_OK);
    assert_int_equal(ks_password_verify("Secr3t-passwore", h1), KS_ERR_DENIED);

    /* cost 0 is the default, 10 */
    assert_int_equal(ks_password_hash("Passw0rd", 0, &h10), KS_OK);
    assert_memory_equal(h10, "$2b$10$", 7);
    assert_int_equal(ks_password_verify("Passw0rd", h10), KS_OK);
    assert_int_equal(ks_password_verify("Passw0rD", h10), KS_ERR_DENIED);
    free(h1);
    free(h2);
    free(h10);
}

static void test_hash_arguments(void **state)
{
    (void)state;
    char *h = NULL;
    char big[KS_PASSWORD_PLAIN_MAX + 2];

    assert_int_equal(ks_password_hash(NULL, 4, &h), KS_ERR_INVALID);
    assert_int_equal(ks_password_hash("x", 4, NULL), KS_ERR_INVALID);
    assert_int_equal(ks_password_hash("x", 3, &h), KS_ERR_INVALID);
    assert_int_equal(ks_password_hash("x", KS_PASSWORD_MAX_COST + 1, &h), KS_ERR_INVALID);
    assert_int_equal(ks_password_hash("x", -1, &h), KS_ERR_INVALID);
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(ks_password_hash(big, 4, &h), KS_ERR_TOO_LARGE);
    assert_null(h);
    /* at the cap it works, and a longer plain never matches */
    big[KS_PASSWORD_PLAIN_MAX] = '\0';
    assert_int_equal(ks_password_hash(big, 4, &h), KS_OK);
    assert_int_equal(ks_password_verify(big, h), KS_OK);
    big[KS_PASSWORD_PLAIN_MAX] = 'a';
    assert_int_equal(ks_password_verify(big, h), KS_ERR_DENIED);
    free(h);
    h = NULL;

    /* bcrypt reads 72 bytes: documented, not hidden */
    char p72[80];
    memset(p72, 'k', 72);
    p72[72] = '\0';
    assert_int_equal(ks_password_hash(p72, 4, &h), KS_OK);
    p72[72] = 'X';
    p72[73] = '\0';
    assert_int_equal(ks_password_verify(p72, h), KS_OK);
    free(h);

    assert_int_equal(ks_password_verify(NULL, H2B), KS_ERR_INVALID);
    assert_int_equal(ks_password_verify(PW, NULL), KS_ERR_INVALID);
}

static void test_malformed_hashes(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "Passw0rd",
        "$2b$04$short",
        "$2x$04$" BODY53,
        "$2b$4$" BODY53,
        "$2b$004$" BODY53,
        "$2b$03$" BODY53,           /* under bcrypt's minimum cost */
        "$2b$17$" BODY53,           /* over KS_PASSWORD_MAX_COST */
        "$2b$31$" BODY53,           /* days of work */
        "$2b$99$" BODY53,
        "$2b$04$" BODY53 "\n",
        "$2b$04$" BODY53 "x",
        "$1$saltsalt$hashhashhashhashhashha",
        "$6$saltsalt$" H43 H43,
        "$y$$k2XAnEHBqQ1Ct2aMXFKNa/$" H43,
        "$y$j9T$$" H43,
        "$y$j9T$k2XAnEHBqQ1Ct2aMXFKNa/$5VjUyDNJWbF9f/clilEGwwVetj12/e0lBGhCtikRG0",
        "$y$jCT$k2XAnEHBqQ1Ct2aMXFKNa/$" H43, /* 128 MiB: over the memory cap */
        "$y$jD5.7.$LdJMENpBABJJ3hIHjB1Bi.$" H43,  /* a stray character after p */
        "$y$jD5/3$LdJMENpBABJJ3hIHjB1Bi.$" H43,   /* t = 6: over the limit of 4 */
        "$y$j9T8$k2XAnEHBqQ1Ct2aMXFKNa/$" H43,    /* "have" asks for a ROM */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ks_status s = ks_password_verify(PW, bad[i]);
        if (s != KS_ERR_INVALID)
            fail_msg("hash %zu (%s): %s", i, bad[i], ks_status_name(s));
    }
}

/* ---- is_hash: the CRD's CEL patterns ---- */

static void test_is_hash(void **state)
{
    (void)state;
    char salt86[87], salt87[88];
    char buf[256];
    static const struct { const char *s; int want; } v[] = {
        {H2A, 1},
        {H2B, 1},
        {H2Y, 1},
        {UU, 1},
        {HY, 1},
        {YREF, 1},
        {"$2b$99$" BODY53, 1}, /* the pattern allows any two digits */
        {"$2b$00$" BODY53, 1},
        {"$2x$04$" BODY53, 0},
        {"$2$04$" BODY53, 0},
        {"$2b$4$" BODY53, 0},
        {"$2b$1a$" BODY53, 0},
        {"$2b$04$" "KBCwKxOzLha2MUDgW0PjXeOqG.Dy8oUGPMFF0WJAbzNnHgAA/Zji", 0},   /* 52 */
        {"$2b$04$" BODY53 "S", 0},                                                /* 54 */
        {"$2b$04$" "KBCwKxOzLha2MUDgW0PjXeOqG+Dy8oUGPMFF0WJAbzNnHgAA/ZjiS", 0},  /* + */
        {"$2b$04$" BODY53 "\n", 0},
        {" $2b$04$" BODY53, 0},
        {"$y$j9T$k2XAnEHBqQ1Ct2aMXFKNa/$" H43 "$", 0},
        {"$y$$k2XAnEHBqQ1Ct2aMXFKNa/$" H43, 0},
        {"$y$j9T$$" H43, 0},
        {"$y$j9T$salt$" H43 "A", 0},
        {"$y$j9T$salt$" "5VjUyDNJWbF9f/clilEGwwVetj12/e0lBGhCtikRG0", 0},
        {"$y$j9T$salt$" H43, 1},
        {"$y$j9-T$salt$" H43, 0},
        {"$Y$j9T$salt$" H43, 0},
        {"$6$rounds=5000$salt$hash", 0},
        {"$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", 0},
        {"Passw0rd", 0},
        {"", 0},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        if (ks_password_is_hash(v[i].s) != v[i].want)
            fail_msg("is_hash(%s) != %d", v[i].s, v[i].want);
    assert_false(ks_password_is_hash(NULL));

    memset(salt86, 'a', 86);
    salt86[86] = '\0';
    memset(salt87, 'a', 87);
    salt87[87] = '\0';
    snprintf(buf, sizeof(buf), "$y$j9T$%s$%s", salt86, H43);
    assert_true(ks_password_is_hash(buf));
    snprintf(buf, sizeof(buf), "$y$j9T$%s$%s", salt87, H43);
    assert_false(ks_password_is_hash(buf));
}

/* ---- policy ---- */

static void test_policy(void **state)
{
    (void)state;
    char a64[65], a65[66], e64[3 + 61 * 2 + 1], e65[3 + 62 * 2 + 1];
    memset(a64, 'x', 64);
    memcpy(a64, "Aa1", 3);
    a64[64] = '\0';
    memset(a65, 'x', 65);
    memcpy(a65, "Aa1", 3);
    a65[65] = '\0';
    memcpy(e64, "Aa1", 3);
    for (int i = 0; i < 61; i++)
        memcpy(e64 + 3 + 2 * i, "\xc3\xa9", 2); /* é */
    e64[3 + 61 * 2] = '\0';
    memcpy(e65, "Aa1", 3);
    for (int i = 0; i < 62; i++)
        memcpy(e65 + 3 + 2 * i, "\xc3\xa9", 2);
    e65[3 + 62 * 2] = '\0';

    const struct { const char *p; int ok; const char *why; } v[] = {
        {"P@88w0rd", 1, ""},
        {"Passw0rd", 1, ""},
        {"aaaaaaA1", 1, ""},
        {"Pass w0rd", 1, ""},
        {a64, 1, ""},
        {e64, 1, ""},                                  /* 64 code points, 125 bytes */
        {"P\xc3\xa4ssw0rd", 1, ""},                   /* Pässw0rd */
        {"Aa1\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 1, ""}, /* 8 code points */
        {"Aa1\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80\xf0\x9f\x98\x80",
         1, ""},                                       /* emoji */
        {"Pass0rd", 0, "at least 8"},
        {"", 0, "at least 8"},
        {"Aa1\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 0, "at least 8"}, /* 7 code points, 11 bytes */
        {a65, 0, "at most 64"},
        {e65, 0, "at most 64"},
        {"password1", 0, "upper-case"},
        {"\xc3\x84" "bcdefg1", 0, "upper-case"},       /* Ä is not A-Z */
        {"PASSWORD1", 0, "lower-case"},
        {"12345678", 0, "lower-case"},
        {"Password", 0, "digit"},
        {"Pass-word-\xd9\xa3", 0, "digit"},            /* Arabic-Indic three is not 0-9 */
        {"Passw0rd\xff", 0, "UTF-8"},
        {"\xc0\xafPassw0rd", 0, "UTF-8"},               /* overlong '/' */
        {"\xed\xa0\x80Passw0rd", 0, "UTF-8"},           /* a surrogate */
        {"Passw0rd\xc3", 0, "UTF-8"},                   /* truncated sequence */
        {"Passw0rd\xf4\x90\x80\x80", 0, "UTF-8"},       /* above U+10FFFF */
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char why[128] = "unset";
        ks_status s = ks_password_policy_check(v[i].p, why, sizeof(why));
        if ((s == KS_OK) != v[i].ok || (v[i].ok && why[0] != '\0') ||
            (!v[i].ok && strstr(why, v[i].why) == NULL))
            fail_msg("case %zu: status %s, why \"%s\", want ok=%d \"%s\"", i, ks_status_name(s),
                     why, v[i].ok, v[i].why);
        if (!v[i].ok)
            assert_int_equal(s, KS_ERR_INVALID);
    }
    char small[8];
    assert_int_equal(ks_password_policy_check("short", small, sizeof(small)), KS_ERR_INVALID);
    assert_int_equal(strlen(small), 7);
    assert_int_equal(ks_password_policy_check(NULL, NULL, 0), KS_ERR_INVALID);
    assert_int_equal(ks_password_policy_check("Passw0rd", NULL, 0), KS_OK);
}

/* ---- pool ---- */

typedef struct {
    _Atomic int calls, ok, denied, closed, other;
    _Atomic int hashes_ok; /* HASH results that verify */
    const char *plain;     /* for checking HASH results */
} counts;

static void count_cb(ks_status result, const char *hash, void *arg)
{
    counts *c = arg;
    if (result == KS_OK) {
        atomic_fetch_add(&c->ok, 1);
        if (hash != NULL && c->plain != NULL && ks_password_verify(c->plain, hash) == KS_OK)
            atomic_fetch_add(&c->hashes_ok, 1);
    } else if (result == KS_ERR_DENIED) {
        atomic_fetch_add(&c->denied, 1);
    } else if (result == KS_ERR_CLOSED) {
        atomic_fetch_add(&c->closed, 1);
    } else {
        atomic_fetch_add(&c->other, 1);
    }
    atomic_fetch_add(&c->calls, 1); /* last: the test polls on it */
}

typedef struct {
    ks_password_pool *pool;
    size_t n;
} queued_arg;

static int queued_is(void *p)
{
    queued_arg *q = p;
    return ks_password_pool_queued(q->pool) == q->n;
}

typedef struct {
    counts *c;
    int n;
} calls_arg;

static int calls_reach(void *p)
{
    calls_arg *a = p;
    return atomic_load(&a->c->calls) >= a->n;
}

static double metric(const char *kind, const char *name, const char *labels)
{
    if (strcmp(kind, "counter") == 0)
        return ks_metric_value(ks_metrics_counter(name, NULL, labels));
    if (strcmp(kind, "gauge") == 0)
        return ks_metric_value(ks_metrics_gauge(name, NULL, labels));
    return ks_metric_value(ks_metrics_histogram(name, NULL, labels, NULL, 0));
}

static void test_pool_callbacks_all_fire(void **state)
{
    (void)state;
    ks_password_pool *p = NULL;
    counts c = {.plain = "Hash-me-1"};
    double verifies0 = metric("histogram", "ks_password_hash_seconds", "op=\"verify\"");
    double hashes0 = metric("histogram", "ks_password_hash_seconds", "op=\"hash\"");

    assert_int_equal(ks_password_pool_create(2, 64, &p), KS_OK);
    for (int i = 0; i < 40; i++) {
        const char *plain = (i % 3 == 0) ? "wrong" : PW;
        const char *hash = (i % 2) ? H2B : H2Y;
        assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_VERIFY, plain, hash, 0,
                                                 count_cb, &c),
                         KS_OK);
    }
    for (int i = 0; i < 4; i++)
        assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_HASH, "Hash-me-1", NULL, 4,
                                                 count_cb, &c),
                         KS_OK);
    calls_arg a = {&c, 44};
    assert_true(poll_until(calls_reach, &a, 60000));
    assert_int_equal(atomic_load(&c.calls), 44);
    assert_int_equal(atomic_load(&c.denied), 14); /* i % 3 == 0 for i in 0..39 */
    assert_int_equal(atomic_load(&c.ok), 26 + 4);
    assert_int_equal(atomic_load(&c.hashes_ok), 4);
    assert_int_equal(atomic_load(&c.other), 0);
    assert_int_equal(metric("histogram", "ks_password_hash_seconds", "op=\"verify\"") - verifies0,
                     40);
    assert_int_equal(metric("histogram", "ks_password_hash_seconds", "op=\"hash\"") - hashes0, 4);
    assert_int_equal(ks_password_pool_queued(p), 0);
    ks_password_pool_destroy(p);
    assert_int_equal(atomic_load(&c.calls), 44); /* nothing called twice */
}

static void test_pool_rejects_when_full(void **state)
{
    (void)state;
    ks_password_pool *p = NULL;
    counts c = {.plain = "Busy-w0rker"};
    double rejected0 = metric("counter", "ks_password_rejected_total", NULL);

    assert_int_equal(ks_password_pool_create(1, 2, &p), KS_OK);
    /* one running (cost 12: hundreds of ms), then two waiting fill the queue */
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_HASH, "Busy-w0rker", NULL, 12,
                                             count_cb, &c),
                     KS_OK);
    queued_arg q = {p, 0};
    assert_true(poll_until(queued_is, &q, 10000));
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_VERIFY, PW, H2B, 0, count_cb, &c),
                     KS_OK);
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_VERIFY, "no", H2B, 0, count_cb, &c),
                     KS_OK);
    assert_int_equal(ks_password_pool_queued(p), 2);
    assert_int_equal(metric("gauge", "ks_password_queue_depth", NULL), 2);
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_VERIFY, PW, H2B, 0, count_cb, &c),
                     KS_ERR_UNAVAILABLE);
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_HASH, PW, NULL, 4, count_cb, &c),
                     KS_ERR_UNAVAILABLE);
    assert_int_equal(ks_password_pool_verify_wait(p, PW, H2B, 1000), KS_ERR_UNAVAILABLE);
    assert_int_equal(metric("counter", "ks_password_rejected_total", NULL) - rejected0, 3);
    unsigned ra = ks_password_pool_retry_after_s(p);
    assert_true(ra >= 1 && ra <= 60);

    calls_arg a = {&c, 3};
    assert_true(poll_until(calls_reach, &a, 60000));
    assert_int_equal(atomic_load(&c.ok), 2);
    assert_int_equal(atomic_load(&c.hashes_ok), 1);
    assert_int_equal(atomic_load(&c.denied), 1);
    /* room again */
    assert_int_equal(ks_password_pool_verify_wait(p, PW, H2B, 30000), KS_OK);
    assert_int_equal(metric("gauge", "ks_password_queue_depth", NULL), 0);
    ks_password_pool_destroy(p);
    assert_int_equal(atomic_load(&c.calls), 3); /* refused submissions never call back */
}

static void test_pool_destroy_with_queued_work(void **state)
{
    (void)state;
    ks_password_pool *p = NULL;
    counts c = {.plain = "Busy-w0rker"};
    double cancelled0 = metric("counter", "ks_password_cancelled_total", NULL);

    assert_int_equal(ks_password_pool_create(1, 8, &p), KS_OK);
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_HASH, "Busy-w0rker", NULL, 12,
                                             count_cb, &c),
                     KS_OK);
    queued_arg q = {p, 0};
    assert_true(poll_until(queued_is, &q, 10000));
    for (int i = 0; i < 5; i++)
        assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_HASH, "Busy-w0rker", NULL, 12,
                                                 count_cb, &c),
                         KS_OK);
    ks_password_pool_destroy(p); /* the running job finishes, five are cancelled */
    assert_int_equal(atomic_load(&c.calls), 6);
    assert_int_equal(atomic_load(&c.ok), 1);
    assert_int_equal(atomic_load(&c.hashes_ok), 1);
    assert_int_equal(atomic_load(&c.closed), 5);
    assert_int_equal(metric("counter", "ks_password_cancelled_total", NULL) - cancelled0, 5);
    assert_int_equal(metric("gauge", "ks_password_queue_depth", NULL), 0);

    /* an idle pool stops at once */
    assert_int_equal(ks_password_pool_create(2, 1, &p), KS_OK);
    ks_password_pool_destroy(p);
    ks_password_pool_destroy(NULL);
}

static void test_pool_wait(void **state)
{
    (void)state;
    ks_password_pool *p = NULL;
    counts c = {.plain = "Busy-w0rker"};
    char *h = NULL;
    double cancelled0 = metric("counter", "ks_password_cancelled_total", NULL);

    assert_int_equal(ks_password_pool_create(1, 4, &p), KS_OK);
    assert_int_equal(ks_password_pool_verify_wait(p, PW, H2A, 30000), KS_OK);
    assert_int_equal(ks_password_pool_verify_wait(p, "nope", H2A, 30000), KS_ERR_DENIED);
    assert_int_equal(ks_password_pool_verify_wait(p, PW, HY, 30000), KS_OK);
    assert_int_equal(ks_password_pool_verify_wait(p, PW, "$2b$31$" BODY53, 30000),
                     KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_verify_wait(p, PW, H2A, 0), KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_hash_wait(p, "New-passw0rd", 4, 30000, &h), KS_OK);
    assert_non_null(h);
    assert_int_equal(ks_password_verify("New-passw0rd", h), KS_OK);
    free(h);
    h = NULL;
    assert_int_equal(ks_password_pool_hash_wait(p, "x", 4, 30000, NULL), KS_ERR_INVALID);

    /* a timeout: the worker is busy; the abandoned job is skipped later */
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_HASH, "Busy-w0rker", NULL, 12,
                                             count_cb, &c),
                     KS_OK);
    queued_arg q = {p, 0};
    assert_true(poll_until(queued_is, &q, 10000));
    assert_int_equal(ks_password_pool_verify_wait(p, PW, H2A, 5), KS_ERR_TIMEOUT);
    assert_int_equal(ks_password_pool_hash_wait(p, PW, 4, 5, &h), KS_ERR_TIMEOUT);
    assert_null(h);
    calls_arg a = {&c, 1};
    assert_true(poll_until(calls_reach, &a, 60000));
    q.n = 0;
    assert_true(poll_until(queued_is, &q, 10000));
    /* the next job runs after the two skipped ones */
    assert_int_equal(ks_password_pool_verify_wait(p, PW, H2A, 30000), KS_OK);
    assert_int_equal(metric("counter", "ks_password_cancelled_total", NULL) - cancelled0, 2);
    ks_password_pool_destroy(p);
}

static void test_pool_bad_submissions(void **state)
{
    (void)state;
    ks_password_pool *p = NULL;
    counts c = {0};
    char big[KS_PASSWORD_PLAIN_MAX + 2];

    assert_int_equal(ks_password_pool_create(0, 4, &p), KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_create(65, 4, &p), KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_create(1, 0, &p), KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_create(1, 4, NULL), KS_ERR_INVALID);
    assert_null(p);
    assert_int_equal(ks_password_pool_create(1, 4, &p), KS_OK);

    assert_int_equal(ks_password_pool_submit(NULL, KS_PASSWORD_OP_HASH, PW, NULL, 4, count_cb, &c),
                     KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_HASH, NULL, NULL, 4, count_cb, &c),
                     KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_HASH, PW, NULL, 4, NULL, &c),
                     KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_submit(p, (ks_password_op)9, PW, NULL, 4, count_cb, &c),
                     KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_HASH, PW, NULL, 2, count_cb, &c),
                     KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_VERIFY, PW, NULL, 0, count_cb, &c),
                     KS_ERR_INVALID);
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_VERIFY, PW, "$1$x$y", 0, count_cb,
                                             &c),
                     KS_ERR_INVALID);
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(ks_password_pool_submit(p, KS_PASSWORD_OP_HASH, big, NULL, 4, count_cb, &c),
                     KS_ERR_TOO_LARGE);
    /* an over-long plain for VERIFY is queued and simply does not match */
    assert_int_equal(ks_password_pool_verify_wait(p, big, H2B, 30000), KS_ERR_DENIED);
    ks_password_pool_destroy(p);
    assert_int_equal(atomic_load(&c.calls), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_hashes),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_hash_arguments),
        cmocka_unit_test(test_malformed_hashes),
        cmocka_unit_test(test_is_hash),
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_pool_callbacks_all_fire),
        cmocka_unit_test(test_pool_rejects_when_full),
        cmocka_unit_test(test_pool_destroy_with_queued_work),
        cmocka_unit_test(test_pool_wait),
        cmocka_unit_test(test_pool_bad_submissions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
