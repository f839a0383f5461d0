#!/usr/bin/env bash
# tests/integration/test_controllers_tenant.sh: the tenant controllers of
# kscore-reconciler (issue Controllers, items 3, 4, 5 and 7;
# docs/controllers.md): role aggregation, role references, workspacetemplate
# and namespace. Each check is "apply this YAML, then within 5 s the API
# shows that", awaited by polling:
#   - aggregation: uncovered template rules are added, covered ones are not,
#     existing rules stay; templateNames and roleSelector; the scope label
#     limits both; a template change reaches every role that uses it; all
#     four role kinds;
#   - workspacetemplate: Workspace, the four <ws>-* WorkspaceRoles and the
#     manager's binding; the Workspace kept in step; a manager change; delete
#     cascades to bindings, roles and the Workspace, then the finalizer goes;
#   - namespace: roles, the creator's binding and the finalizer; removing
#     the label removes them (and member bindings to them), keeps other
#     roles; deleting the namespace cleans up and drops the finalizer;
#     kscore-role-templates is never touched;
#   - bad input: a missing template, a template of the wrong scope, a
#     workspace without a manager or with an unknown one, bindings to missing
#     roles: one Warning Event each, no crash, the retry backoff grows, and
#     the fix is picked up at once;
#   - idempotence: after everything settles, a restart (full resync) makes
#     no write (ks_controller_writes_total of these controllers stays 0).
# Uses the control plane of scripts/test.sh (KS_NATS_URL, KS_KUBECONFIG), or
# starts its own. The reconciler runs with leader election on (a Lease left
# by an earlier test is deleted first), on 127.0.0.1. Prints "PASS: <check>"
# or "FAIL: <check>" per check; every process it starts is stopped by PID;
# a sanitizer report in the reconciler's log is a failure. KS_TEST_KEEP=1
# keeps the reconciler's logs.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
KS_LOG_TAG=test_controllers_tenant
# shellcheck source=../../scripts/lib.sh
. "$ROOT/scripts/lib.sh"

BUILD_DIR="${KS_TEST_BUILD:-$ROOT/${BUILD:-build/default}}"
REC="$BUILD_DIR/bin/kscore-reconciler"
WAIT=5                                   # seconds: "within 5 s"
TMP="$(mktemp -d /tmp/kscore-test-tenant.XXXXXX)"
OWN_CP=""
REC_PID=""
REC_START=""
REC_PORT=""
RUN=0
PASSED=0
FAILED=0
MY_CTLS="aggregate-globalroles aggregate-workspaceroles aggregate-clusterroles aggregate-roles
rolerefs-globalrolebindings rolerefs-workspacerolebindings rolerefs-clusterrolebindings
rolerefs-rolebindings workspacetemplate namespace"

