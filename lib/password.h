/* password.h: password hashing, verification and policy (libcrypt), and a
 * bounded worker pool so slow hashes never block anything else.
 * docs/passwords.md explains the choices.
 *
 * Formats: new hashes are bcrypt "$2b$" (cost KS_PASSWORD_DEFAULT_COST unless
 * given) with a 128-bit salt from the OS. Verification accepts bcrypt
 * "$2a$", "$2b$", "$2y$" and yescrypt "$y$": exactly the strings that
 * ks_password_is_hash accepts, which are those the User CRD's CEL rule takes
 * for a hash (config/crds/iam.kubesphere.io_users.yaml). A hash whose cost
 * is above KS_PASSWORD_MAX_COST (bcrypt) or whose yescrypt parameters ask for
 * more than KS_PASSWORD_YESCRYPT_MAX_MEM bytes is refused as unsupported, so
 * a User object cannot make a login take minutes or gigabytes.
 *
 * Secrets: plain-text passwords are copied only into buffers that are wiped
 * (explicit_bzero) after use, together with libcrypt's work area; nothing
 * here logs a password or a hash, and ks_status_last() messages never
 * contain either. Comparisons of crypt output are constant-time.
 *
 * bcrypt reads at most 72 bytes of a password; longer ones (possible with
 * 64 multi-byte characters) are hashed by their first 72 bytes. Passwords
 * are limited to KS_PASSWORD_PLAIN_MAX bytes.
 *
 * Cost on this machine (DESIGN.md §11): bcrypt cost 10 takes about 51 ms,
 * yescrypt (default parameters) about 20 ms. */
#ifndef KS_PASSWORD_H
#define KS_PASSWORD_H

#include <stddef.h>

#include "status.h"

#define KS_PASSWORD_DEFAULT_COST 10
#define KS_PASSWORD_MIN_COST 4  /* bcrypt's own minimum */
#define KS_PASSWORD_MAX_COST 16 /* ~3.3 s a hash here; cost 31 would take days */
#define KS_PASSWORD_YESCRYPT_MAX_MEM (64u << 20) /* bytes: 4x the default 16 MiB */
#define KS_PASSWORD_PLAIN_MAX 256 /* bytes of a plain-text password */
#define KS_PASSWORD_HASH_MAX 255  /* bytes of a stored hash */
#define KS_PASSWORD_POLICY_MIN 8  /* characters (Unicode code points) */
#define KS_PASSWORD_POLICY_MAX 64

/* Hash plain with bcrypt $2b$ at cost (0 selects KS_PASSWORD_DEFAULT_COST;
 * else KS_PASSWORD_MIN_COST..KS_PASSWORD_MAX_COST) and a random salt. On
 * success *hash_out is a malloc'd NUL-terminated string (60 bytes) the
 * caller frees. KS_ERR_INVALID for a NULL argument or a bad cost,
 * KS_ERR_TOO_LARGE for a plain over KS_PASSWORD_PLAIN_MAX bytes,
 * KS_ERR_INTERNAL if libcrypt fails (no randomness), KS_ERR_NOMEM.
 * Runs on the calling thread for the whole cost (51 ms at 10): servers use
 * the pool below. */
ks_status ks_password_hash(const char *plain, int cost, char **hash_out)
    __attribute__((warn_unused_result));

/* Check plain against a stored hash. KS_OK when it matches, KS_ERR_DENIED
 * when it does not (also for a plain over KS_PASSWORD_PLAIN_MAX bytes),
 * KS_ERR_INVALID when hash is not a supported hash (see
 * ks_password_is_hash and the cost limits) or an argument is NULL,
 * KS_ERR_NOMEM. Blocks for the hash's cost. */
ks_status ks_password_verify(const char *plain, const char *hash)
    __attribute__((warn_unused_result));

/* 1 if s has the form of a supported hash, exactly as the CRD's CEL rule:
 *   ^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}$
 *   ^\$y\$[./A-Za-z0-9]+\$[./A-Za-z0-9]{1,86}\$[./A-Za-z0-9]{43}$
 * (no cost limits here; a NULL s gives 0). The user controller uses it to
 * tell a hash from a plain-text password to hash. */
int ks_password_is_hash(const char *s);

/* KubeSphere's password policy: 8 to 64 characters (code points of valid
 * UTF-8), with at least one ASCII lower-case letter, one upper-case letter
 * and one digit (the same rule as the CRD's CEL expression). KS_OK if plain
 * passes; otherwise KS_ERR_INVALID and, when why is not NULL, a short
 * English sentence for the API's Status message in why[0..cap) (always
 * NUL-terminated when cap > 0, never containing the password). */
