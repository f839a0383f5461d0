/* Unit tests of the gateway's audit spool (services/apigw/audit_spool.c), each
 * in its own mkdtemp folder under /tmp:
 *
 *   - CRC-32C against its check value;
 *   - append / read / release in order, rewind, pending counts;
 *   - the position survives close and reopen; a full release cuts spool.log
 *     to 0 bytes;
 *   - crash recovery: garbage, a partial header, a partial payload, a bad
 *     magic or a flipped payload byte at the tail is cut and counted, the
 *     records before it stay, appends go on;
 *   - refusals: the max_bytes cap (file unchanged), empty and over-size
 *     records, an unusable directory (KS_ERR_IO naming the path), a position
 *     past the end or off a record boundary (KS_ERR_PROTOCOL), a second
 *     opener, a record corrupted underneath an open spool;
 *   - failures: a write failing half-way leaves the file as it was, a
 *     position that cannot be written (partial and full release);
 *   - 10,000 records in batches, with releases and a reopen, stay in order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../services/apigw/audit_spool.c"

typedef struct {
    char dir[64];      /* the mkdtemp folder */
    char spool[96];    /* dir/spool: the spool's directory */
} fixture;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));

    if (!f)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/ks-spool-test.XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->spool, sizeof(f->spool), "%s/spool", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    int rc = nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);

    free(f);
    return rc;
}

/* ---- records: record i is 8..300 bytes, starts with i, then a pattern ---- */

static size_t rec_len(uint32_t i)
{
    return 8 + (i * 7919u) % 293u;
}

static void rec_fill(uint32_t i, unsigned char *buf)
{
    size_t len = rec_len(i);

    put_le32(buf, i);
    for (size_t j = 4; j < len; j++)
        buf[j] = (unsigned char)(i * 31u + j);
}

static void rec_check(uint32_t i, const void *data, size_t len)
{
    unsigned char want[512];

    rec_fill(i, want);
    assert_int_equal(len, rec_len(i));
    assert_memory_equal(data, want, len);
}

/* Append records first..first+n-1 as one batch. */
static ks_status append_range(gw_spool *sp, uint32_t first, size_t n)
{
    unsigned char (*bufs)[512] = calloc(n ? n : 1, sizeof(*bufs));
    const void **data = calloc(n ? n : 1, sizeof(*data));
    size_t *lens = calloc(n ? n : 1, sizeof(*lens));
    ks_status st;

    assert_non_null(bufs);
    assert_non_null(data);
    assert_non_null(lens);
    for (size_t k = 0; k < n; k++) {
        rec_fill(first + (uint32_t)k, bufs[k]);
        data[k] = bufs[k];
        lens[k] = rec_len(first + (uint32_t)k);
    }
    st = gw_spool_append(sp, data, lens, n);
    free(bufs);
    free(data);
    free(lens);
    return st;
}

/* Read up to max records and check they are first, first+1, ...; returns how
 * many were read. */
static size_t read_expect(gw_spool *sp, size_t max, uint32_t first)
{
    void *out[128];
    size_t lens[128], n = 99;

    assert_true(max <= 128);
    assert_int_equal(gw_spool_read(sp, max, out, lens, &n), KS_OK);
    assert_true(n <= max);
    for (size_t k = 0; k < n; k++) {
        rec_check(first + (uint32_t)k, out[k], lens[k]);
        free(out[k]);
    }
    return n;
}

static uint64_t bytes_of(uint32_t first, size_t n)
{
    uint64_t b = 0;

    for (size_t k = 0; k < n; k++)
        b += SPOOL_HDR + rec_len(first + (uint32_t)k);
    return b;
}

static const char *file_in(const fixture *f, const char *name)
{
    static char path[160];

    snprintf(path, sizeof(path), "%s/%s", f->spool, name);
    return path;
}

static off_t file_size(const fixture *f, const char *name)
{
    struct stat sb;

    assert_int_equal(stat(file_in(f, name), &sb), 0);
    return sb.st_size;
}

static gw_spool *open_ok(const fixture *f, uint64_t max_bytes, uint64_t want_torn)
{
    gw_spool *sp = NULL;
    uint64_t torn = 12345;

    assert_int_equal(gw_spool_open(f->spool, max_bytes, &torn, &sp), KS_OK);
    assert_non_null(sp);
    assert_int_equal(torn, want_torn);
    return sp;
}

