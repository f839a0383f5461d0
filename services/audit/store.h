/* store.h: the audit store, one SQLite file per replica (docs/audit.md).
 *
 * Table aud_events holds one row per stored event, keyed by its stream
 * sequence (the rowid), with audit_id UNIQUE: the AuditEvent's fields as
 * columns, the protobuf bytes exactly as the stream holds them (blob), and
 * chain = SHA-256(chain of the previous row || blob), rows taken in stream
 * order (the first row's predecessor is 32 zero bytes, or after retention
 * the anchor kept in aud_meta). aud_fts is an FTS5 trigram index over the
 * object names and source IPs whose rowid is the sequence; aud_terms the
 * distinct workspaces, namespaces and users (for substring searches). aud_gaps records every sequence
 * that is not a row: a duplicate audit ID, an undecodable message, a
 * message the stream no longer had. So each sequence up to the store's
 * position is a row or a gap, and the position (last_seq) and the chain
 * head move in the same transaction as the rows.
 *
 * Connections: one writer (the consumer), one sweeper, any number of
 * readers; WAL mode lets readers run beside the writer. A store handle is
 * used by one thread at a time. */
#ifndef AUD_STORE_H
#define AUD_STORE_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "status.h"

#define AUD_CHAIN_LEN 32

typedef struct aud_store aud_store;

typedef enum {
    AUD_STORE_READ = 0,     /* queries only (query_only): the API */
    AUD_STORE_WRITE = 1,    /* creates the schema; appends and sweeps */
    AUD_STORE_VERIFY = 2,   /* opened read-only: `kscore-audit verify` */
} aud_store_mode;

typedef struct {
    int sync_full;          /* 1: PRAGMA synchronous=FULL (fsync per commit); 0: NORMAL */
    int no_autocheckpoint;  /* 1: this connection never checkpoints the WAL (the
                               consumer's writer: the sweeper thread does it) */
    int busy_timeout_ms;    /* 0 = 5000 */
    int64_t cache_kib;      /* page cache; 0 = 65536 (64 MiB) */
} aud_store_opts;

/* Open (and with AUD_STORE_WRITE create or upgrade) the store at path.
 * opts may be NULL (defaults). KS_ERR_IO when SQLite cannot open it or the
 * schema is not ours (an error naming the file), KS_ERR_NOMEM. */
ks_status aud_store_open(const char *path, aud_store_mode mode, const aud_store_opts *opts,
                         aud_store **out) __attribute__((warn_unused_result));

/* Finalize statements and close. NULL is a no-op. */
void aud_store_close(aud_store *s);

/* The connection, for queries (query.c). Owned by the store. */
sqlite3 *aud_store_db(aud_store *s);

/* The position in the stream: every sequence up to *last_seq is stored (a
 * row or a gap), *head is the chain of the last row (zeros before the
 * first). Read from the file, so a reader sees the writer's commits. */
ks_status aud_store_position(aud_store *s, uint64_t *last_seq, uint8_t head[AUD_CHAIN_LEN])
    __attribute__((warn_unused_result));

/* Stream identity recorded with the first row (JetStream's stream creation
 * time in ns; 0 = none yet), so a recreated stream is noticed. */
ks_status aud_store_stream_created(aud_store *s, int64_t *created_unix_ns)
    __attribute__((warn_unused_result));
ks_status aud_store_set_stream_created(aud_store *s, int64_t created_unix_ns)
    __attribute__((warn_unused_result));

/* One stream sequence to append: an event (blob set; row, when not NULL,
 * is blob already decoded, which saves the writer the work), or a gap of
 * seq..gap_last that the stream does not hold (blob NULL, reason set). */
typedef struct {
    uint64_t seq;
    const void *blob;
    size_t len;
    const aud_row *row;
    uint64_t gap_last;
    const char *gap_reason;
} aud_item;

typedef struct {
    size_t stored;        /* new rows */
    size_t duplicates;    /* audit ID already stored: recorded as a gap */
    size_t undecodable;   /* not an AuditEvent: recorded as a gap */
    uint64_t gap_seqs;    /* sequences recorded as gaps by gap items */
    uint64_t last_seq;    /* the position after the commit */
} aud_append_result;

/* Append items in one transaction (BEGIN IMMEDIATE ... COMMIT), inserting
 * events as INSERT OR IGNORE on audit_id and extending the chain. items must
 * continue the position exactly: items[0].seq == last_seq + 1, each next
 * item starts right after the previous one ends; otherwise KS_ERR_INVALID
 * and nothing is written. On a failed commit everything is rolled back and
 * the position is unchanged (KS_ERR_IO, KS_ERR_NOMEM). *res (may be NULL)
 * is set only on success. Writer stores only. */
ks_status aud_store_append(aud_store *s, const aud_item *items, size_t n, aud_append_result *res)
    __attribute__((warn_unused_result));

/* Number of event rows. */
ks_status aud_store_count(aud_store *s, uint64_t *rows) __attribute__((warn_unused_result));

/* Retention: delete, in one transaction, up to max_rows of the oldest rows
 * (in stream order) whose ts is before cutoff_us, stopping at the first
 * younger row; the chain of the last deleted row becomes the anchor the
 * next row is verified against. *deleted receives how many (0: nothing to
 * do). Writer stores only. */
ks_status aud_store_sweep(aud_store *s, int64_t cutoff_us, size_t max_rows, size_t *deleted)
    __attribute__((warn_unused_result));

typedef struct {
    int ok;                     /* 1: every row and the head check out */
    uint64_t rows;              /* rows checked */
    uint64_t first_seq, last_seq;
    uint64_t bad_seq;           /* !ok: the first broken row (0: the head itself) */
    char bad_audit_id[128];
    char reason[320];
    uint8_t head[AUD_CHAIN_LEN];
} aud_verify_result;

/* Recompute the chain from the anchor over every row in stream order, and
 * check each row's columns against its decoded blob, and the recorded head
 * against the last row. Stops at the first broken row. KS_OK with
 * out->ok = 0 for a broken store; an error only when the file cannot be
 * read. */
ks_status aud_store_verify(aud_store *s, aud_verify_result *out)
    __attribute__((warn_unused_result));

/* Lower-case hex of a chain value; out needs 65 bytes. */
void aud_chain_hex(const uint8_t chain[AUD_CHAIN_LEN], char out[65]);

#endif
