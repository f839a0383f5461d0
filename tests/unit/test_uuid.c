/* Unit tests: lib/uuid.c (RFC 9562 version 4 and 7 UUIDs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "uuid.h"

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cmp16(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

/* canonical lower-case 8-4-4-4-12 */
static void assert_canonical(const char *s)
{
    assert_int_equal(strlen(s), 36);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(s[i], '-');
        else
            assert_non_null(strchr("0123456789abcdef", s[i]));
    }
}

static void test_format_parse(void **state)
{
    (void)state;
    uint8_t b[16], back[16];
    char s[KS_UUID_STR_SIZE];

    for (int i = 0; i < 16; i++)
        b[i] = (uint8_t)(i * 17);
    ks_uuid_format(b, s);
    assert_string_equal(s, "00112233-4455-6677-8899-aabbccddeeff");
    assert_int_equal(ks_uuid_parse(s, 36, back), KS_OK);
    assert_memory_equal(b, back, 16);
    assert_int_equal(ks_uuid_parse("00112233-4455-6677-8899-AABBCCDDEEFF", 36, back), KS_OK);
    assert_memory_equal(b, back, 16);

    static const char *const bad[] = {
        "00112233-4455-6677-8899-aabbccddeef",
        "00112233-4455-6677-8899-aabbccddeeff0",
        "001122334-455-6677-8899-aabbccddeeff",
        "00112233_4455-6677-8899-aabbccddeeff",
        "00112233-4455-6677-8899-aabbccddeefg",
        "{0112233-4455-6677-8899-aabbccddeef}",
        "00112233445566778899aabbccddeeff",
        "urn:uuid:00112233-4455-6677-8899-aabbccddeeff",
        " 0112233-4455-6677-8899-aabbccddeeff",
        "",
    };
    memset(back, 0x5a, sizeof(back));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (ks_uuid_parse(bad[i], strlen(bad[i]), back) != KS_ERR_INVALID)
            fail_msg("parsed %s", bad[i]);
    for (int i = 0; i < 16; i++)
        assert_int_equal(back[i], 0x5a); /* untouched */
    assert_int_equal(ks_uuid_parse(NULL, 36, back), KS_ERR_INVALID);
}

static void test_rfc9562_examples(void **state)
{
    (void)state;
    uint8_t b[16];

    /* Appendix A.6: UUIDv7 for Tuesday, February 22, 2022 2:22:22.00 PM GMT-05:00 */
    assert_int_equal(ks_uuid_parse("017F22E2-79B0-7CC3-98C4-DC0C0C07398F", 36, b), KS_OK);
    assert_int_equal(ks_uuid_version(b), 7);
    assert_int_equal(ks_uuid_v7_unix_ms(b), 1645557742000LL);
    /* Appendix A.3: UUIDv4 */
    assert_int_equal(ks_uuid_parse("919108f7-52d1-4320-9bac-f847db4148a8", 36, b), KS_OK);
    assert_int_equal(ks_uuid_version(b), 4);
    assert_int_equal(ks_uuid_v7_unix_ms(b), -1);
}

static void test_v4(void **state)
{
    (void)state;
    enum { N = 20000 };
    uint8_t (*all)[16] = calloc(N, 16);
    char s[KS_UUID_STR_SIZE];
    int ones[128] = {0};

    for (int i = 0; i < N; i++) {
        assert_int_equal(ks_uuid_v4_bytes(all[i]), KS_OK);
        assert_int_equal(all[i][6] >> 4, 4);
        assert_int_equal(all[i][8] & 0xc0, 0x80);
        for (int bit = 0; bit < 128; bit++)
            ones[bit] += (all[i][bit / 8] >> (7 - bit % 8)) & 1;
    }
    qsort(all, N, 16, cmp16);
    for (int i = 1; i < N; i++)
        assert_true(memcmp(all[i - 1], all[i], 16) != 0);
    /* the 122 random bits look random: each set about half the time */
    for (int bit = 0; bit < 128; bit++) {
        if ((bit >= 48 && bit < 52) || bit == 64 || bit == 65)
            continue; /* version and variant */
        assert_true(ones[bit] > N * 45 / 100 && ones[bit] < N * 55 / 100);
    }
    assert_int_equal(ks_uuid_v4(s), KS_OK);
    assert_canonical(s);
    assert_int_equal(s[14], '4');
    assert_non_null(strchr("89ab", s[19]));
    free(all);
}

static void test_v7_time_and_order(void **state)
{
    (void)state;
    enum { N = 100000 };
    uint8_t (*all)[16] = calloc(N, 16);
    char prev[KS_UUID_STR_SIZE] = "", s[KS_UUID_STR_SIZE];
    int64_t t0 = wall_ms();

    for (int i = 0; i < N; i++) {
        assert_int_equal(ks_uuid_v7_bytes(all[i]), KS_OK);
        assert_int_equal(ks_uuid_version(all[i]), 7);
        assert_int_equal(all[i][8] & 0xc0, 0x80);
        if (i > 0 && memcmp(all[i - 1], all[i], 16) >= 0)
            fail_msg("v7 not increasing at %d", i);
    }
    int64_t t1 = wall_ms();
    int64_t first = ks_uuid_v7_unix_ms(all[0]), last = ks_uuid_v7_unix_ms(all[N - 1]);
    /* 100k in a few ms at most borrow a few ms from the future (4096 per ms) */
    assert_true(first >= t0 - 1 && first <= t1);
    assert_true(last >= first && last <= t1 + N / 2048 + 1);

    /* text sorts like bytes */
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(ks_uuid_v7(s), KS_OK);
        assert_canonical(s);
        assert_int_equal(s[14], '7');
        assert_true(strcmp(prev, s) < 0);
        memcpy(prev, s, sizeof(s));
    }
    free(all);
}

typedef struct {
    uint8_t (*ids)[16];
    int n;
    int ok;
} thr;

static void *gen(void *p)
{
    thr *t = p;
    t->ok = 1;
    for (int i = 0; i < t->n; i++) {
        if (ks_uuid_v7_bytes(t->ids[i]) != KS_OK)
            t->ok = 0;
        if (i > 0 && memcmp(t->ids[i - 1], t->ids[i], 16) >= 0)
            t->ok = 0;
    }
    return NULL;
}

static void test_v7_threads(void **state)
{
    (void)state;
    enum { T = 4, N = 25000 };
    uint8_t (*all)[16] = calloc((size_t)T * N, 16);
    pthread_t th[T];
    thr a[T];

    for (int i = 0; i < T; i++) {
        a[i] = (thr){.ids = all + (size_t)i * N, .n = N};
        assert_int_equal(pthread_create(&th[i], NULL, gen, &a[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_true(a[i].ok);
    }
    qsort(all, (size_t)T * N, 16, cmp16);
    for (size_t i = 1; i < (size_t)T * N; i++)
        assert_true(memcmp(all[i - 1], all[i], 16) != 0);
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_parse),
        cmocka_unit_test(test_rfc9562_examples),
        cmocka_unit_test(test_v4),
        cmocka_unit_test(test_v7_time_and_order),
        cmocka_unit_test(test_v7_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
