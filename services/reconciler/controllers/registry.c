/* registry.c: every controller of the reconciler, in one list. A controller
 * lives in its own file beside this one and exports one rec_controller. */
#include "../controller.h"
#include "iamctl.h"   /* user, loginrecord, group, groupbinding */
#include "ctlkit.h"   /* role aggregation, role references, workspace, namespace */

const rec_controller *const rec_controllers[] = {
    &rec_controller_user,
    &rec_controller_loginrecord,
    &rec_controller_group,
    &rec_controller_groupbinding,
    &rec_ctl_aggregate_globalroles,
    &rec_ctl_aggregate_workspaceroles,
    &rec_ctl_aggregate_clusterroles,
    &rec_ctl_aggregate_roles,
    &rec_ctl_rolerefs_globalrolebindings,
    &rec_ctl_rolerefs_workspacerolebindings,
    &rec_ctl_rolerefs_clusterrolebindings,
    &rec_ctl_rolerefs_rolebindings,
    &rec_ctl_workspacetemplate,
    &rec_ctl_namespace,
    NULL,
};
