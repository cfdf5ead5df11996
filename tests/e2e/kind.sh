#!/usr/bin/env bash
# The kind end-to-end suite: a real cluster, the pinned KubeRay, both images, this chart and
# the examples. Needs docker (with an engine), kind, helm, kubectl and the project's venv
# (.venv, or $PYTHON) to check the files. Run from anywhere:
#   bash tests/e2e/kind.sh                 # KEEP_CLUSTER=1 keeps the cluster afterwards
# It creates a cluster; installs KubeRay and the chart; builds and loads both images; applies
# examples/run.yaml, waits for Succeeded, copies the CXI files out of the volume and checks
# them; then a longer run with the threshold model, scaled 1 -> 2 inference pods while it
# streams (kubectl get pnp must follow), whose files are checked against the random source's
# ground truth; each resource is deleted and nothing of it may be left.
# Before anything, it checks its own budgets (tests/e2e/kind_tool.py): the waits below against
# the workflow's timeout-minutes, the disk against the images' copies (before the builds and
# again before loading them into kind), and that every pod of both runs fits the kind node.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Worst-case waits, seconds: every wait of this script is one of these, and
# `kind_tool.py budget` adds them up (plus diagnose) against the workflow's 'kind e2e' step.
WAIT_CLUSTER=180
WAIT_HELM_REPO=120
WAIT_KUBERAY=300
WAIT_BUILD_PIPELINE=1200  # pulls Ray's image and CPU torch
WAIT_BUILD_OPERATOR=300
WAIT_LOAD=600
WAIT_CHART=300
WAIT_ROLLOUT=180
WAIT_DEMO=900
WAIT_READER=120  # each of: the reader pod Ready, and gone (twice per run)
WAIT_DELETE_DEMO=180
WAIT_GONE_DEMO=300
WAIT_LONG_RUNNING=600
WAIT_LONG_READY=300
WAIT_SCALE=120
WAIT_SCALED_READY=600
WAIT_LONG_DONE=900  # 1536 frames at 8 Hz stream for 192 s
WAIT_DELETE_LONG=180
WAIT_GONE_LONG=300

CLUSTER=${CLUSTER:-peaknet-e2e}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:v1.32.2}
KUBERAY_VERSION=1.7.0
NS=default
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
LABEL=peaknet.slac.stanford.edu/pipeline

log() { echo "== $(date +%H:%M:%S) $*"; }
fail() { echo "kind.sh: $*" >&2; exit 1; }
require() {
  for tool in "$@"; do command -v "$tool" > /dev/null || fail "$tool is required"; done
}

diagnose() {
  kubectl get pnp,rayclusters,rayjobs,pods -A -o wide || true
  kubectl describe pnp -n "$NS" || true
  kubectl logs -n peaknet-system deploy/peaknet-operator --tail=300 || true
  kind export logs "$OUT/kind-logs" --name "$CLUSTER" || true
}

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then diagnose; fi
  if [ "${KEEP_CLUSTER:-0}" != 1 ]; then kind delete cluster --name "$CLUSTER" || true; fi
  exit "$rc"
}

# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 5
  done
}

phase_is() {
  local phase
  phase=$(kubectl get pnp "$1" -n "$NS" -o jsonpath='{.status.phase}')
  [ "$phase" != Failed ] || { kubectl describe pnp "$1" -n "$NS"; fail "$1 failed"; }
  [ "$phase" = "$2" ]
}

# The INFERENCE printer column of `kubectl get pnp` (NAME PHASE INFERENCE ...).
inference_column_is() {
  [ "$(kubectl get pnp "$1" -n "$NS" --no-headers | awk '{print $3}')" = "$2" ]
}

inference_replicas_are() {
  local path='{.spec.workerGroupSpecs[?(@.groupName=="inference")].replicas}'
  [ "$(kubectl get raycluster "$1" -n "$NS" -o jsonpath="$path")" = "$2" ]
}

# After a run the operator deletes its RayCluster, so the files are read through the README's
# reader pod (examples/read-output.yaml) on the run's claim, which is deleted again before the
# resource (a claim in use by a pod is not deleted).
copy_out() {
  local reader="$1-read-output"
  sed -e "s/demo-output/$1-output/" -e "s/demo-read-output/$reader/" \
    -e "s|image: peaknet-pipeline:0.1.0|image: peaknet-pipeline:$VERSION|" \
    examples/read-output.yaml | kubectl apply -n "$NS" -f -
  kubectl wait -n "$NS" --for=condition=Ready "pod/$reader" --timeout="${WAIT_READER}s"
  mkdir -p "$2"
  kubectl cp -n "$NS" -c read "$reader:/data/runs" "$2"
  kubectl delete -n "$NS" pod "$reader" --wait=true --timeout="${WAIT_READER}s"
}

