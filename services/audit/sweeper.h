/* sweeper.h: upkeep of the audit store (docs/audit.md, "Retention").
 *
 * A thread with its own connection checkpoints the WAL every
 * checkpoint_ms (PASSIVE: it never blocks the consumer, whose connection
 * does not checkpoint, so its commits never wait for one), and deletes,
 * every interval, the rows older
 * than max_age (the stream's own retention, so the store never keeps what
 * the stream could not give back), oldest first in stream order, in small
 * transactions (aud_store_sweep, sweep_rows at a time) so the consumer's
 * commits are never held up for long. After each pass it refreshes the
 * row-count gauge and runs PRAGMA optimize. */
#ifndef AUD_SWEEPER_H
#define AUD_SWEEPER_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"
#include "store.h"

typedef struct aud_sweeper aud_sweeper;

typedef struct {
    const char *db_path;
    aud_store_opts store;
    int64_t max_age_ms;       /* 0: keep everything (the pass only counts) */
    int64_t interval_ms;      /* time between passes; the first runs at start */
    int64_t checkpoint_ms;    /* time between WAL checkpoints (0 = 500) */
    size_t sweep_rows;        /* rows per transaction (0 = 500) */
} aud_sweeper_cfg;

/* Open a connection to the store and start the thread. cfg's strings must
 * outlive the sweeper. KS_ERR_IO when the store cannot be opened. */
ks_status aud_sweeper_start(const aud_sweeper_cfg *cfg, aud_sweeper **out)
    __attribute__((warn_unused_result));

/* Stop the thread (an ongoing transaction finishes), close, free. NULL is a
 * no-op. */
void aud_sweeper_stop(aud_sweeper *s);

/* One full pass now, on the caller's thread and store (tests, tools):
 * delete every row before cutoff_us in transactions of max_rows. */
ks_status aud_sweep_all(aud_store *st, int64_t cutoff_us, size_t max_rows, uint64_t *deleted)
    __attribute__((warn_unused_result));

#endif