pass() { echo "PASS: $1"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL: $1 -- ${2:-}"; FAILED=$((FAILED + 1)); }

stop_rec() {
    if [ -n "$REC_PID" ]; then
        stop_pid "$REC_PID" "$REC_START" >/dev/null 2>&1
        REC_PID=""
    fi
}

cleanup() {
    if [ -n "${KUBECTL_CMD:-}" ]; then
        # While the reconciler runs it finalizes what is deleted; whatever is
        # left after it stops loses its finalizers by hand.
        delete_fixtures >/dev/null 2>&1
        alive && until_true 10 fixtures_gone
        stop_rec
        strip_finalizers >/dev/null 2>&1
    fi
    stop_rec
    if [ -n "$OWN_CP" ]; then
        scripts/controlplane.sh stop "$OWN_CP" >/dev/null 2>&1
        rm -rf "$OWN_CP"
    fi
    if [ -n "${KS_TEST_KEEP:-}" ]; then
        echo "logs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT

if [ -z "${KS_NATS_URL:-}" ] || [ -z "${KS_KUBECONFIG:-}" ]; then
    OWN_CP="$(mktemp -d /tmp/kscore-test-tenant-cp.XXXXXX)"
    if ! scripts/controlplane.sh start "$OWN_CP" >"$TMP/cp.log" 2>&1; then
        fail "control plane" "$(tail -5 "$TMP/cp.log")"
        exit 1
    fi
    # shellcheck disable=SC1091
    . "$OWN_CP/env"
fi
KUBECTL_CMD="$KS_DEPS_BIN/kubectl --kubeconfig $KS_KUBECONFIG"
# Namespaces cannot be deleted for good here (no kube-controller-manager), so
# each run has its own.
P1="tt-proj1-$$"
P2="tt-proj2-$$"
k() { $KUBECTL_CMD "$@"; }
kapply() { k apply -f - >/dev/null; }

# ---- polling ----

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# until_true SECONDS CMD...: poll CMD every 100 ms.
until_true() {
    local secs=$1 deadline
    shift
    deadline=$(( $(now_ms) + secs * 1000 ))
    until "$@" >/dev/null 2>&1; do
        [ "$(now_ms)" -ge "$deadline" ] && return 1
        sleep 0.1
    done
    return 0
}

# check NAME CMD...: "within 5 s, CMD succeeds".
check() {
    local name=$1
    shift
    if until_true "$WAIT" "$@"; then pass "$name"; else fail "$name" "not within ${WAIT} s: $*"; fi
}

# jp KIND NAME PATH [NS]: a jsonpath of an object ("" if absent).
jp() {
    local ns=()
    [ -n "${4:-}" ] && ns=(-n "$4")
    k get "$1" "$2" "${ns[@]}" -o "jsonpath=$3" 2>/dev/null
}
exists() { k get "$@" -o name >/dev/null 2>&1; }
absent() { ! k get "$@" -o name >/dev/null 2>&1; }
eq() { [ "$(jp "$1" "$2" "$3" "${5:-}")" = "$4" ]; }
# has_rule KIND NAME JQ-FILTER [NS]: some rule satisfies the jq filter.
has_rule() {
    local ns=()
    [ -n "${4:-}" ] && ns=(-n "$4")
    k get "$1" "$2" "${ns[@]}" -o json 2>/dev/null | jq -e "[.rules[]? | select($3)] | length > 0" >/dev/null
}
rule_count() {
    local ns=()
    [ -n "${3:-}" ] && ns=(-n "$3")
    k get "$1" "$2" "${ns[@]}" -o json 2>/dev/null | jq '.rules | length'
}
# events NS KIND NAME REASON: how many Events of that reason the object has
# (by uid: an earlier run's object of the same name does not count).
events() {
    local uid ns=()
    [ "$1" != default ] && ns=(-n "$1")
    uid="$(k get "$2" "$3" "${ns[@]}" -o jsonpath='{.metadata.uid}' 2>/dev/null)"
    [ -n "$uid" ] || { echo 0; return; }
    k get events -n "$1" --field-selector "involvedObject.uid=$uid,reason=$4" -o name 2>/dev/null | wc -l
}
has_event() { [ "$(events "$@")" -ge 1 ]; }

# ---- the reconciler ----

metric() { # NAME CONTROLLER
    curl -s --max-time 2 "http://127.0.0.1:$REC_PORT/metrics" |
        awk -v m="$1{controller=\"$2\"}" '$1 == m { print $2 }'
}
leading() { curl -s --max-time 2 "http://127.0.0.1:$REC_PORT/metrics" | grep -qx 'ks_mirror_leader 1'; }

start_rec() {
    RUN=$((RUN + 1))
    REC_PORT="$(free_port)"
    KS_ADMIN_ADDR="127.0.0.1:$REC_PORT" KS_NATS_URL="$KS_NATS_URL" KS_KUBECONFIG="$KS_KUBECONFIG" \
        "$REC" >"$TMP/rec.$RUN.log" 2>&1 &
    REC_PID=$!
    REC_START="$(pid_start "$REC_PID")"
    if until_true 30 leading; then
        return 0
    fi
    fail "reconciler run $RUN leads" "$(tail -5 "$TMP/rec.$RUN.log")"
    return 1
}

alive() { [ -n "$REC_PID" ] && kill -0 "$REC_PID" 2>/dev/null; }

# ---- fixtures ----

WST_NAMES="tt-ws1 tt-ws2 tt-ws3 tt-ws4"
USER_NAMES="tt-mgr tt-mgr2 tt-late-mgr"

delete_fixtures() {
    k delete workspacetemplates.tenant.kubesphere.io $WST_NAMES --ignore-not-found --wait=false
    k delete globalroles.iam.kubesphere.io tt-agg-names tt-agg-sel tt-agg-scope tt-missing-tpl \
        tt-bound --ignore-not-found
    k delete clusterroles.iam.kubesphere.io tt-agg-cluster --ignore-not-found
    k delete globalrolebindings.iam.kubesphere.io tt-dangling --ignore-not-found
    k delete roletemplates.iam.kubesphere.io tt-global-pods tt-ns-secrets tt-cluster-nodes tt-late \
        --ignore-not-found
    k delete users.iam.kubesphere.io $USER_NAMES --ignore-not-found --wait=false
    k delete namespace "$P1" "$P2" --ignore-not-found --wait=false
    # what a run that could not cascade left behind
    k delete workspaces.tenant.kubesphere.io $WST_NAMES --ignore-not-found
    k delete workspacerolebindings.iam.kubesphere.io,workspaceroles.iam.kubesphere.io \
        -l "kubesphere.io/workspace in (${WST_NAMES// /,})" --ignore-not-found
}

fixtures_gone() {
    [ -z "$(k get workspacetemplates.tenant.kubesphere.io $WST_NAMES --ignore-not-found -o name)" ] &&
        [ -z "$(k get users.iam.kubesphere.io $USER_NAMES --ignore-not-found -o name)" ]
}

strip_finalizers() {
    local o
    for o in $(k get workspacetemplates.tenant.kubesphere.io $WST_NAMES --ignore-not-found -o name) \
             $(k get users.iam.kubesphere.io $USER_NAMES --ignore-not-found -o name) \
             $(k get namespace "$P1" "$P2" --ignore-not-found -o name); do
        k patch "$o" --type=json -p '[{"op":"remove","path":"/metadata/finalizers"}]'
    done
}

if [ ! -x "$REC" ]; then
    fail "reconciler binary" "missing $REC (run make)"
    exit 1
fi
delete_fixtures >/dev/null 2>&1
strip_finalizers >/dev/null 2>&1
k -n kubesphere-system delete lease kscore-reconciler --ignore-not-found >/dev/null 2>&1
TPL_RV_BEFORE="$(k get roles.iam.kubesphere.io -n kscore-role-templates -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}')"
start_rec || exit 1
pass "the reconciler leads"
metrics_listed() {
    local c body
    body="$(curl -s --max-time 2 "http://127.0.0.1:$REC_PORT/metrics")"
    for c in $MY_CTLS; do
        grep -q "^ks_controller_reconciles_total{controller=\"$c\"} " <<<"$body" &&
            grep -q "^ks_controller_errors_total{controller=\"$c\"} " <<<"$body" &&
            grep -q "^ks_controller_writes_total{controller=\"$c\"} " <<<"$body" &&
            grep -q "^ks_workqueue_depth{name=\"$c\"} " <<<"$body" || return 1
    done
}
check "metrics: reconciles, errors, writes and queue depth of each controller" metrics_listed

# ==== role aggregation ====

kapply <<'YAML'
apiVersion: iam.kubesphere.io/v1beta1
kind: RoleTemplate
metadata:
  name: tt-global-pods
  labels:
    iam.kubesphere.io/scope: global
    tt.kscore.io/pick: "yes"
spec:
  rules:
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list"]
  - apiGroups: [""]
    resources: ["pods/log"]
    verbs: ["get"]
---
apiVersion: iam.kubesphere.io/v1beta1
kind: RoleTemplate
metadata:
  name: tt-ns-secrets
  labels:
    iam.kubesphere.io/scope: namespace
    tt.kscore.io/pick: "yes"
spec:
  rules:
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get"]
---
apiVersion: iam.kubesphere.io/v1beta1
kind: RoleTemplate
metadata:
  name: tt-cluster-nodes
  labels:
    iam.kubesphere.io/scope: cluster
spec:
  rules:
  - apiGroups: [""]
    resources: ["nodes"]
    verbs: ["get"]
---
apiVersion: iam.kubesphere.io/v1beta1
kind: GlobalRole
metadata:
  name: tt-agg-names
aggregationRoleTemplates:
  templateNames: ["tt-global-pods"]
rules:
- apiGroups: [""]
  resources: ["*"]
  verbs: ["get"]
- apiGroups: ["tt.example.io"]
  resources: ["widgets"]
  verbs: ["delete"]
---
apiVersion: iam.kubesphere.io/v1beta1
kind: GlobalRole
metadata:
  name: tt-agg-sel
aggregationRoleTemplates:
  roleSelector:
    matchExpressions:
    - key: tt.kscore.io/pick
      operator: In
      values: ["yes"]
---
apiVersion: iam.kubesphere.io/v1beta1
kind: ClusterRole
metadata:
  name: tt-agg-cluster
aggregationRoleTemplates:
  templateNames: ["tt-cluster-nodes"]
YAML

check "aggregation: an uncovered template rule is added (pods get,list)" \
    has_rule globalroles.iam.kubesphere.io tt-agg-names '.resources == ["pods"] and .verbs == ["get","list"]'
check "aggregation: existing rules stay, a covered rule (pods/log get under */get) is not added" \
    eval '[ "$(rule_count globalroles.iam.kubesphere.io tt-agg-names)" = 3 ] &&
          has_rule globalroles.iam.kubesphere.io tt-agg-names ".apiGroups == [\"tt.example.io\"]"'
check "aggregation: roleSelector picks only templates of the role's scope" \
    eval '[ "$(rule_count globalroles.iam.kubesphere.io tt-agg-sel)" = 2 ] &&
          ! has_rule globalroles.iam.kubesphere.io tt-agg-sel ".resources == [\"secrets\"]"'
check "aggregation: a ClusterRole aggregates a cluster-scope template" \
    has_rule clusterroles.iam.kubesphere.io tt-agg-cluster '.resources == ["nodes"]'

kapply <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $P1
  labels:
    kubesphere.io/workspace: tt-ws1
  annotations:
    kubesphere.io/creator: tt-mgr
---
apiVersion: iam.kubesphere.io/v1beta1
kind: Role
metadata:
  name: tt-agg-role
  namespace: $P1
aggregationRoleTemplates:
  roleSelector:
    matchLabels:
      tt.kscore.io/pick: "yes"
YAML
check "aggregation: a Role aggregates a namespace-scope template picked by its selector" \
    has_rule roles.iam.kubesphere.io tt-agg-role '.resources == ["secrets"]' "$P1"

# A template change reaches every role that uses it.
k patch roletemplates.iam.kubesphere.io tt-global-pods --type=json -p '[{"op":"add","path":"/spec/rules/-",
  "value":{"apiGroups":["apps"],"resources":["deployments"],"verbs":["get","watch"]}}]' >/dev/null