static void write_file(const fixture *f, const char *name, const void *data, size_t len,
                       const char *mode)
{
    FILE *fp = fopen(file_in(f, name), mode);

    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static void write_pos_file(const fixture *f, uint64_t pos)
{
    unsigned char b[8];

    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(pos >> (8 * i));
    write_file(f, SPOOL_POS, b, sizeof(b), "wb");
}

/* ---- tests ---- */

static void test_crc32c(void **state)
{
    (void)state;
    assert_int_equal(crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(crc32c(crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
    assert_int_equal(crc32c(0, "", 0), 0);
}

static void test_round_trip(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0);
    struct stat sb;

    assert_int_equal(stat(f->spool, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0700);
    assert_int_equal(file_size(f, SPOOL_LOG), 0);
    assert_int_equal(gw_spool_pending(sp), 0);
    assert_int_equal(read_expect(sp, 8, 0), 0);

    assert_int_equal(append_range(sp, 0, 3), KS_OK);
    assert_int_equal(append_range(sp, 3, 1), KS_OK);
    assert_int_equal(append_range(sp, 4, 0), KS_OK);   /* nothing: fine */
    assert_int_equal(gw_spool_pending(sp), 4);
    assert_int_equal(gw_spool_pending_bytes(sp), bytes_of(0, 4));
    assert_int_equal(file_size(f, SPOOL_LOG), bytes_of(0, 4));

    assert_int_equal(read_expect(sp, 3, 0), 3);
    assert_int_equal(read_expect(sp, 8, 3), 1);
    assert_int_equal(read_expect(sp, 8, 4), 0);   /* at the end */
    assert_int_equal(gw_spool_pending(sp), 4);     /* reading releases nothing */

    assert_int_equal(gw_spool_release(sp, 2), KS_OK);
    assert_int_equal(gw_spool_pending(sp), 2);
    assert_int_equal(gw_spool_pending_bytes(sp), bytes_of(2, 2));
    assert_int_equal(read_expect(sp, 8, 4), 0);   /* the cursor stays past what was read */
    gw_spool_rewind(sp);
    assert_int_equal(read_expect(sp, 8, 2), 2);

    /* release more than was read: the cursor moves up to the position */
    assert_int_equal(append_range(sp, 4, 3), KS_OK);
    gw_spool_rewind(sp);
    assert_int_equal(read_expect(sp, 1, 2), 1);
    assert_int_equal(gw_spool_release(sp, 3), KS_OK);
    assert_int_equal(read_expect(sp, 8, 5), 2);
    assert_int_equal(gw_spool_release(sp, 3), KS_ERR_INVALID);   /* only 2 pending */
    assert_int_equal(gw_spool_release(sp, 0), KS_OK);
    assert_int_equal(gw_spool_pending(sp), 2);
    gw_spool_close(sp);
    gw_spool_close(NULL);
}

static void test_release_persists(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0);

    assert_int_equal(append_range(sp, 0, 5), KS_OK);
    assert_int_equal(read_expect(sp, 2, 0), 2);
    assert_int_equal(gw_spool_release(sp, 2), KS_OK);
    gw_spool_close(sp);

    sp = open_ok(f, 0, 0);
    assert_int_equal(gw_spool_pending(sp), 3);
    assert_int_equal(gw_spool_pending_bytes(sp), bytes_of(2, 3));
    assert_int_equal(read_expect(sp, 8, 2), 3);
    assert_int_equal(gw_spool_release(sp, 1), KS_OK);
    gw_spool_close(sp);

    /* the read cursor is not durable: a reopen starts at the position */
    sp = open_ok(f, 0, 0);
    assert_int_equal(gw_spool_pending(sp), 2);
    assert_int_equal(read_expect(sp, 8, 3), 2);
    gw_spool_close(sp);
}

static void test_rewind(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0);

    assert_int_equal(append_range(sp, 0, 6), KS_OK);
    assert_int_equal(read_expect(sp, 4, 0), 4);
    gw_spool_rewind(sp);
    assert_int_equal(read_expect(sp, 4, 0), 4);
    gw_spool_rewind(sp);
    assert_int_equal(read_expect(sp, 2, 0), 2);
    assert_int_equal(gw_spool_release(sp, 2), KS_OK);
    assert_int_equal(read_expect(sp, 8, 2), 4);
    gw_spool_rewind(sp);   /* back to the position, not to 0 */
    assert_int_equal(read_expect(sp, 8, 2), 4);
    gw_spool_close(sp);
}

static void test_full_release_truncates(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0);

    assert_int_equal(append_range(sp, 0, 4), KS_OK);
    assert_int_equal(read_expect(sp, 2, 0), 2);
    assert_int_equal(gw_spool_release(sp, 2), KS_OK);
    assert_int_equal(file_size(f, SPOOL_LOG), bytes_of(0, 4));
    assert_int_equal(file_size(f, SPOOL_POS), 8);
    assert_int_equal(gw_spool_release(sp, 2), KS_OK);
    assert_int_equal(file_size(f, SPOOL_LOG), 0);
    assert_int_equal(gw_spool_pending(sp), 0);
    assert_int_equal(gw_spool_pending_bytes(sp), 0);
    assert_int_equal(read_expect(sp, 8, 0), 0);
    gw_spool_close(sp);

    /* the position went back to 0 on disk too: new records are read */
    sp = open_ok(f, 0, 0);
    assert_int_equal(gw_spool_pending(sp), 0);
    assert_int_equal(append_range(sp, 10, 2), KS_OK);
    gw_spool_close(sp);
    sp = open_ok(f, 0, 0);
    assert_int_equal(gw_spool_pending(sp), 2);
    assert_int_equal(read_expect(sp, 8, 10), 2);
    gw_spool_close(sp);
}

/* A crash between cutting spool.log and resetting spool.pos: an empty log
 * with a stale position opens as empty, and the next append resets it. */
static void test_interrupted_truncate(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0);

    assert_int_equal(append_range(sp, 0, 3), KS_OK);
    gw_spool_close(sp);
    write_pos_file(f, bytes_of(0, 2));
    assert_int_equal(truncate(file_in(f, SPOOL_LOG), 0), 0);

    sp = open_ok(f, 0, 0);
    assert_int_equal(gw_spool_pending(sp), 0);
    assert_int_equal(append_range(sp, 7, 1), KS_OK);
    gw_spool_close(sp);
    sp = open_ok(f, 0, 0);
    assert_int_equal(gw_spool_pending(sp), 1);
    assert_int_equal(read_expect(sp, 8, 7), 1);
    gw_spool_close(sp);
}

