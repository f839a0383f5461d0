#include "uuid.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* Last v7 state handed out: unix_ms << 12 | rand_a counter. One word, so a
 * CAS keeps the sequence strictly increasing across threads without a lock. */
static _Atomic uint64_t v7_last;

static int uuid_random(void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

ks_status ks_uuid_v4_bytes(uint8_t out[16])
{
    uint8_t b[16];

    if (uuid_random(b, sizeof(b)) != 0)
        return KS_FAIL(KS_ERR_INTERNAL, "getrandom failed: %s", strerror(errno));
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* variant 10 */
    memcpy(out, b, 16);
    return KS_OK;
}

ks_status ks_uuid_v7_bytes(uint8_t out[16])
{
    uint8_t r[10]; /* 8 bytes of rand_b, 2 to seed the counter */
    struct timespec ts;
    uint64_t now_ms, old, next, seed;

    if (uuid_random(r, sizeof(r)) != 0)
        return KS_FAIL(KS_ERR_INTERNAL, "getrandom failed: %s", strerror(errno));
    clock_gettime(CLOCK_REALTIME, &ts);
    now_ms = ((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u) & 0xffffffffffffULL;
    /* Seed in the lower half of the 12 bits, leaving at least 2048 increments
     * in the millisecond before the counter carries into the timestamp. */
    seed = ((uint64_t)r[8] << 8 | r[9]) & 0x7ff;

    old = atomic_load(&v7_last);
    do {
        if ((now_ms << 12) > old)
            next = now_ms << 12 | seed;
        else
            next = old + 1; /* same millisecond, or the clock went back */
    } while (!atomic_compare_exchange_weak(&v7_last, &old, next));

    uint64_t ms = next >> 12;
    uint16_t rand_a = (uint16_t)(next & 0xfff);
    out[0] = (uint8_t)(ms >> 40);
    out[1] = (uint8_t)(ms >> 32);
    out[2] = (uint8_t)(ms >> 24);
    out[3] = (uint8_t)(ms >> 16);
    out[4] = (uint8_t)(ms >> 8);
    out[5] = (uint8_t)ms;
    out[6] = (uint8_t)(0x70 | (rand_a >> 8)); /* version 7 */
    out[7] = (uint8_t)rand_a;
    memcpy(out + 8, r, 8);
    out[8] = (uint8_t)((out[8] & 0x3f) | 0x80); /* variant 10 */
    return KS_OK;
}

void ks_uuid_format(const uint8_t in[16], char out[KS_UUID_STR_SIZE])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;

    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[in[i] >> 4];
        out[o++] = hex[in[i] & 0x0f];
    }
    out[o] = '\0';
}

ks_status ks_uuid_v4(char out[KS_UUID_STR_SIZE])
{
    uint8_t b[16];
    ks_status s = ks_uuid_v4_bytes(b);

    if (s == KS_OK)
        ks_uuid_format(b, out);
    return s;
}

ks_status ks_uuid_v7(char out[KS_UUID_STR_SIZE])
{
    uint8_t b[16];
    ks_status s = ks_uuid_v7_bytes(b);

    if (s == KS_OK)
        ks_uuid_format(b, out);
    return s;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

ks_status ks_uuid_parse(const char *text, size_t len, uint8_t out[16])
{
    uint8_t b[16];
    size_t n = 0;

    if (text == NULL || len != 36)
        return KS_FAIL(KS_ERR_INVALID, "uuid: want 36 characters, got %zu", text ? len : 0);
    for (size_t i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (text[i] != '-')
                return KS_FAIL(KS_ERR_INVALID, "uuid: want '-' at offset %zu", i);
            i++;
            continue;
        }
        int hi = hex_value(text[i]), lo = hex_value(text[i + 1]);
        if (hi < 0 || lo < 0)
            return KS_FAIL(KS_ERR_INVALID, "uuid: not a hex digit at offset %zu", hi < 0 ? i : i + 1);
        b[n++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    memcpy(out, b, 16);
    return KS_OK;
}

int ks_uuid_version(const uint8_t in[16])
{
    return in[6] >> 4;
}

int64_t ks_uuid_v7_unix_ms(const uint8_t in[16])
{
    int64_t ms = 0;

    if (ks_uuid_version(in) != 7 || (in[8] & 0xc0) != 0x80)
        return -1;
    for (int i = 0; i < 6; i++)
        ms = ms << 8 | in[i];
    return ms;
}
