/* audit_spool.h: the gateway's append-only audit spool on disk.
 *
 * When JetStream cannot take audit events, the publisher (audit_publish.c)
 * appends them here and drains them, oldest first, once it can again. The
 * spool is one directory holding:
 *   spool.log   records appended in order: a 12-byte header (magic "KSA1",
 *               payload length as u32 little-endian, CRC-32C (Castagnoli) of
 *               the payload as u32 little-endian), then the payload (a packed
 *               AuditEvent, 1 to GW_SPOOL_MAX_RECORD bytes);
 *   spool.pos   the byte offset in spool.log of the first record not yet
 *               acknowledged by JetStream (8 bytes, u64 little-endian),
 *               written to a temporary file, fsynced and renamed.
 * Every append of a batch ends with fdatasync, so an event the spool accepted
 * survives a crash of the process or of the machine. Opening a spool recovers
 * from a crash: a torn or corrupt tail (short header, short payload, bad
 * magic, bad CRC) is cut off at the last whole record and counted in
 * *torn_bytes; a position beyond the end or not on a record boundary is
 * reported as KS_ERR_PROTOCOL rather than guessed (and nothing is cut). The
 * one exception is an empty spool.log with a position > 0: that is what a
 * crash between the two steps of a full release leaves (the log is cut
 * first), and the position is reset to 0.
 *
 * Not thread-safe: one thread (the publisher) owns a spool. */
#ifndef GW_AUDIT_SPOOL_H
#define GW_AUDIT_SPOOL_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define GW_SPOOL_MAX_RECORD (4u * 1024u * 1024u)

typedef struct gw_spool gw_spool;

/* Open (creating dir and files when missing, mode 0700/0600; dir's parent
 * must exist) the spool in dir; max_bytes caps spool.log (0 = no cap).
 * *torn_bytes (may be NULL) receives how many bytes of a torn tail were cut.
 * The spool takes an exclusive flock on spool.log before recovering
 * anything: KS_ERR_CONFLICT when another gw_spool (of this or another
 * process) has dir open. KS_ERR_IO with the path and errno text in
 * ks_status_last() when the directory cannot be used; KS_ERR_PROTOCOL for a
 * bad position (above) or a spool.pos that is not 8 bytes. *out is set only
 * on success. */
ks_status gw_spool_open(const char *dir, uint64_t max_bytes, uint64_t *torn_bytes,
                        gw_spool **out) __attribute__((warn_unused_result));
void gw_spool_close(gw_spool *sp);   /* NULL is a no-op */

/* Append n records (data[i], len[i]) and fdatasync once; the data is
 * copied, the caller keeps it. All or nothing: on failure (KS_ERR_IO;
 * KS_ERR_TOO_LARGE when max_bytes would be exceeded; KS_ERR_INVALID for an
 * empty record or one above GW_SPOOL_MAX_RECORD) the file is cut back to its
 * length before the call and nothing was appended. max_bytes counts the whole
 * of spool.log, released records included: the file only shrinks when
 * everything is released. n == 0 does nothing and returns KS_OK. */
ks_status gw_spool_append(gw_spool *sp, const void *const *data, const size_t *len, size_t n)
    __attribute__((warn_unused_result));

/* Records not yet released (appended after the position). */
uint64_t gw_spool_pending(const gw_spool *sp);
/* Bytes of spool.log from the position to its end. */
uint64_t gw_spool_pending_bytes(const gw_spool *sp);

/* Read up to max records starting at the read cursor (initially the
 * position), without releasing them: out[i] is a malloc'd copy of the
 * payload (the caller frees it), lens[i] its length; *n the count (0 at the
 * end). The cursor moves past what was read. KS_ERR_PROTOCOL if a record on
 * disk is corrupt (the file changed underneath), KS_ERR_NOMEM, KS_ERR_IO: on
 * failure nothing is handed over (out[] entries already filled are freed and
 * set to NULL), *n is untouched and the cursor does not move. */
ks_status gw_spool_read(gw_spool *sp, size_t max, void **out, size_t *lens, size_t *n)
    __attribute__((warn_unused_result));

/* Move the read cursor back to the position (after a failed drain, the same
 * records are read again). */
void gw_spool_rewind(gw_spool *sp);

/* Release the n oldest unreleased records (read or not; a cursor behind the
 * new position moves up to it): the position advances past them and is made
 * durable (spool.pos rewritten, fsynced, renamed). When nothing is left
 * unreleased, spool.log is truncated to 0 and the position reset.
 * KS_ERR_INVALID when n > gw_spool_pending(); on KS_ERR_IO the position
 * stays, so the records are read again (at least once, never lost). */
ks_status gw_spool_release(gw_spool *sp, size_t n) __attribute__((warn_unused_result));

#endif
