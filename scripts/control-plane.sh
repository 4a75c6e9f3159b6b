#!/usr/bin/env bash
# Makes sure etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a
# kubectl of the same version exist, and prints the folder that holds them (the
# layout of envtest's KUBEBUILDER_ASSETS). Progress goes to stderr, the folder
# alone to stdout:
#
#     export KUBEBUILDER_ASSETS="$(scripts/control-plane.sh)"
#
# When KUBEBUILDER_ASSETS is set and holds all five binaries they are used as they
# are and nothing is built. Otherwise they are built once from the Go module proxy
# into a cache folder keyed by version; a later call only checks them. There is no
# prebuilt Kubernetes download to fetch here, hence the build (docs/TESTING.md).
set -Eeuo pipefail  # -E: the ERR trap below also fires inside functions
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../operator_engine/devcluster/control-plane.env
source "$here/operator_engine/devcluster/control-plane.env"

binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/operator-engine/control-plane"
assets="$cache_root/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
work="$cache_root/build-k8s-$K8S_VERSION-etcd-$ETCD_VERSION"

say() { echo "control-plane: $*" >&2; }

holds_all() {  # holds_all DIR: every binary is there and executable
    local b
    for b in "${binaries[@]}"; do [[ -x "$1/$b" ]] || return 1; done
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    if holds_all "$KUBEBUILDER_ASSETS"; then
        say "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
        echo "$KUBEBUILDER_ASSETS"
        exit 0
    fi
    say "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks one of ${binaries[*]}; using the cache"
fi

step=""
fail() {
    local log=""
    [[ -s "$work/build.log" ]] && log=" (log: $work/build.log)"
    echo "control-plane: build failed at step '$step'$log; build on a machine with Go and the module proxy, or set KUBEBUILDER_ASSETS to a folder holding ${binaries[*]} (Kubernetes $K8S_VERSION, etcd $ETCD_VERSION)" >&2
    exit 1
}

checked() {  # checked: the cached binaries run and report the expected versions
    holds_all "$assets" || return 1
    local b out
    out="$("$assets/etcd" --version 2>/dev/null)" || return 1
    [[ "$out" == *"etcd Version: ${ETCD_VERSION#v}"$'\n'* ]] || return 1
    for b in kube-apiserver kube-controller-manager kube-scheduler; do
        [[ "$("$assets/$b" --version 2>/dev/null)" == "Kubernetes $K8S_VERSION" ]] || return 1
    done
    out="$("$assets/kubectl" version --client 2>/dev/null)" || return 1
    [[ "$out" == *"Client Version: $K8S_VERSION"$'\n'* ]] || return 1
}

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
# One build at a time; a second caller waits and then finds the binaries.
flock -n 9 || { say "another call is building into $assets; waiting for it"; flock 9; }

if checked; then
    say "using $assets"
    echo "$assets"
    exit 0
fi

command -v go >/dev/null || { step="find go"; fail; }
mkdir -p "$work/k8s" "$work/etcd" "$assets"
: >"$work/build.log"
trap fail ERR
start=$SECONDS

run() {  # run STEP COMMAND...: a progress line, another each minute it runs; output to the build log
    step="$1"; shift
    say "[$((SECONDS - start))s] $step"
    "$@" >>"$work/build.log" 2>&1 &
    local pid=$! waited=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        ((++waited % 60)) || say "[$((SECONDS - start))s] ... $step"
    done
    wait "$pid"
}

step="download k8s.io/kubernetes $K8S_VERSION go.mod"
say "$step"
go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >"$work/kubernetes-module.json" 2>>"$work/build.log" ||
    { cat "$work/kubernetes-module.json" >>"$work/build.log"; false; }  # -json puts the error in the JSON
kube_mod="$(sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p' "$work/kubernetes-module.json")"
[[ -s "$kube_mod" ]]

# A module of our own that requires k8s.io/kubernetes and replaces each staging
# module that its go.mod lists at v0.0.0 (k8s.io/api, k8s.io/client-go, ...) by
# its published v0.MINOR.PATCH; the go and godebug lines are copied so that the
# binaries get Kubernetes' own defaults.
staging_version="v0.${K8S_VERSION#v1.}"
{
    echo "module local/kubernetes-build"
    grep -E '^(go|godebug) ' "$kube_mod"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    sed -n 's/^\t\(k8s\.io\/[a-z0-9-]*\) v0\.0\.0$/replace \1 => \1 '"$staging_version"'/p' "$kube_mod"
} >"$work/k8s/go.mod"

{
    echo "module local/etcd-build"
    echo "go 1.24.0"
    echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
} >"$work/etcd/go.mod"

kube_cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
version_pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for p in "${version_pkgs[@]}"; do
    ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done

kube_pkgs=()
for c in "${kube_cmds[@]}"; do kube_pkgs+=("k8s.io/kubernetes/cmd/$c@$K8S_VERSION"); done
cd "$work/k8s"
run "resolve k8s.io/kubernetes $K8S_VERSION modules" go get "${kube_pkgs[@]}"
for c in "${kube_cmds[@]}"; do
    run "go build $c" env CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$assets/$c.tmp" "k8s.io/kubernetes/cmd/$c"
    mv "$assets/$c.tmp" "$assets/$c"
done
cd "$work/etcd"
run "resolve go.etcd.io/etcd/server/v3 $ETCD_VERSION modules" go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
run "go build etcd" env CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$assets/etcd.tmp" go.etcd.io/etcd/server/v3
mv "$assets/etcd.tmp" "$assets/etcd"

step="check the built binaries' versions"
checked
trap - ERR
say "built in $((SECONDS - start))s: $assets"
echo "$assets"
