/* config.h: one table of settings per service.
 *
 * A service describes every setting once (name, type, default, bounds, field,
 * help) and gets, from that one table: defaults, KS_* environment overrides,
 * --flag overrides, validation with a precise message, --help and
 * --check-config (redis config.c static_configs; nginx -t; nats.c
 * _overrideWithEnv). docs/configuration.md is the user-facing page.
 *
 * Precedence, lowest to highest: the table's default, the environment variable
 * KS_<NAME> (upper case, '-' -> '_'), the command-line flag --<name>. Only the
 * winning value is validated, so a bad environment value that a flag overrides
 * is not an error.
 *
 *     struct iam_cfg { char *nats_url; long long workers; long long timeout_ms; };
 *     static const ks_config_opt iam_opts[] = {
 *         {"nats-url", KS_CFG_URL, "nats://127.0.0.1:4222", 0, 0, NULL,
 *          offsetof(struct iam_cfg, nats_url), "NATS server URL", 0},
 *         {"workers", KS_CFG_INT, "4", 1, 256, NULL,
 *          offsetof(struct iam_cfg, workers), "worker threads", 0},
 *         {"request-timeout", KS_CFG_DURATION, "2s", 1, 60000, NULL,
 *          offsetof(struct iam_cfg, timeout_ms), "NATS request timeout", 0},
 *     };
 *     struct iam_cfg cfg = {0};
 *     ks_config_load_or_exit(iam_opts, 3, &cfg, argc, argv, "kscore-iam", "...");
 *     ...
 *     ks_config_free(iam_opts, 3, &cfg);
 */
#ifndef KS_CONFIG_H
#define KS_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "status.h"

typedef enum {
    KS_CFG_STRING,   /* any text; empty means unset (the field is NULL) */
    KS_CFG_INT,      /* decimal integer, bounded by [min, max] unless both are 0 */
    KS_CFG_BOOL,     /* true/false/1/0/yes/no/on/off, any case */
    KS_CFG_DURATION, /* "250ms", "2s", "5m", "1h" or a bare integer of ms; bounded in ms */
    KS_CFG_ADDR,     /* "host:port" or "[v6]:port", see ks_addr_parse */
    KS_CFG_URL,      /* scheme://host[:port][/...]; schemes nats, tls, http, https;
                      * a comma-separated list of such URLs is accepted (NATS seeds) */
    KS_CFG_ENUM,     /* one of the '|'-separated choices, exact case */
    KS_CFG_PATH      /* a file system path; must not be empty */
} ks_config_type;

typedef struct {
    const char *name;      /* "nats-url": flag --nats-url (also --nats-url=value), env KS_NATS_URL.
                            * [a-z0-9-], at most KS_CONFIG_NAME_MAX bytes; "help" and
                            * "check-config" are reserved */
    ks_config_type type;
    const char *def;       /* default as text; NULL = empty/unset (strings become NULL) */
    long long min, max;    /* bounds for INT, and for DURATION in milliseconds (0,0 = unbounded) */
    const char *choices;   /* ENUM: "debug|info|warn|error" */
    size_t offset;         /* offsetof(the service's config struct, field) */
    const char *help;
    int secret;            /* value never printed (help shows "(secret)") */
} ks_config_opt;

/* Field types in the struct: STRING/ADDR/URL/ENUM/PATH -> char * (malloc'd
 * copy, freed by ks_config_free; NULL when the setting has no value),
 * INT -> long long, BOOL -> int (0 or 1), DURATION -> long long milliseconds.
 * A NULL default leaves INT/BOOL/DURATION at 0 and pointer fields NULL; such a
 * default is not validated (an unset PATH or URL is how a table says
 * "optional"). A value that is given (default text, environment or flag) is
 * always validated, an explicitly empty one included. */

#define KS_CONFIG_NAME_MAX 48   /* longest option name */
#define KS_CONFIG_ERR_MAX 512   /* an err buffer of this size never truncates the reason */