typedef enum {
    TAIL_GARBAGE,
    TAIL_HALF_HEADER,
    TAIL_HALF_PAYLOAD,
    TAIL_BAD_MAGIC,
    TAIL_BAD_CRC,
} tail_kind;

/* Records 0..2 whole, then the given damage; reopen cuts exactly the damage. */
static void torn_case(const fixture *f, tail_kind kind)
{
    gw_spool *sp = open_ok(f, 0, 0);
    unsigned char buf[512];
    uint64_t whole = bytes_of(0, 3), torn = 0;
    FILE *fp;

    assert_int_equal(append_range(sp, 0, 4), KS_OK);
    assert_int_equal(read_expect(sp, 1, 0), 1);
    assert_int_equal(gw_spool_release(sp, 1), KS_OK);   /* the position is not at 0 */
    gw_spool_close(sp);

    switch (kind) {
    case TAIL_GARBAGE:        /* record 3 whole, then junk */
        whole = bytes_of(0, 4);
        write_file(f, SPOOL_LOG, "garbage", 7, "ab");
        torn = 7;
        break;
    case TAIL_HALF_HEADER:    /* record 3 cut inside its header */
        assert_int_equal(truncate(file_in(f, SPOOL_LOG), (off_t)(whole + 6)), 0);
        torn = 6;
        break;
    case TAIL_HALF_PAYLOAD:   /* record 3 cut inside its payload */
        assert_int_equal(truncate(file_in(f, SPOOL_LOG), (off_t)(whole + SPOOL_HDR + 3)), 0);
        torn = SPOOL_HDR + 3;
        break;
    case TAIL_BAD_MAGIC:
        fp = fopen(file_in(f, SPOOL_LOG), "r+b");
        assert_non_null(fp);
        assert_int_equal(fseek(fp, (long)whole, SEEK_SET), 0);
        assert_int_equal(fputc('X', fp), 'X');
        assert_int_equal(fclose(fp), 0);
        torn = bytes_of(3, 1);
        break;
    case TAIL_BAD_CRC:        /* one payload byte of record 3 flipped */
        fp = fopen(file_in(f, SPOOL_LOG), "r+b");
        assert_non_null(fp);
        assert_int_equal(fseek(fp, (long)(whole + SPOOL_HDR + 5), SEEK_SET), 0);
        assert_int_equal(fread(buf, 1, 1, fp), 1);
        buf[0] ^= 0x40;
        assert_int_equal(fseek(fp, (long)(whole + SPOOL_HDR + 5), SEEK_SET), 0);
        assert_int_equal(fwrite(buf, 1, 1, fp), 1);
        assert_int_equal(fclose(fp), 0);
        torn = bytes_of(3, 1);
        break;
    }

    sp = open_ok(f, 0, torn);
    assert_int_equal(file_size(f, SPOOL_LOG), whole);
    uint64_t left = (kind == TAIL_GARBAGE) ? 3 : 2;   /* records 1.. whole */
    assert_int_equal(gw_spool_pending(sp), left);
    assert_int_equal(read_expect(sp, 8, 1), left);
    assert_int_equal(append_range(sp, 1 + (uint32_t)left, 2), KS_OK);
    assert_int_equal(read_expect(sp, 8, 1 + (uint32_t)left), 2);
    gw_spool_close(sp);

    sp = open_ok(f, 0, 0);   /* nothing torn any more */
    assert_int_equal(gw_spool_pending(sp), left + 2);
    assert_int_equal(read_expect(sp, 8, 1), left + 2);
    gw_spool_close(sp);
}