check "aggregation: a template change reaches the role that names it" \
    has_rule globalroles.iam.kubesphere.io tt-agg-names '.apiGroups == ["apps"] and .resources == ["deployments"]'
check "aggregation: a template change reaches the role whose selector picks it" \
    has_rule globalroles.iam.kubesphere.io tt-agg-sel '.apiGroups == ["apps"] and .resources == ["deployments"]'
check "aggregation: after the change the earlier rules are all still there" \
    eval '[ "$(rule_count globalroles.iam.kubesphere.io tt-agg-names)" = 4 ]'

# ==== workspacetemplate ====

kapply <<'YAML'
apiVersion: iam.kubesphere.io/v1beta1
kind: User
metadata:
  name: tt-mgr
spec:
  email: tt-mgr@example.com
---
apiVersion: iam.kubesphere.io/v1beta1
kind: User
metadata:
  name: tt-mgr2
spec:
  email: tt-mgr2@example.com
---
apiVersion: tenant.kubesphere.io/v1beta1
kind: WorkspaceTemplate
metadata:
  name: tt-ws1
spec:
  template:
    metadata:
      labels:
        tt.kscore.io/team: blue
      annotations:
        kubesphere.io/description: tt workspace
    spec:
      manager: tt-mgr
YAML

WS=workspaces.tenant.kubesphere.io
WST=workspacetemplates.tenant.kubesphere.io
WSR=workspaceroles.iam.kubesphere.io
WSRB=workspacerolebindings.iam.kubesphere.io
check "workspace: the Workspace follows the template (manager, labels, annotations)" \
    eval 'eq $WS tt-ws1 "{.spec.manager}" tt-mgr && eq $WS tt-ws1 "{.metadata.labels.tt\.kscore\.io/team}" blue &&
          eq $WS tt-ws1 "{.metadata.annotations.kubesphere\.io/description}" "tt workspace"'