nothing_left() {
  [ -z "$(kubectl get rayclusters,rayjobs,configmaps,services,pdb,pvc -n "$NS" -l "$LABEL=$1" -o name)" ] \
    && [ -z "$(kubectl get pods -n "$NS" -l "ray.io/cluster=$1" -o name)" ]
}

# delete_and_check NAME DELETE_SECONDS GONE_SECONDS
delete_and_check() {
  kubectl delete pnp "$1" -n "$NS" --wait=true --timeout="$2s"
  wait_for "$3" "everything of $1 deleted" nothing_left "$1"
}

# free_bytes DIR...: the least free space of the file systems holding DIRs.
free_bytes() {
  df -B1 --output=avail "$@" | tail -n +2 | sort -n | head -n1 | tr -d ' '
}

image_bytes() {
  docker image inspect --format '{{.Size}}' "$@" | awk '{s += $1} END {print s}'
}

require docker kind helm kubectl
"$PYTHON" tests/e2e/kind_tool.py budget
"$PYTHON" tests/e2e/kind_tool.py long-run > "$OUT/long.yaml"
"$PYTHON" tests/e2e/kind_tool.py sizing examples/run.yaml "$OUT/long.yaml"
DISK_DIRS=("$(docker info --format '{{.DockerRootDir}}')" "${TMPDIR:-/tmp}")
"$PYTHON" tests/e2e/kind_tool.py disk --free-bytes "$(free_bytes "${DISK_DIRS[@]}")"
trap cleanup EXIT

log "cluster $CLUSTER ($KIND_NODE_IMAGE)"
kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait "${WAIT_CLUSTER}s"
kubectl config use-context "kind-$CLUSTER"

log "KubeRay $KUBERAY_VERSION"
timeout "$WAIT_HELM_REPO" \
  helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
helm install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --namespace ray-system --create-namespace --wait --timeout "${WAIT_KUBERAY}s"

log "images $VERSION (CPU-only torch)"
IMAGES=("peaknet-pipeline:$VERSION" "peaknet-operator:$VERSION")
timeout "$WAIT_BUILD_PIPELINE" docker build -f images/pipeline/Dockerfile \
  --build-arg TORCH_VARIANT=cpu -t "${IMAGES[0]}" .
timeout "$WAIT_BUILD_OPERATOR" docker build -f images/operator/Dockerfile -t "${IMAGES[1]}" .
"$PYTHON" tests/e2e/kind_tool.py disk --built --free-bytes "$(free_bytes "${DISK_DIRS[@]}")" \
  --image-bytes "$(image_bytes "${IMAGES[@]}")"
timeout "$WAIT_LOAD" kind load docker-image --name "$CLUSTER" "${IMAGES[@]}"
# kind's containerd has them now: Docker's copies, Ray's base image and the build cache go.
docker image rm "${IMAGES[@]}" rayproject/ray:2.60.0-py311 python:3.11.13-slim-bookworm || true
docker builder prune --all --force > /dev/null || true
df -h "${DISK_DIRS[@]}"

log "chart"
helm install peaknet-operator charts/peaknet-operator --namespace peaknet-system \
  --create-namespace --set "driver.namespaces={$NS}" --wait --timeout "${WAIT_CHART}s"
kubectl -n peaknet-system rollout status deploy/peaknet-operator --timeout="${WAIT_ROLLOUT}s"

log "examples/run.yaml"
kubectl apply -n "$NS" -f examples/run.yaml
wait_for "$WAIT_DEMO" "demo Succeeded" phase_is demo Succeeded
kubectl get pnp -n "$NS" demo
copy_out demo "$OUT/demo"
"$PYTHON" tests/e2e/kind_tool.py check "$OUT/demo" --frames 512
delete_and_check demo "$WAIT_DELETE_DEMO" "$WAIT_GONE_DEMO"

log "a longer run, scaled 1 -> 2 inference pods while it streams"
kubectl apply -n "$NS" -f "$OUT/long.yaml"
wait_for "$WAIT_LONG_RUNNING" "demo-long Running" phase_is demo-long Running
wait_for "$WAIT_LONG_READY" "1/1 inference" inference_column_is demo-long 1/1
kubectl scale -n "$NS" pnp/demo-long --replicas=2
wait_for "$WAIT_SCALE" "the inference group at 2" inference_replicas_are demo-long 2
wait_for "$WAIT_SCALED_READY" "2/2 inference in kubectl get pnp" \
  inference_column_is demo-long 2/2
kubectl get pnp -n "$NS" demo-long
wait_for "$WAIT_LONG_DONE" "demo-long Succeeded" phase_is demo-long Succeeded
copy_out demo-long "$OUT/demo-long"
"$PYTHON" tests/e2e/kind_tool.py check "$OUT/demo-long" --frames 1536 --min-recovery 0.95
delete_and_check demo-long "$WAIT_DELETE_LONG" "$WAIT_GONE_LONG"

log "kind e2e passed"
