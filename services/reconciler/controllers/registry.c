/* registry.c: every controller of the reconciler, in one list. A controller
 * lives in its own file beside this one and exports one rec_controller. */
#include "../controller.h"

const rec_controller *const rec_controllers[] = {
    NULL,
};