check "workspace: the template carries the finalizer" \
    eq $WST tt-ws1 '{.metadata.finalizers}' '["finalizers.tenant.kubesphere.io"]'
roles_ok() {
    local r
    for r in admin regular self-provisioner viewer; do
        eq $WSR "tt-ws1-$r" '{.metadata.labels.kubesphere\.io/workspace}' tt-ws1 || return 1
        [ -z "$(jp $WSR "tt-ws1-$r" '{.metadata.labels.iam\.kubesphere\.io/role-template}')" ] || return 1
        [ "$(k get $WSR "tt-ws1-$r" -o json | jq -c .rules)" = "$(k get $WSR "$r" -o json | jq -c .rules)" ] || return 1
    done
}
check "workspace: the four built-in roles are copies of the templates (label, no template label, rules)" roles_ok
check "workspace: the WorkspaceRoleBinding tt-ws1-admin binds the manager to tt-ws1-admin" \
    eval 'eq $WSRB tt-ws1-admin "{.subjects[0].kind}/{.subjects[0].name}/{.roleRef.kind}/{.roleRef.name}" \
              User/tt-mgr/WorkspaceRole/tt-ws1-admin &&
          eq $WSRB tt-ws1-admin "{.metadata.labels.kubesphere\.io/workspace}" tt-ws1'

