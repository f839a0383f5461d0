/* audit_spool.c: the gateway's append-only audit spool on disk (audit_spool.h).
 *
 * Crash safety rests on three orderings:
 *  - an append returns only after fdatasync, so spool.pos never points past
 *    data a crash could take away, and a torn write is always at the tail;
 *  - spool.pos is replaced by rename, so after a crash it holds the old or
 *    the new position, never a mix;
 *  - when everything is released, spool.log is cut to 0 and synced before
 *    spool.pos is reset. A crash in between leaves an empty log and a stale
 *    position, which open recognizes (an empty log has nothing to lose) and
 *    resets. The other order could replay released records after a crash.
 * The file is written with pwrite at offsets we track, not O_APPEND, so an
 * append that failed half-way is cut back with ftruncate. */
#include "audit_spool.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define SPOOL_LOG "spool.log"
#define SPOOL_POS "spool.pos"
#define SPOOL_POS_TMP "spool.pos.tmp"
#define SPOOL_MAGIC "KSA1"
#define SPOOL_HDR 12u
#define SPOOL_CHUNK (64u * 1024u)         /* read size of the scan at open */
#define SPOOL_DISK_POS_UNKNOWN UINT64_MAX

struct gw_spool {
    char *dir;
    int dirfd, fd;
    uint64_t max_bytes;    /* 0: no cap */
    uint64_t end;          /* spool.log up to here holds whole records */
    uint64_t pos;          /* first record not released */
    uint64_t disk_pos;     /* what spool.pos holds, as far as we know */
    uint64_t cursor;       /* next record gw_spool_read returns */
    uint64_t pending;      /* records in [pos, end) */
    int tail_dirty;        /* a failed append could not be cut back to end */
};

/* ---- CRC-32C (Castagnoli, reflected 0x82F63B78), table-driven ---- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

/* Chains like zlib's crc32(): crc32c(crc32c(0, a), b) == crc32c(0, a||b). */
static uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;

    pthread_once(&crc_once, crc_table_init);
    crc = ~crc;
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- little helpers ---- */