static void test_torn_garbage(void **state) { torn_case(*state, TAIL_GARBAGE); }
static void test_torn_half_header(void **state) { torn_case(*state, TAIL_HALF_HEADER); }
static void test_torn_half_payload(void **state) { torn_case(*state, TAIL_HALF_PAYLOAD); }
static void test_torn_bad_magic(void **state) { torn_case(*state, TAIL_BAD_MAGIC); }
static void test_torn_bad_crc(void **state) { torn_case(*state, TAIL_BAD_CRC); }

/* Everything torn, and a NULL torn_bytes pointer. */
static void test_torn_everything(void **state)
{
    fixture *f = *state;
    gw_spool *sp = NULL;

    assert_int_equal(mkdir(f->spool, 0700), 0);
    write_file(f, SPOOL_LOG, "KSA1\x05", 5, "wb");
    assert_int_equal(gw_spool_open(f->spool, 0, NULL, &sp), KS_OK);
    assert_int_equal(gw_spool_pending(sp), 0);
    assert_int_equal(file_size(f, SPOOL_LOG), 0);
    assert_int_equal(append_range(sp, 0, 1), KS_OK);
    assert_int_equal(read_expect(sp, 8, 0), 1);
    gw_spool_close(sp);
}

static void test_max_bytes(void **state)
{
    fixture *f = *state;
    uint64_t cap = bytes_of(0, 2) + bytes_of(2, 1) - 1;   /* room for 2 records, not 3 */
    gw_spool *sp = open_ok(f, cap, 0);
    unsigned char big[64] = {0};
    const void *d[1] = {big};
    size_t l[1] = {sizeof(big)};

    assert_int_equal(append_range(sp, 0, 1), KS_OK);
    assert_int_equal(append_range(sp, 1, 2), KS_ERR_TOO_LARGE);   /* one would fit, not both */
    assert_int_equal(file_size(f, SPOOL_LOG), bytes_of(0, 1));
    assert_int_equal(gw_spool_pending(sp), 1);
    assert_int_equal(append_range(sp, 1, 1), KS_OK);
    assert_int_equal(append_range(sp, 2, 1), KS_ERR_TOO_LARGE);
    assert_int_equal(file_size(f, SPOOL_LOG), bytes_of(0, 2));

    /* released bytes still count until everything is released */
    assert_int_equal(read_expect(sp, 1, 0), 1);
    assert_int_equal(gw_spool_release(sp, 1), KS_OK);
    assert_int_equal(append_range(sp, 2, 1), KS_ERR_TOO_LARGE);
    assert_int_equal(gw_spool_release(sp, 1), KS_OK);
    assert_int_equal(file_size(f, SPOOL_LOG), 0);
    assert_int_equal(append_range(sp, 2, 2), KS_OK);
    gw_spool_close(sp);

    /* a cap below what is already there: open works, appends are refused */
    sp = open_ok(f, 10, 0);
    assert_int_equal(gw_spool_pending(sp), 2);
    assert_int_equal(gw_spool_append(sp, d, l, 1), KS_ERR_TOO_LARGE);
    assert_int_equal(read_expect(sp, 8, 2), 2);
    gw_spool_close(sp);
}