k label $WS tt-ws1 tt.kscore.io/team=red --overwrite >/dev/null
check "workspace: a hand edit of the Workspace is reverted" \
    eq $WS tt-ws1 '{.metadata.labels.tt\.kscore\.io/team}' blue
k patch $WST tt-ws1 --type=merge -p '{"spec":{"template":{"spec":{"manager":"tt-mgr2"}}}}' >/dev/null
check "workspace: a manager change reaches the Workspace and the binding" \
    eval 'eq $WS tt-ws1 "{.spec.manager}" tt-mgr2 && eq $WSRB tt-ws1-admin "{.subjects[0].name}" tt-mgr2'

# A member binding made by hand, and a namespace of the workspace: both are
# deleted with the workspace's bindings / left alone.
kapply <<'YAML'
apiVersion: iam.kubesphere.io/v1beta1
kind: WorkspaceRoleBinding
metadata:
  name: tt-ws1-member-viewer
  labels:
    kubesphere.io/workspace: tt-ws1
roleRef:
  apiGroup: iam.kubesphere.io
  kind: WorkspaceRole
  name: tt-ws1-viewer
subjects:
- apiGroup: iam.kubesphere.io
  kind: User
  name: tt-mgr
YAML

# ==== namespace ====

RO=roles.iam.kubesphere.io
RB=rolebindings.iam.kubesphere.io
check "namespace: the roles admin, operator and viewer are copies of the templates" \
    eval 'for r in admin operator viewer; do
              [ "$(k get $RO $r -n $P1 -o json | jq -c "[.rules, .aggregationRoleTemplates]")" = \
                "$(k get $RO $r -n kscore-role-templates -o json | jq -c "[.rules, .aggregationRoleTemplates]")" ] || exit 1
              [ -z "$(jp $RO $r "{.metadata.labels.iam\.kubesphere\.io/role-template}" $P1)" ] || exit 1
          done'
check "namespace: the creator is bound as admin (RoleBinding tt-mgr-admin)" \
    eq $RB tt-mgr-admin '{.subjects[0].name}/{.roleRef.kind}/{.roleRef.name}/{.metadata.labels.iam\.kubesphere\.io/user-ref}' \
        tt-mgr/Role/admin/tt-mgr $P1
