#!/usr/bin/env bash
# The whole product on a real cluster, as a user would run it, then torn down:
# create a cluster, build and load the image, `helm install` the chart, apply the example
# TrainingRun, wait for Succeeded, show the results from S3.
#
#   sudo hack/cluster-e2e.sh                  # the single node of hack/local-cluster.sh
#   hack/cluster-e2e.sh --cluster kind        # a kind cluster (Docker + kind on PATH)
#   hack/cluster-e2e.sh --keep                # leave everything running to look around
#
# The results go to an S3 server (moto, from the project's virtualenv) listening on the
# address the cluster's pods reach the host by: the node bridge of the local cluster, the
# gateway of kind's Docker network. The e2e test tier (tests/e2e/test_cluster.py) runs the
# same flow with assertions, plus fault injection.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: hack/cluster-e2e.sh [--cluster local|kind] [--keep] [-h]

  --cluster local  (default when root on Linux) hack/local-cluster.sh's single node
  --cluster kind   a kind cluster named pulse-e2e; needs Docker and kind on PATH, and a
                   node image kind can use (its default pulls kindest/node; set
                   PULSE_KIND_NODE_IMAGE to use another)
  --keep           do not tear down: cluster, release, S3 server stay up
Environment:
  PULSE_VENV       virtualenv with the project's test extras (default: .venv; created
                   when missing) for moto_server and the results read-back
EOF
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly RELEASE="pulse" RELEASE_NAMESPACE="pulse-system" RUN_NAMESPACE="pulse-e2e"
readonly EXAMPLE="manifests/examples/trainingrun-synthetic.yaml"
readonly KIND_CLUSTER="pulse-e2e" BUCKET="pulse-results"
readonly VENV="${PULSE_VENV:-.venv}"
WORK="$(mktemp -d)"
readonly WORK

log() { printf 'cluster-e2e: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

cluster="local"
[[ $(id -u) -eq 0 ]] || cluster="kind"
keep=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cluster)
      cluster="${2:-}"
      shift 2
      ;;
    --keep)
      keep=1
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
done
[[ "${cluster}" == local || "${cluster}" == kind ]] || die "--cluster is local or kind, not '${cluster}'"

# --- what is needed, and where it is missing, say so --------------------------------

if ! { command -v docker >/dev/null && docker info >/dev/null 2>&1; }; then
  die "no Docker engine answers 'docker info': start Docker (on Debian: hack/docker-setup.sh)"
fi
if [[ "${cluster}" == kind ]]; then
  command -v kind >/dev/null \
    || die "kind is not on PATH: 'go install sigs.k8s.io/kind@v0.33.0' builds it from the Go module proxy; kind then needs a node image (kindest/node from a registry, or PULSE_KIND_NODE_IMAGE); without either, run as root with --cluster local"
else
  [[ $(id -u) -eq 0 ]] || die "--cluster local runs a kubelet and needs root: sudo $0"
fi
if [[ ! -x "${VENV}/bin/moto_server" ]]; then
  log "creating ${VENV} with the project's test extras (moto, boto3)"
  python3 -m venv "${VENV}"
  "${VENV}/bin/python" -m pip install --quiet -e ".[operator,test]" "python-dateutil<3"
fi
eval "$(hack/envtest.sh)"
kubectl() { "${KUBEBUILDER_ASSETS}/kubectl" "$@"; }
helm() { "${KUBEBUILDER_ASSETS}/helm" "$@"; }

moto_pid=""
teardown() {
  local status=$?
  if [[ ${keep} -eq 1 ]]; then
    log "kept: KUBECONFIG=${KUBECONFIG}; S3 at ${endpoint:-?} (moto pid ${moto_pid})"
    exit "${status}"
  fi
  log "tearing down"
  [[ -n "${moto_pid}" ]] && kill "${moto_pid}" 2>/dev/null
  if [[ "${cluster}" == kind ]]; then
    kind delete cluster --name "${KIND_CLUSTER}" >&2 || true
  else
    hack/local-cluster.sh down || true
  fi
  rm -rf "${WORK}"
  exit "${status}"
}
trap teardown EXIT