static void test_record_sizes(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0);
    unsigned char *big = malloc(GW_SPOOL_MAX_RECORD + 1);
    unsigned char small[3] = {1, 2, 3};
    const void *d[2] = {small, big};
    size_t l[2] = {sizeof(small), GW_SPOOL_MAX_RECORD + 1};
    void *out[2];
    size_t lens[2], n = 0;

    assert_non_null(big);
    for (size_t i = 0; i < GW_SPOOL_MAX_RECORD + 1; i++)
        big[i] = (unsigned char)(i * 13u);

    /* an over-size record refuses the whole batch */
    assert_int_equal(gw_spool_append(sp, d, l, 2), KS_ERR_INVALID);
    assert_non_null(strstr(ks_status_last(), "record 1"));
    assert_int_equal(file_size(f, SPOOL_LOG), 0);
    /* so does an empty one */
    l[1] = 0;
    assert_int_equal(gw_spool_append(sp, d, l, 2), KS_ERR_INVALID);
    d[1] = NULL;
    l[1] = 4;
    assert_int_equal(gw_spool_append(sp, d, l, 2), KS_ERR_INVALID);
    assert_int_equal(gw_spool_append(sp, NULL, NULL, 1), KS_ERR_INVALID);
    assert_int_equal(file_size(f, SPOOL_LOG), 0);
    assert_int_equal(gw_spool_pending(sp), 0);

    /* exactly the maximum is fine and comes back whole */
    d[1] = big;
    l[1] = GW_SPOOL_MAX_RECORD;
    assert_int_equal(gw_spool_append(sp, d, l, 2), KS_OK);
    gw_spool_close(sp);
    sp = open_ok(f, 0, 0);
    assert_int_equal(gw_spool_read(sp, 2, out, lens, &n), KS_OK);
    assert_int_equal(n, 2);
    assert_int_equal(lens[0], 3);
    assert_memory_equal(out[0], small, 3);
    assert_int_equal(lens[1], GW_SPOOL_MAX_RECORD);
    assert_memory_equal(out[1], big, GW_SPOOL_MAX_RECORD);
    free(out[0]);
    free(out[1]);
    gw_spool_close(sp);
    free(big);
}

static void test_unusable_dir(void **state)
{
    fixture *f = *state;
    char file[96], under[128];
    gw_spool *sp = NULL;

    snprintf(file, sizeof(file), "%s/plain", f->dir);
    snprintf(under, sizeof(under), "%s/spool", file);
    FILE *fp = fopen(file, "w");
    assert_non_null(fp);
    assert_int_equal(fclose(fp), 0);

    assert_int_equal(gw_spool_open(under, 0, NULL, &sp), KS_ERR_IO);
    assert_null(sp);
    assert_non_null(strstr(ks_status_last(), under));
    assert_int_equal(gw_spool_open(file, 0, NULL, &sp), KS_ERR_IO);   /* not a directory */
    assert_null(sp);
    assert_non_null(strstr(ks_status_last(), file));
    assert_int_equal(gw_spool_open("", 0, NULL, &sp), KS_ERR_INVALID);
    assert_null(sp);

    /* a parent that does not exist: only the spool's own folder is created */
    snprintf(under, sizeof(under), "%s/no/spool", f->dir);
    assert_int_equal(gw_spool_open(under, 0, NULL, &sp), KS_ERR_IO);
    assert_non_null(strstr(ks_status_last(), under));
    assert_null(sp);
}