check "namespace: the namespace carries the finalizer kubesphere.io/cascading-deletion" \
    eval 'jp namespace $P1 "{.metadata.finalizers}" | grep -q "kubesphere.io/cascading-deletion"'

kapply <<YAML
apiVersion: iam.kubesphere.io/v1beta1
kind: RoleBinding
metadata:
  name: tt-member-viewer
  namespace: $P1
roleRef:
  apiGroup: iam.kubesphere.io
  kind: Role
  name: viewer
subjects:
- apiGroup: iam.kubesphere.io
  kind: User
  name: tt-mgr2
YAML
k label namespace $P1 kubesphere.io/workspace- >/dev/null
check "namespace: removing the label deletes the roles and the bindings to them" \
    eval 'absent $RO admin -n $P1 && absent $RO operator -n $P1 && absent $RO viewer -n $P1 &&
          absent $RB tt-mgr-admin -n $P1 && absent $RB tt-member-viewer -n $P1'
check "namespace: ... and the finalizer; a role of the namespace's own stays" \
    eval '! jp namespace $P1 "{.metadata.finalizers}" | grep -q cascading && exists $RO tt-agg-role -n $P1'

kapply <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: $P2
  labels:
    kubesphere.io/workspace: tt-ws1
YAML
check "namespace: a namespace without a creator gets the roles and no binding" \
    eval 'exists $RO viewer -n $P2 && [ -z "$(k get $RB -n $P2 -o name)" ]'
k delete namespace $P2 --wait=false >/dev/null
# No kube-controller-manager here: the namespace stays Terminating on its
# spec finalizer "kubernetes", but ours must go, after the clean-up.
check "namespace: deleting the namespace removes its roles, then the finalizer" \
    eval 'absent $RO viewer -n $P2 && ! jp namespace $P2 "{.metadata.finalizers}" | grep -q cascading'
check "namespace: kscore-role-templates is never touched" \
    eval '[ "$(k get $RO -n kscore-role-templates -o jsonpath="{range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}")" = "$TPL_RV_BEFORE" ] &&
          [ -z "$(jp namespace kscore-role-templates "{.metadata.finalizers}")" ]'

# ==== delete cascade ====

k delete $WST tt-ws1 --wait=false >/dev/null
check "workspace: delete cascades to the bindings (the manager's and the member's)" \
    eval '[ -z "$(k get $WSRB -l kubesphere.io/workspace=tt-ws1 -o name)" ]'
check "workspace: delete cascades to the roles and the Workspace, then the template goes" \
    eval '[ -z "$(k get $WSR -l kubesphere.io/workspace=tt-ws1 -o name)" ] && absent $WS tt-ws1 && absent $WST tt-ws1'
check "workspace: the templates of the roles are still there" \
    eval 'for r in admin regular self-provisioner viewer; do exists $WSR $r || exit 1; done'

# ==== bad input ====

kapply <<YAML
apiVersion: iam.kubesphere.io/v1beta1
kind: GlobalRole
metadata:
  name: tt-missing-tpl
aggregationRoleTemplates:
  templateNames: ["tt-late", "tt-global-pods"]
---
apiVersion: iam.kubesphere.io/v1beta1
kind: GlobalRole
metadata:
  name: tt-agg-scope
aggregationRoleTemplates:
  templateNames: ["tt-ns-secrets"]
---
apiVersion: tenant.kubesphere.io/v1beta1
kind: WorkspaceTemplate
metadata:
  name: tt-ws2
spec:
  template:
    spec: {}
---
apiVersion: tenant.kubesphere.io/v1beta1
kind: WorkspaceTemplate
metadata:
  name: tt-ws3
spec:
  template:
    spec:
      manager: tt-late-mgr
---
apiVersion: iam.kubesphere.io/v1beta1
kind: GlobalRoleBinding
metadata:
  name: tt-dangling
roleRef:
  apiGroup: iam.kubesphere.io
  kind: GlobalRole
  name: tt-bound
subjects:
- apiGroup: iam.kubesphere.io
  kind: User
  name: tt-mgr
