/* requestinfo.c: the first stage. Parse the request (lib/requestinfo) from
 * the path exactly as received, so that "..", "%2e%2e", "//", "%2F" and NUL
 * are refused here (400), never normalized; an overlong path or query is
 * 414. The result is r->info, which every later stage reads. */
#include <stdlib.h>

#include "gw.h"
#include "requestinfo.h"

void gw_stage_requestinfo(gw_request *r)
{
    ks_requestinfo *ri = malloc(sizeof(*ri));
    char err[256] = "";
    ks_status st;
    int code;

    if (ri == NULL) {
        gw_respond_status(r, 503, "ServiceUnavailable", "out of memory");
        return;
    }
    st = ks_requestinfo_parse(r->method, r->url, r->raw_query, ri, err, sizeof(err));
    if (st) {
        free(ri);
        code = ks_requestinfo_http_code(st);
        if (code == 414)
            gw_respond_status(r, 414, "RequestURITooLong", "%s", err[0] ? err : "URI too long");
        else if (code == 400)
            gw_respond_status(r, 400, "BadRequest", "%s", err[0] ? err : "malformed request");
        else
            gw_respond_status(r, 500, "InternalError", "cannot read the request");
        return;
    }
    r->info = ri;
    gw_next(r);
}
