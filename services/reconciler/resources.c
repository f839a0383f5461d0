#include "resources.h"

#define IAM "iam.kubesphere.io"
#define TENANT "tenant.kubesphere.io"

const ks_reflector_resource rec_resources[] = {
    {"", "v1", "namespaces", "Namespace", 0},
    {IAM, "v1beta1", "users", "User", 0},
    {IAM, "v1beta1", "globalroles", "GlobalRole", 0},
    {IAM, "v1beta1", "globalrolebindings", "GlobalRoleBinding", 0},
    {IAM, "v1beta1", "workspaceroles", "WorkspaceRole", 0},
    {IAM, "v1beta1", "workspacerolebindings", "WorkspaceRoleBinding", 0},
    {IAM, "v1beta1", "clusterroles", "ClusterRole", 0},
    {IAM, "v1beta1", "clusterrolebindings", "ClusterRoleBinding", 0},
    {IAM, "v1beta1", "roles", "Role", 1},
    {IAM, "v1beta1", "rolebindings", "RoleBinding", 1},
    {IAM, "v1beta1", "roletemplates", "RoleTemplate", 0},
    {IAM, "v1beta1", "loginrecords", "LoginRecord", 0},
    {IAM, "v1beta1", "groups", "Group", 0},
    {IAM, "v1beta1", "groupbindings", "GroupBinding", 0},
    {TENANT, "v1beta1", "workspaces", "Workspace", 0},
    {TENANT, "v1beta1", "workspacetemplates", "WorkspaceTemplate", 0},
};

const size_t rec_nresources = sizeof(rec_resources) / sizeof(rec_resources[0]);