static void put_le32(unsigned char *b, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_le32(const unsigned char *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static ks_status sys_fail(const gw_spool *sp, const char *file, const char *what)
{
    int e = errno;
    return KS_FAIL(KS_ERR_IO, "audit spool %s/%s: %s: %s", sp->dir, file, what, strerror(e));
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return -1;
        }
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Exactly len bytes of spool.log at off: KS_ERR_IO on a read error,
 * KS_ERR_PROTOCOL when the file ends first (it changed underneath). */
static ks_status read_at(const gw_spool *sp, void *buf, size_t len, uint64_t off)
{
    char *p = buf;

    while (len > 0) {
        ssize_t r = pread(sp->fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return sys_fail(sp, SPOOL_LOG, "read");
        if (r == 0)
            return KS_FAIL(KS_ERR_PROTOCOL, "audit spool %s/%s: ends at %llu, expected more",
                           sp->dir, SPOOL_LOG, (unsigned long long)off);
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return KS_OK;
}

/* The payload length of the record header h at off, 0 if h is not a
 * plausible header of a record ending by limit. */
static uint32_t header_len(const unsigned char *h, uint64_t off, uint64_t limit)
{
    uint32_t len = get_le32(h + 4);

    if (memcmp(h, SPOOL_MAGIC, 4) != 0 || len == 0 || len > GW_SPOOL_MAX_RECORD ||
        off + SPOOL_HDR > limit || len > limit - off - SPOOL_HDR)
        return 0;
    return len;
}

/* ---- the position file ---- */

static ks_status write_pos(gw_spool *sp, uint64_t pos)
{
    unsigned char b[8];
    ks_status st = KS_OK;
    int fd;

    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(pos >> (8 * i));
    fd = openat(sp->dirfd, SPOOL_POS_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return sys_fail(sp, SPOOL_POS_TMP, "open");
    if (pwrite_all(fd, b, sizeof(b), 0) != 0 || fsync(fd) != 0) {
        st = sys_fail(sp, SPOOL_POS_TMP, "write");
        close(fd);
        unlinkat(sp->dirfd, SPOOL_POS_TMP, 0);
        return st;
    }
    if (close(fd) != 0) {
        st = sys_fail(sp, SPOOL_POS_TMP, "close");
        unlinkat(sp->dirfd, SPOOL_POS_TMP, 0);
        return st;
    }
    if (renameat(sp->dirfd, SPOOL_POS_TMP, sp->dirfd, SPOOL_POS) != 0) {
        st = sys_fail(sp, SPOOL_POS, "rename");
        unlinkat(sp->dirfd, SPOOL_POS_TMP, 0);
        return st;
    }
    /* Renamed but maybe not durable: either value may be on disk now. */
    sp->disk_pos = SPOOL_DISK_POS_UNKNOWN;
    if (fsync(sp->dirfd) != 0)
        return sys_fail(sp, ".", "fsync");
    sp->disk_pos = pos;
    return KS_OK;
}

/* spool.pos into sp->pos (0 when there is none yet). */
static ks_status read_pos(gw_spool *sp)
{
    unsigned char b[9];
    ssize_t r;
    int fd = openat(sp->dirfd, SPOOL_POS, O_RDONLY | O_CLOEXEC);

    sp->pos = 0;
    if (fd < 0)
        return errno == ENOENT ? KS_OK : sys_fail(sp, SPOOL_POS, "open");
    do
        r = pread(fd, b, sizeof(b), 0);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        ks_status st = sys_fail(sp, SPOOL_POS, "read");
        close(fd);
        return st;
    }
    close(fd);
    if (r != 8)
        return KS_FAIL(KS_ERR_PROTOCOL, "audit spool %s/%s: %zd bytes, expected 8", sp->dir,
                       SPOOL_POS, r);
    for (int i = 7; i >= 0; i--)
        sp->pos = sp->pos << 8 | b[i];
    return KS_OK;
}

/* ---- state changes ---- */

/* Everything is released: cut spool.log to 0, then reset the position. Once
 * the cut is made the release has happened; a failure after it is only
 * logged and repaired by the next append (settle). */
static ks_status reset_empty(gw_spool *sp)
{
    if (ftruncate(sp->fd, 0) != 0)
        return sys_fail(sp, SPOOL_LOG, "truncate");
    sp->end = sp->pos = sp->cursor = sp->pending = 0;
    sp->tail_dirty = 0;
    if (fdatasync(sp->fd) != 0) {
        ks_warn("audit spool %s/%s: sync after truncate: %s; retried before the next append",
                sp->dir, SPOOL_LOG, strerror(errno));
        sp->disk_pos = SPOOL_DISK_POS_UNKNOWN;
    } else if (sp->disk_pos != 0 && write_pos(sp, 0) != KS_OK) {
        ks_warn("%s; retried before the next append", ks_status_last());
    }
    return KS_OK;
}

/* Repair what a failed call left behind before anything new is written. */
static ks_status settle(gw_spool *sp)
{
    if (sp->tail_dirty) {
        if (ftruncate(sp->fd, (off_t)sp->end) != 0)
            return sys_fail(sp, SPOOL_LOG, "truncate");
        sp->tail_dirty = 0;
    }
    if (sp->disk_pos != sp->pos) {
        /* the log must be durable before a position that relies on it */
        if (fdatasync(sp->fd) != 0)
            return sys_fail(sp, SPOOL_LOG, "fdatasync");
        return write_pos(sp, sp->pos);
    }
    return KS_OK;
}

/* ---- open and close ---- */

/* Create dir (not its parents) and make its entry durable. */
static ks_status make_dir(const char *dir)
{
    char *parent, *slash;
    const char *pdir = ".";
    int fd, rc;

    if (mkdir(dir, 0700) != 0) {
        if (errno == EEXIST)
            return KS_OK;   /* a file of that name fails at open(O_DIRECTORY) */
        return KS_FAIL(KS_ERR_IO, "audit spool %s: mkdir: %s", dir, strerror(errno));
    }
    parent = strdup(dir);
    if (!parent)
        return KS_FAIL(KS_ERR_NOMEM, "audit spool %s: out of memory", dir);
    for (size_t n = strlen(parent); n > 1 && parent[n - 1] == '/'; n--)
        parent[n - 1] = '\0';
    slash = strrchr(parent, '/');
    if (slash) {
        slash[slash == parent] = '\0';   /* "/x" -> "/", "a/b" -> "a" */
        pdir = parent;
    }
    fd = open(pdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    rc = fd < 0 ? -1 : fsync(fd);
    if (rc != 0) {
        ks_status st = KS_FAIL(KS_ERR_IO, "audit spool %s: sync %s: %s", dir, pdir,
                               strerror(errno));
        if (fd >= 0)
            close(fd);
        free(parent);
        return st;
    }
    close(fd);
    free(parent);
    return KS_OK;
}

/* Check every record from the start: *valid_end is the end of the last
 * whole record, *pos_ok whether sp->pos is a record boundary, *count the
 * records from sp->pos on. */
static ks_status scan(const gw_spool *sp, uint64_t size, uint64_t *valid_end, int *pos_ok,
                      uint64_t *count)
{
    unsigned char *buf = malloc(SPOOL_CHUNK);
    uint64_t off = 0, n = 0;
    int ok = sp->pos == 0;
    ks_status st = KS_OK;

    if (!buf)
        return KS_FAIL(KS_ERR_NOMEM, "audit spool %s: out of memory", sp->dir);
    while (size - off >= SPOOL_HDR) {
        unsigned char h[SPOOL_HDR];
        uint32_t len, crc = 0;

        if ((st = read_at(sp, h, SPOOL_HDR, off)))
            goto out;
        if ((len = header_len(h, off, size)) == 0)
            break;
        for (uint32_t done = 0, c; done < len; done += c) {
            c = len - done < SPOOL_CHUNK ? len - done : SPOOL_CHUNK;
            if ((st = read_at(sp, buf, c, off + SPOOL_HDR + done)))
                goto out;
            crc = crc32c(crc, buf, c);
        }
        if (crc != get_le32(h + 8))
            break;
        if (off >= sp->pos)
            n++;
        off += SPOOL_HDR + len;
        ok |= off == sp->pos;
    }
    *valid_end = off;
    *pos_ok = ok;
    *count = n;
out:
    free(buf);
    return st;
}

ks_status gw_spool_open(const char *dir, uint64_t max_bytes, uint64_t *torn_bytes,
                        gw_spool **out)
{
    gw_spool *sp = NULL;
    struct stat stb;
    uint64_t size, valid_end = 0, count = 0, torn = 0;
    int pos_ok = 0;
    ks_status st;

    if (!dir || !*dir || !out)
        return KS_FAIL(KS_ERR_INVALID, "audit spool: no directory");
    sp = calloc(1, sizeof(*sp));
    if (!sp || !(sp->dir = strdup(dir))) {
        free(sp);
        return KS_FAIL(KS_ERR_NOMEM, "audit spool %s: out of memory", dir);
    }
    sp->dirfd = sp->fd = -1;
    sp->max_bytes = max_bytes;
    if ((st = make_dir(dir)))
        goto out;
    sp->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->dirfd < 0) {
        st = KS_FAIL(KS_ERR_IO, "audit spool %s: open: %s", dir, strerror(errno));
        goto out;
    }
    sp->fd = openat(sp->dirfd, SPOOL_LOG, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (sp->fd < 0) {
        st = sys_fail(sp, SPOOL_LOG, "open");
        goto out;
    }
    if (flock(sp->fd, LOCK_EX | LOCK_NB) != 0) {
        /* checked before recovery: another owner's append in flight is no torn tail */
        if (errno == EWOULDBLOCK)
            st = KS_FAIL(KS_ERR_CONFLICT, "audit spool %s: in use by another process or handle",
                         dir);
        else
            st = sys_fail(sp, SPOOL_LOG, "lock");
        goto out;
    }
    /* a spool.log created just now must still be there after a crash */
    if (fsync(sp->dirfd) != 0) {
        st = sys_fail(sp, ".", "fsync");
        goto out;
    }
    if ((st = read_pos(sp)))
        goto out;
    sp->disk_pos = sp->pos;
    if (fstat(sp->fd, &stb) != 0) {
        st = sys_fail(sp, SPOOL_LOG, "stat");
        goto out;
    }
    size = (uint64_t)stb.st_size;
    if (size == 0 && sp->pos != 0) {
        /* a full release cut the log, then stopped before resetting spool.pos */
        ks_warn("audit spool %s: empty log with position %llu: resetting the position", dir,
                (unsigned long long)sp->pos);
        sp->pos = 0;   /* settle() writes it before the next append */
    } else if (size > 0) {
        if ((st = scan(sp, size, &valid_end, &pos_ok, &count)))
            goto out;
        if (!pos_ok) {
            st = KS_FAIL(KS_ERR_PROTOCOL,
                         "audit spool %s: position %llu is not a record boundary (whole "
                         "records end at %llu, file size %llu)",
                         dir, (unsigned long long)sp->pos, (unsigned long long)valid_end,
                         (unsigned long long)size);
            goto out;
        }
        if (valid_end < size) {
            if (ftruncate(sp->fd, (off_t)valid_end) != 0 || fdatasync(sp->fd) != 0) {
                st = sys_fail(sp, SPOOL_LOG, "cut torn tail");
                goto out;
            }
            torn = size - valid_end;
            ks_warn("audit spool %s: cut %llu bytes of a torn or corrupt tail at %llu", dir,
                    (unsigned long long)torn, (unsigned long long)valid_end);
        }
        sp->end = valid_end;
        sp->pending = count;
    }
    sp->cursor = sp->pos;
    if (sp->end > 0 && sp->pending == 0 && (st = reset_empty(sp)))
        goto out;
    if (torn_bytes)
        *torn_bytes = torn;
    *out = sp;
    sp = NULL;
out:
    gw_spool_close(sp);
    return st;
}

void gw_spool_close(gw_spool *sp)
{
    if (!sp)
        return;
    if (sp->fd >= 0)
        close(sp->fd);   /* drops the flock too */
    if (sp->dirfd >= 0)
        close(sp->dirfd);
    free(sp->dir);
    free(sp);
}

/* ---- append, read, release ---- */

ks_status gw_spool_append(gw_spool *sp, const void *const *data, const size_t *len, size_t n)
{
    uint64_t total = 0, off;
    ks_status st;

    if (!sp || (n > 0 && (!data || !len)))
        return KS_FAIL(KS_ERR_INVALID, "audit spool append: no spool or no records");
    for (size_t i = 0; i < n; i++) {
        if (!data[i] || len[i] == 0 || len[i] > GW_SPOOL_MAX_RECORD)
            return KS_FAIL(KS_ERR_INVALID,
                           "audit spool %s append: record %zu has %zu bytes (1 to %u allowed)",
                           sp->dir, i, data[i] ? len[i] : 0, GW_SPOOL_MAX_RECORD);
        total += SPOOL_HDR + len[i];   /* below 2^63 + 2^23: cannot wrap */
        if (total > (uint64_t)INT64_MAX - sp->end)
            return KS_FAIL(KS_ERR_TOO_LARGE, "audit spool %s append: batch too large", sp->dir);
    }
    if (n == 0)
        return KS_OK;
    if (sp->max_bytes && (sp->end > sp->max_bytes || total > sp->max_bytes - sp->end))
        return KS_FAIL(KS_ERR_TOO_LARGE,
                       "audit spool %s: %llu bytes do not fit (%llu of %llu used)", sp->dir,
                       (unsigned long long)total, (unsigned long long)sp->end,
                       (unsigned long long)sp->max_bytes);
    if ((st = settle(sp)))
        return st;
    off = sp->end;
    for (size_t i = 0; i < n; i++) {
        unsigned char h[SPOOL_HDR];

        memcpy(h, SPOOL_MAGIC, 4);
        put_le32(h + 4, (uint32_t)len[i]);
        put_le32(h + 8, crc32c(0, data[i], len[i]));
        if (pwrite_all(sp->fd, h, SPOOL_HDR, off) != 0 ||
            pwrite_all(sp->fd, data[i], len[i], off + SPOOL_HDR) != 0)
            goto fail;
        off += SPOOL_HDR + len[i];
    }
    if (fdatasync(sp->fd) != 0)
        goto fail;
    sp->end = off;
    sp->pending += n;
    return KS_OK;
fail:
    st = sys_fail(sp, SPOOL_LOG, "append");
    if (ftruncate(sp->fd, (off_t)sp->end) != 0)
        sp->tail_dirty = 1;
    return st;
}

uint64_t gw_spool_pending(const gw_spool *sp)
{
    return sp ? sp->pending : 0;
}

uint64_t gw_spool_pending_bytes(const gw_spool *sp)
{
    return sp ? sp->end - sp->pos : 0;
}

ks_status gw_spool_read(gw_spool *sp, size_t max, void **out, size_t *lens, size_t *n)
{
    uint64_t off;
    size_t got = 0;
    ks_status st = KS_OK;

    if (!sp || !n || (max > 0 && (!out || !lens)))
        return KS_FAIL(KS_ERR_INVALID, "audit spool read: no spool or no output");
    for (off = sp->cursor; got < max && off < sp->end; got++) {
        unsigned char h[SPOOL_HDR];
        uint32_t len;

        if ((st = read_at(sp, h, SPOOL_HDR, off)))
            goto fail;
        if ((len = header_len(h, off, sp->end)) == 0) {
            st = KS_FAIL(KS_ERR_PROTOCOL, "audit spool %s/%s: bad record header at %llu",
                         sp->dir, SPOOL_LOG, (unsigned long long)off);
            goto fail;
        }
        if (!(out[got] = malloc(len))) {
            st = KS_FAIL(KS_ERR_NOMEM, "audit spool %s: out of memory", sp->dir);
            goto fail;
        }
        lens[got] = len;
        if ((st = read_at(sp, out[got], len, off + SPOOL_HDR)))
            goto fail_this;
        if (crc32c(0, out[got], len) != get_le32(h + 8)) {
            st = KS_FAIL(KS_ERR_PROTOCOL, "audit spool %s/%s: bad CRC in the record at %llu",
                         sp->dir, SPOOL_LOG, (unsigned long long)off);
            goto fail_this;
        }
        off += SPOOL_HDR + len;
    }
    sp->cursor = off;
    *n = got;
    return KS_OK;
fail_this:
    got++;   /* out[got] was allocated: free it with the others */
fail:
    while (got > 0) {
        got--;
        free(out[got]);
        out[got] = NULL;
    }
    return st;
}

void gw_spool_rewind(gw_spool *sp)
{
    if (sp)
        sp->cursor = sp->pos;
}

ks_status gw_spool_release(gw_spool *sp, size_t n)
{
    uint64_t off;
    ks_status st;

    if (!sp)
        return KS_FAIL(KS_ERR_INVALID, "audit spool release: no spool");
    if (n > sp->pending)
        return KS_FAIL(KS_ERR_INVALID, "audit spool %s: release of %zu records, %llu pending",
                       sp->dir, n, (unsigned long long)sp->pending);
    if (n == 0)
        return KS_OK;
    if (n == sp->pending)
        return reset_empty(sp);
    off = sp->pos;
    for (size_t i = 0; i < n; i++) {
        unsigned char h[SPOOL_HDR];
        uint32_t len;

        if ((st = read_at(sp, h, SPOOL_HDR, off)))
            return st;
        if ((len = header_len(h, off, sp->end)) == 0)
            return KS_FAIL(KS_ERR_PROTOCOL, "audit spool %s/%s: bad record header at %llu",
                           sp->dir, SPOOL_LOG, (unsigned long long)off);
        off += SPOOL_HDR + len;
    }
    if ((st = write_pos(sp, off)))
        return st;
    sp->pos = off;
    sp->pending -= n;
    if (sp->cursor < off)
        sp->cursor = off;
    return KS_OK;
}