static void test_bad_position(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0);
    uint64_t size = bytes_of(0, 3);

    assert_int_equal(append_range(sp, 0, 3), KS_OK);
    gw_spool_close(sp);
    sp = NULL;

    write_pos_file(f, size + SPOOL_HDR);   /* past the end */
    assert_int_equal(gw_spool_open(f->spool, 0, NULL, &sp), KS_ERR_PROTOCOL);
    assert_null(sp);
    assert_int_equal(file_size(f, SPOOL_LOG), size);   /* nothing cut */

    write_pos_file(f, SPOOL_HDR + 1);      /* inside record 0 */
    assert_int_equal(gw_spool_open(f->spool, 0, NULL, &sp), KS_ERR_PROTOCOL);
    assert_null(sp);

    write_file(f, SPOOL_POS, "\1\0\0", 3, "wb");   /* not 8 bytes */
    assert_int_equal(gw_spool_open(f->spool, 0, NULL, &sp), KS_ERR_PROTOCOL);
    assert_null(sp);

    /* the position at the end of the whole records, junk after them: the junk
     * is cut, and as everything is released the log goes to 0 */
    write_pos_file(f, size);
    write_file(f, SPOOL_LOG, "junk", 4, "ab");
    sp = open_ok(f, 0, 4);
    assert_int_equal(gw_spool_pending(sp), 0);
    assert_int_equal(file_size(f, SPOOL_LOG), 0);
    gw_spool_close(sp);

    /* a position past the last whole record once a torn tail would be cut:
     * refused before anything is cut */
    sp = open_ok(f, 0, 0);
    assert_int_equal(append_range(sp, 0, 2), KS_OK);
    gw_spool_close(sp);
    write_pos_file(f, bytes_of(0, 2));
    assert_int_equal(truncate(file_in(f, SPOOL_LOG), (off_t)bytes_of(0, 1) + 1), 0);
    sp = NULL;
    assert_int_equal(gw_spool_open(f->spool, 0, NULL, &sp), KS_ERR_PROTOCOL);
    assert_int_equal(file_size(f, SPOOL_LOG), bytes_of(0, 1) + 1);
}

static void test_one_owner(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0), *sp2 = NULL;

    assert_int_equal(gw_spool_open(f->spool, 0, NULL, &sp2), KS_ERR_CONFLICT);
    assert_null(sp2);
    gw_spool_close(sp);
    sp2 = open_ok(f, 0, 0);
    gw_spool_close(sp2);
}

/* The file changed underneath an open spool: read refuses, gives nothing,
 * and leaves the cursor where it was. */
static void test_corrupt_underneath(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0);
    void *out[8] = {NULL};
    size_t lens[8], n = 77;
    FILE *fp;

    assert_int_equal(append_range(sp, 0, 3), KS_OK);
    fp = fopen(file_in(f, SPOOL_LOG), "r+b");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, (long)(bytes_of(0, 1) + SPOOL_HDR), SEEK_SET), 0);
    assert_int_equal(fputc(0xff ^ 1, fp), 0xff ^ 1);   /* record 1 starts with 1 */
    assert_int_equal(fclose(fp), 0);

    assert_int_equal(gw_spool_read(sp, 8, out, lens, &n), KS_ERR_PROTOCOL);
    assert_int_equal(n, 77);
    assert_null(out[0]);
    assert_null(out[1]);
    assert_int_equal(read_expect(sp, 1, 0), 1);   /* the cursor did not move */
    gw_spool_close(sp);
}

/* A write that fails half-way (the file size limit, EFBIG) cuts the file
 * back: nothing of the batch stays, and the next append works. */
static void test_append_fails_halfway(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0);
    struct rlimit old, lim;
    uint64_t before;

    assert_int_equal(append_range(sp, 0, 2), KS_OK);
    before = bytes_of(0, 2);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)(before + bytes_of(2, 1) + 5);   /* record 2 fits, 3 does not */
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    assert_int_equal(append_range(sp, 2, 3), KS_ERR_IO);
    assert_non_null(strstr(ks_status_last(), "spool.log"));
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);

    assert_int_equal(file_size(f, SPOOL_LOG), before);
    assert_int_equal(gw_spool_pending(sp), 2);
    assert_int_equal(append_range(sp, 2, 3), KS_OK);
    assert_int_equal(read_expect(sp, 8, 0), 5);
    gw_spool_close(sp);
    sp = open_ok(f, 0, 0);
    assert_int_equal(read_expect(sp, 8, 0), 5);
    gw_spool_close(sp);
}