typedef enum { KS_CONFIG_RUN = 0, KS_CONFIG_HELP, KS_CONFIG_CHECK } ks_config_action;

/* Apply defaults, then KS_* environment, then argv flags (argv[0] is the
 * program and is skipped). Flags: --name=value or --name value; a BOOL flag
 * alone (--name) means true, and takes a following argument only if it does
 * not start with "--". A flag given twice: the last wins. Positional
 * arguments are not accepted.
 *
 * --help (or -h) anywhere sets *action = KS_CONFIG_HELP and returns KS_OK at
 * once, without reading or validating anything and without touching cfg.
 * --check-config sets KS_CONFIG_CHECK after a full, successful parse;
 * otherwise KS_CONFIG_RUN.
 *
 * On success every field named by the table is overwritten (a previous
 * parse's strings must have been released with ks_config_free first).
 * On failure returns KS_ERR_INVALID (a bad value, an unknown flag, a bad
 * table) or KS_ERR_NOMEM, writes ONE line into err naming the setting, e.g.
 * "invalid KS_ADMIN_ADDR (--admin-addr): port out of range: 70000" or
 * "unknown flag --admin-adr", and leaves cfg and *action untouched with
 * nothing allocated. A secret's value is never quoted in err. err may be
 * NULL; errcap >= KS_CONFIG_ERR_MAX is recommended. */
ks_status ks_config_parse(const ks_config_opt *table, size_t n, void *cfg, int argc, char **argv,
                          ks_config_action *action, char *err, size_t errcap)
    __attribute__((warn_unused_result));

/* Print --help for this table to f: usage line, summary, then each option:
 * flag, env name, type (with bounds or choices), default ("(secret)" for a
 * secret with a default), help; then --help, --check-config and the
 * precedence rule. summary may be NULL. */
void ks_config_print_help(FILE *f, const char *program, const char *summary,
                          const ks_config_opt *table, size_t n);

/* Print "PROGRAM: configuration ok" and then one line per option,
 * "  name = value", to f: durations as text ("2s"), bools as true/false,
 * unset values as "(unset)", secrets as "(secret)", and in URLs the password
 * of user:password@ and a bare token@ as "***". cfg must come from a
 * successful ks_config_parse. */
void ks_config_print_values(FILE *f, const char *program, const ks_config_opt *table, size_t n,
                            const void *cfg);

/* The wrapper services call from main(): parse; on error print
 * "PROGRAM: <err>" (and a hint to --help) to stderr and exit(2); on HELP print
 * help to stdout and exit(0); on CHECK print the values (ks_config_print_values)
 * to stdout, free cfg and exit(0); on RUN return with cfg filled. */
void ks_config_load_or_exit(const ks_config_opt *table, size_t n, void *cfg, int argc, char **argv,
                            const char *program, const char *summary);

/* Free the strings of the table's pointer fields and set them to NULL. INT,
 * BOOL and DURATION fields are left as they are. Safe on a zeroed struct and
 * when called twice. cfg NULL is a no-op. */
void ks_config_free(const ks_config_opt *table, size_t n, void *cfg);

/* Parse a duration text into ms: a non-negative decimal integer followed by
 * "ms", "s", "m" or "h", or by nothing (ms). Returns KS_OK, or KS_ERR_INVALID
 * (bad syntax, unknown unit, overflow) leaving *ms untouched. */
ks_status ks_config_parse_duration(const char *text, long long *ms)
    __attribute__((warn_unused_result));

/* Write ms as the shortest exact duration text ("1h", "90s", "250ms") into
 * out (cap outcap, NUL-terminated when outcap > 0). Negative values are
 * written as "-" plus the text of the absolute value. Returns the length
 * that the full text needs, as snprintf does. */
int ks_config_format_duration(long long ms, char *out, size_t outcap);

/* The environment variable of an option name: "nats-url" -> "KS_NATS_URL".
 * Returns KS_OK, or KS_ERR_TOO_LARGE if it does not fit in outcap. */
ks_status ks_config_env_name(const char *name, char *out, size_t outcap);

#endif