# --- cluster and image --------------------------------------------------------------

start=${SECONDS}
image="$(hack/build-image.sh | tail -n 1)"
if [[ "${cluster}" == kind ]]; then
  kind create cluster --name "${KIND_CLUSTER}" --wait 5m \
    ${PULSE_KIND_NODE_IMAGE:+--image "${PULSE_KIND_NODE_IMAGE}"} >&2
  export KUBECONFIG="${WORK}/kubeconfig"
  kind get kubeconfig --name "${KIND_CLUSTER}" >"${KUBECONFIG}"
  kind load docker-image --name "${KIND_CLUSTER}" "${image}" >&2
  # Pods reach the host through the gateway of kind's Docker network.
  s3_host="$(docker network inspect kind --format '{{(index .IPAM.Config 0).Gateway}}')"
else
  eval "$(hack/local-cluster.sh up)"
  hack/local-cluster.sh load "${image}"
  s3_host="$(kubectl get node -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')"
fi
log "cluster ready with ${image} in $((SECONDS - start)) s"

# --- S3, chart, run -------------------------------------------------------------------

port="$("${VENV}/bin/python" -c "import socket; s = socket.socket(); s.bind(('${s3_host}', 0)); print(s.getsockname()[1])")"
endpoint="http://${s3_host}:${port}"
"${VENV}/bin/moto_server" -H "${s3_host}" -p "${port}" >"${WORK}/moto.log" 2>&1 &
moto_pid=$!
export AWS_ACCESS_KEY_ID="pulse-e2e" AWS_SECRET_ACCESS_KEY="pulse-e2e-secret" AWS_DEFAULT_REGION="us-east-1"
for _ in $(seq 50); do
  curl -fs "${endpoint}/moto-api/" >/dev/null && break
  sleep 0.2
done
"${VENV}/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='${endpoint}').create_bucket(Bucket='${BUCKET}')"

log "helm install ${RELEASE} (namespace ${RELEASE_NAMESPACE})"
helm upgrade --install "${RELEASE}" charts/pulse-recursive-training \
  --namespace "${RELEASE_NAMESPACE}" --create-namespace --wait --timeout 10m \
  --set "image.repository=${image%:*}" --set "image.tag=${image##*:}" \
  --set image.pullPolicy=IfNotPresent \
  --set operator.runDefaults.cpu=300m --set operator.runDefaults.memory=1Gi >&2

kubectl create namespace "${RUN_NAMESPACE}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "${RUN_NAMESPACE}" create secret generic pulse-s3 \
  --from-literal=AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID}" \
  --from-literal=AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY}" \
  --from-literal=AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION}" \
  --from-literal=AWS_ENDPOINT_URL="${endpoint}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

applied=${SECONDS}
kubectl -n "${RUN_NAMESPACE}" apply -f "${EXAMPLE}" >&2
if ! kubectl -n "${RUN_NAMESPACE}" wait trainingrun/synthetic \
  --for=jsonpath='{.status.phase}'=Succeeded --timeout=10m >&2; then
  kubectl -n "${RUN_NAMESPACE}" describe trainingrun synthetic >&2
  kubectl -n "${RUN_NAMESPACE}" logs job/synthetic-driver --tail=50 >&2 || true
  die "the example run did not succeed; see above"
fi
log "kubectl apply -> Succeeded in $((SECONDS - applied)) s"

# --- results --------------------------------------------------------------------------

kubectl -n "${RUN_NAMESPACE}" get trainingrun synthetic -o wide
"${VENV}/bin/python" - "${endpoint}" "${BUCKET}" <<'PY'
import json
import sys

import boto3

endpoint, bucket = sys.argv[1:]
body = boto3.client("s3", endpoint_url=endpoint).get_object(
    Bucket=bucket, Key="synthetic/results.json")["Body"].read()
print(json.dumps(json.loads(body)["metrics"]["headline"], indent=2))
PY