/* spool.pos cannot be written (a directory sits where its temporary file
 * goes): a partial release fails and changes nothing; a full release still
 * happens (the log is cut), and the next append resets the position first. */
static void test_position_write_fails(void **state)
{
    fixture *f = *state;
    gw_spool *sp = open_ok(f, 0, 0);

    assert_int_equal(append_range(sp, 0, 4), KS_OK);
    assert_int_equal(gw_spool_release(sp, 1), KS_OK);
    assert_int_equal(mkdir(file_in(f, SPOOL_POS_TMP), 0700), 0);

    assert_int_equal(gw_spool_release(sp, 1), KS_ERR_IO);
    assert_non_null(strstr(ks_status_last(), SPOOL_POS_TMP));
    assert_int_equal(gw_spool_pending(sp), 3);
    assert_int_equal(read_expect(sp, 8, 1), 3);

    assert_int_equal(gw_spool_release(sp, 3), KS_OK);   /* cut, position stale on disk */
    assert_int_equal(file_size(f, SPOOL_LOG), 0);
    assert_int_equal(gw_spool_pending(sp), 0);
    assert_int_equal(append_range(sp, 10, 1), KS_ERR_IO);   /* must reset the position first */
    assert_int_equal(file_size(f, SPOOL_LOG), 0);
    gw_spool_close(sp);

    sp = open_ok(f, 0, 0);   /* an empty log with a stale position */
    assert_int_equal(gw_spool_pending(sp), 0);
    assert_int_equal(rmdir(file_in(f, SPOOL_POS_TMP)), 0);
    assert_int_equal(append_range(sp, 10, 1), KS_OK);
    gw_spool_close(sp);
    sp = open_ok(f, 0, 0);
    assert_int_equal(gw_spool_pending(sp), 1);
    assert_int_equal(read_expect(sp, 8, 10), 1);
    gw_spool_close(sp);
}

static void test_many_records(void **state)
{
    fixture *f = *state;
    enum { TOTAL = 10000 };
    gw_spool *sp = open_ok(f, 0, 0);
    uint32_t appended = 0, next = 0, released = 0, round = 0;
    int reopened = 0;

    for (; released < TOTAL; round++) {
        size_t batch = 1 + (appended * 7u) % 61u;

        if (appended < TOTAL) {
            if (batch > TOTAL - appended)
                batch = TOTAL - appended;
            assert_int_equal(append_range(sp, appended, batch), KS_OK);
            appended += (uint32_t)batch;
        }
        /* drain a little slower than appending, so the backlog grows */
        size_t got = read_expect(sp, 1 + (next * 5u) % 40u, next);
        next += (uint32_t)got;
        if (round % 7 == 3) {   /* a failed drain: read the same records again */
            gw_spool_rewind(sp);
            next = released;
            continue;
        }
        assert_int_equal(gw_spool_release(sp, next - released), KS_OK);
        released = next;
        assert_int_equal(gw_spool_pending(sp), appended - released);
        assert_int_equal(gw_spool_pending_bytes(sp), bytes_of(released, appended - released));
        if (!reopened && appended >= TOTAL / 2) {
            gw_spool_close(sp);
            sp = open_ok(f, 0, 0);
            assert_int_equal(gw_spool_pending(sp), appended - released);
            reopened = 1;
        }
    }
    assert_int_equal(appended, TOTAL);
    assert_int_equal(gw_spool_pending(sp), 0);
    assert_int_equal(file_size(f, SPOOL_LOG), 0);
    gw_spool_close(sp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_persists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rewind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_release_truncates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interrupted_truncate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_half_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_half_payload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_bad_magic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_bad_crc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_everything, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_record_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unusable_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_position, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_underneath, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_fails_halfway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_position_write_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_records, setup, teardown),
    };

    ks_log_set_fd(open("/dev/null", O_WRONLY | O_CLOEXEC));   /* the expected warnings */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
