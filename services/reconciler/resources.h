/* resources.h: the resources the reconciler watches and mirrors: every kind
 * in config/crds/ plus core namespaces (DESIGN.md §4). A unit test checks
 * this table against config/crds/. */
#ifndef REC_RESOURCES_H
#define REC_RESOURCES_H

#include <stddef.h>

#include "reflector.h"

extern const ks_reflector_resource rec_resources[];
extern const size_t rec_nresources;

#endif