---
apiVersion: iam.kubesphere.io/v1beta1
kind: RoleBinding
metadata:
  name: tt-dangling
  namespace: $P1
roleRef:
  apiGroup: iam.kubesphere.io
  kind: Role
  name: tt-nope
subjects:
- apiGroup: iam.kubesphere.io
  kind: User
  name: tt-mgr
YAML
T0=$(now_ms)
check "bad input: a role naming a missing template gets a Warning Event (TemplateNotFound)" \
    has_event default globalroles.iam.kubesphere.io tt-missing-tpl TemplateNotFound
check "bad input: ... and the templates it has are aggregated meanwhile" \
    has_rule globalroles.iam.kubesphere.io tt-missing-tpl '.resources == ["pods"]'
check "bad input: a template of another scope is not aggregated; Warning TemplateScopeMismatch" \
    eval 'has_event default globalroles.iam.kubesphere.io tt-agg-scope TemplateScopeMismatch && [ "$(rule_count globalroles.iam.kubesphere.io tt-agg-scope)" = 0 ]'
check "bad input: a workspace without a manager: roles, no binding, Warning NoManager" \
    eval 'has_event default $WST tt-ws2 NoManager && exists $WSR tt-ws2-viewer && absent $WSRB tt-ws2-admin'
check "bad input: a workspace whose manager does not exist: Warning ManagerNotFound, no binding" \
    eval 'has_event default $WST tt-ws3 ManagerNotFound && absent $WSRB tt-ws3-admin'
check "bad input: a GlobalRoleBinding to a missing GlobalRole: Warning RoleNotFound" \
    has_event default globalrolebindings.iam.kubesphere.io tt-dangling RoleNotFound
check "bad input: a RoleBinding to a missing Role: Warning RoleNotFound in its namespace" \
    has_event "$P1" rolebindings.iam.kubesphere.io tt-dangling RoleNotFound

# Backoff: the retries of the missing template (aggregate-globalroles) and
# of the dangling bindings space out. Base 5 ms doubling: about 9 retries in
# the first 2.5 s, then at most 2 in the next 5 s.
sleep_until_ms() { local t=$1; while [ "$(now_ms)" -lt "$t" ]; do sleep 0.1; done; }
sleep_until_ms $((T0 + 3000))
E1="$(metric ks_controller_errors_total aggregate-globalroles)"
B1="$(metric ks_controller_errors_total rolerefs-globalrolebindings)"
sleep 5
E2="$(metric ks_controller_errors_total aggregate-globalroles)"
B2="$(metric ks_controller_errors_total rolerefs-globalrolebindings)"
if [ -n "$E1" ] && [ "$E1" -ge 5 ] && [ $((E2 - E1)) -le 2 ]; then
    pass "bad input: the missing template's retries back off ($E1 in the first 3 s, $((E2 - E1)) in the next 5 s)"
else
    fail "bad input: the missing template's retries back off" "errors $E1 then $E2"
fi
if [ -n "$B1" ] && [ "$B1" -ge 5 ] && [ $((B2 - B1)) -le 2 ]; then
    pass "bad input: the dangling binding's retries back off ($B1, then +$((B2 - B1)) in 5 s)"
else
    fail "bad input: the dangling binding's retries back off" "errors $B1 then $B2"
fi
n="$(events default globalroles.iam.kubesphere.io tt-missing-tpl TemplateNotFound)"
[ "$n" = 1 ] && pass "bad input: retries report once (1 TemplateNotFound Event after 8 s)" ||
    fail "bad input: retries report once" "$n Events"
R1="$(metric ks_controller_reconciles_total workspacetemplate)"
sleep 2
R2="$(metric ks_controller_reconciles_total workspacetemplate)"
[ "$R1" = "$R2" ] && pass "bad input: no hot loop on a workspace without a manager ($R1 reconciles, none in 2 s)" ||
    fail "bad input: no hot loop on a workspace without a manager" "$R1 -> $R2 reconciles in 2 s"
alive && curl -sf --max-time 2 "http://127.0.0.1:$REC_PORT/healthz" -o /dev/null &&
    pass "bad input: the reconciler is alive and healthy" || fail "bad input: the reconciler is alive" ""