ks_status ks_password_policy_check(const char *plain, char *why, size_t cap)
    __attribute__((warn_unused_result));

/* ---- the worker pool ----
 *
 * nthreads workers take jobs from a FIFO of at most queue_cap waiting jobs.
 * A submission beyond that fails at once with KS_ERR_UNAVAILABLE: the caller
 * answers 429 with Retry-After (ks_password_pool_retry_after_s) instead of
 * letting logins pile up behind bcrypt. Token checks and authorization never
 * use this pool.
 *
 * Metrics (process-wide, shared by all pools):
 *   ks_password_queue_depth           gauge, jobs waiting (not running)
 *   ks_password_rejected_total        counter, submissions refused as full
 *   ks_password_cancelled_total       counter, jobs dropped by destroy or a wait timeout
 *   ks_password_hash_seconds{op=...}  histogram of one hash or verify, op "hash"/"verify" */

typedef struct ks_password_pool ks_password_pool;

typedef enum {
    KS_PASSWORD_OP_HASH = 1, /* hash plain at cost; the callback gets the hash */
    KS_PASSWORD_OP_VERIFY,   /* check plain against hash */
} ks_password_op;

/* Called once per accepted job, on a worker thread (or on the thread that
 * destroys the pool, for jobs it cancels). result: for HASH KS_OK with hash
 * set, or an error of ks_password_hash; for VERIFY the result of
 * ks_password_verify; KS_ERR_CLOSED when the pool was destroyed first.
 * hash is NULL except for a successful HASH; it is valid only during the
 * call (copy it). The callback must not block for long and must not destroy
 * the pool. */
typedef void (*ks_password_done_fn)(ks_status result, const char *hash, void *arg);

/* Start nthreads (1..64) workers with room for queue_cap (1..65536) waiting
 * jobs. *out is set only on success. KS_ERR_INVALID, KS_ERR_NOMEM,
 * KS_ERR_INTERNAL (thread creation). */
ks_status ks_password_pool_create(int nthreads, size_t queue_cap, ks_password_pool **out)
    __attribute__((warn_unused_result));

/* Queue a job. plain (and hash for VERIFY) are copied; cost is used by HASH
 * only (0 for the default). Returns KS_OK when queued (done will be called
 * exactly once), or, without ever calling done:
 *   KS_ERR_UNAVAILABLE  the queue is full (answer 429);
 *   KS_ERR_CLOSED       the pool is being destroyed;
 *   KS_ERR_INVALID      NULL pool/plain/done, bad op or cost, a VERIFY whose
 *                       hash is not supported;
 *   KS_ERR_TOO_LARGE    plain over KS_PASSWORD_PLAIN_MAX bytes (HASH only; a
 *                       VERIFY of such a plain is queued and fails DENIED). */
ks_status ks_password_pool_submit(ks_password_pool *pool, ks_password_op op, const char *plain,
                                  const char *hash, int cost, ks_password_done_fn done,
                                  void *arg) __attribute__((warn_unused_result));

/* Submit a VERIFY and wait up to timeout_ms (> 0) for it. Returns the
 * verify result (KS_OK, KS_ERR_DENIED, KS_ERR_INVALID), or KS_ERR_UNAVAILABLE
 * / KS_ERR_CLOSED / KS_ERR_INVALID from submit, or KS_ERR_TIMEOUT (the job is
 * then dropped if it has not started, and its result ignored otherwise). */
ks_status ks_password_pool_verify_wait(ks_password_pool *pool, const char *plain,
                                       const char *hash, int timeout_ms)
    __attribute__((warn_unused_result));

/* Submit a HASH and wait the same way; on KS_OK *hash_out is a malloc'd hash
 * the caller frees (set only on success). */
ks_status ks_password_pool_hash_wait(ks_password_pool *pool, const char *plain, int cost,
                                     int timeout_ms, char **hash_out)
    __attribute__((warn_unused_result));

/* Seconds a client refused with KS_ERR_UNAVAILABLE should wait: the time the
 * workers need for the queue as it is now, from the mean duration of recent
 * jobs, rounded up, at least 1 and at most 60. */
unsigned ks_password_pool_retry_after_s(ks_password_pool *pool);

/* Jobs waiting now (not counting running ones). */
size_t ks_password_pool_queued(ks_password_pool *pool);

/* Stop the pool: refuse new submissions, cancel every waiting job (its
 * callback gets KS_ERR_CLOSED, on this thread), let running jobs finish and
 * call back, join the workers, free everything. NULL is a no-op. Must not be
 * called from a callback. */
void ks_password_pool_destroy(ks_password_pool *pool);

#endif
