/* mirror.h: the writer of the mirror (DESIGN.md §4).
 *
 * Reflector events become ObjectEvents in the JetStream KV bucket KS_OBJECTS
 * under <group>.<resource>.<namespace or _>.<name> (lib/subject.h). A delete
 * removes the key, leaving a delete marker. Only the leader writes: a standby
 * drops events (its reflectors stay warm), and a new leader first makes the
 * bucket equal to the reflectors' stores with rec_mirror_resync. Writes are
 * serialized, so a resync never overwrites a newer event with older data. */
#ifndef REC_MIRROR_H
#define REC_MIRROR_H

#include "bus.h"
#include "reflector.h"
#include "status.h"

typedef struct rec_mirror rec_mirror;

/* A writer for bucket (created with replicas when missing). The bucket is
 * opened on first use, so NATS may be away at start; until it is open,
 * writes fail and mark the mirror dirty. */
ks_status rec_mirror_create(ks_bus *bus, const char *bucket, int replicas, rec_mirror **out)
    __attribute__((warn_unused_result));

/* 1 once the bucket is open. */
int rec_mirror_is_open(rec_mirror *m);

/* Open the bucket now if it is not open yet. */
ks_status rec_mirror_open(rec_mirror *m);

/* 1 if a write failed since the last call (and clear the flag): the bucket
 * may differ from the API and needs a resync. */
int rec_mirror_take_dirty(rec_mirror *m);
void rec_mirror_destroy(rec_mirror *m);          /* NULL is a no-op */

/* A ks_reflector_fn: arg is the rec_mirror. Writes when leading. */
void rec_mirror_on_event(void *arg, const ks_reflector_resource *res, const ks_reflect_event *ev);

/* Start or stop writing. */
void rec_mirror_set_leader(rec_mirror *m, int leading);
int rec_mirror_is_leader(rec_mirror *m);

/* Make the bucket's keys of one resource equal to the reflector's store:
 * put what is missing or has another resourceVersion, delete what is gone.
 * *puts and *deletes (may be NULL) count the writes. */
ks_status rec_mirror_resync(rec_mirror *m, ks_reflector *r, const ks_reflector_resource *res,
                            unsigned *puts, unsigned *deletes) __attribute__((warn_unused_result));

#endif
