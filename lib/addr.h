/* addr.h: "host:port" listen and connect addresses.
 *
 * One parser for every address a service reads from its configuration, so
 * "127.0.0.1:9191", "localhost:80", "[::1]:9191" and ":9191"-style mistakes are
 * judged the same way everywhere. Pure string work: nothing is resolved. */
#ifndef KS_ADDR_H
#define KS_ADDR_H

#include <stddef.h>

#include "status.h"

/* Longest host ks_addr_parse accepts (a DNS name is at most 253 bytes). */
#define KS_ADDR_HOST_MAX 255

/* Parse "host:port" or "[v6]:port" (port 0..65535; host non-empty) into host
 * (copied, NUL-terminated, cap hostcap) and port. Brackets are removed from a
 * v6 host ("[::1]:80" gives "::1"). A host with a ':' must be bracketed; a
 * host may not contain whitespace, '/', '@', '[' or ']'; the port is decimal
 * digits only. Returns KS_OK; KS_ERR_INVALID for malformed text;
 * KS_ERR_TOO_LARGE when the host does not fit in hostcap. Outputs are written
 * only on success. */
ks_status ks_addr_parse(const char *text, char *host, size_t hostcap, int *port)
    __attribute__((warn_unused_result));

/* As ks_addr_parse, and on failure also writes a short reason into why (cap
 * whycap, always NUL-terminated when whycap > 0), e.g. "port out of range: 70000"
 * or "missing port". why may be NULL. The reason may quote part of text. */
ks_status ks_addr_parse_why(const char *text, char *host, size_t hostcap, int *port,
                            char *why, size_t whycap) __attribute__((warn_unused_result));

/* Write host and port back as text ("h:p", or "[h]:p" when h contains ':')
 * into out (cap outcap). Returns KS_OK, or KS_ERR_TOO_LARGE (out then holds
 * a truncated string) or KS_ERR_INVALID (NULL host, port outside 0..65535). */
ks_status ks_addr_format(char *out, size_t outcap, const char *host, int port);

#endif