# The fixes are picked up at once, not after the backoff (now seconds long).
kapply <<'YAML'
apiVersion: iam.kubesphere.io/v1beta1
kind: RoleTemplate
metadata:
  name: tt-late
  labels:
    iam.kubesphere.io/scope: global
spec:
  rules:
  - apiGroups: ["tt.example.io"]
    resources: ["gadgets"]
    verbs: ["list"]
---
apiVersion: iam.kubesphere.io/v1beta1
kind: User
metadata:
  name: tt-late-mgr
spec:
  email: tt-late-mgr@example.com
---
apiVersion: iam.kubesphere.io/v1beta1
kind: GlobalRole
metadata:
  name: tt-bound
rules:
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
YAML
check "fix: the late template is aggregated" \
    has_rule globalroles.iam.kubesphere.io tt-missing-tpl '.resources == ["gadgets"]'
check "fix: the late manager is bound" \
    eq $WSRB tt-ws3-admin '{.subjects[0].name}' tt-late-mgr
B3="$(metric ks_controller_errors_total rolerefs-globalrolebindings)"
sleep 2
B4="$(metric ks_controller_errors_total rolerefs-globalrolebindings)"
[ "$B3" = "$B4" ] && pass "fix: the binding stops retrying once its role exists" ||
    fail "fix: the binding stops retrying" "$B3 -> $B4"

# ==== idempotence ====

# Settle: the bad input that retries is removed; then a restart queues every
# object again (full resync) and nothing may be written.
k delete $RB tt-dangling -n $P1 >/dev/null
kapply <<YAML
apiVersion: tenant.kubesphere.io/v1beta1
kind: WorkspaceTemplate
metadata:
  name: tt-ws4
spec:
  template:
    spec:
      manager: tt-mgr
---
apiVersion: v1
kind: Namespace
metadata:
  name: $P1
  labels:
    kubesphere.io/workspace: tt-ws4
  annotations:
    kubesphere.io/creator: tt-mgr
YAML
check "idempotence: the fixtures settle (tt-ws4 bound, $P1 back in a workspace)" \
    eval 'exists $WSRB tt-ws4-admin && exists $RB tt-mgr-admin -n $P1'
sleep 1
stop_rec
start_rec || exit 1
expected_ns="$(k get namespaces -o name | wc -l)"
expected_ws="$(k get $WST -o name | wc -l)"
resynced() {
    [ "$(metric ks_controller_reconciles_total namespace)" -ge "$expected_ns" ] &&
        [ "$(metric ks_controller_reconciles_total workspacetemplate)" -ge "$expected_ws" ]
}
if until_true 20 resynced; then
    sleep 2
    writes=""
    for c in $MY_CTLS; do
        w="$(metric ks_controller_writes_total "$c")"
        [ "$w" = 0 ] || writes="$writes $c=$w"
    done
    [ -z "$writes" ] && pass "idempotence: a full resync after a restart writes nothing" ||
        fail "idempotence: a full resync writes nothing" "writes:$writes"
else
    fail "idempotence: the restarted reconciler resyncs" "reconciles stayed below the object counts"
fi

# ==== end ====

alive && pass "the reconciler is still running" || fail "the reconciler is still running" ""
# Clean up while the reconciler runs, so that it finalizes what goes.
delete_fixtures >/dev/null 2>&1
until_true 10 fixtures_gone || fail "clean-up: the fixtures go" "$(k get workspacetemplates.tenant.kubesphere.io,users.iam.kubesphere.io -o name | grep tt-)"
stop_rec
if grep -qE "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:" "$TMP"/rec.*.log; then
    fail "no sanitizer reports in the reconciler's logs" "$(grep -hE 'ERROR: |runtime error:' "$TMP"/rec.*.log | head -3)"
else
    pass "no sanitizer reports in the reconciler's logs"
fi
if [ "$FAILED" -gt 0 ]; then
    for f in "$TMP"/rec.*.log; do log_tail "$(basename "$f")" "$f" 40; done
fi
echo "test_controllers_tenant: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
