#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, from Go modules and Debian packages only.
#
#   sudo hack/local-cluster.sh up            # start it (idempotent); prints the KUBECONFIG export
#   sudo hack/local-cluster.sh load IMAGE..  # copy Docker images into the node (no registry)
#   sudo hack/local-cluster.sh restart-apiserver [SECONDS]  # an API server outage, for fault tests
#   sudo hack/local-cluster.sh network-policies on|off  # NetworkPolicy enforcement (on after up)
#   sudo hack/local-cluster.sh down          # stop it, remove every pod and all cluster state
#
# What kind gives users on a laptop, built from parts these machines can have: the control
# plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and the node
# (kubelet, kube-proxy in iptables mode) run as host processes, compiled from Go modules by
# hack/envtest.sh; containers run in Debian's containerd and runc, networked by Debian's CNI
# plugins on a bridge of their own; CoreDNS (also from Go modules) serves cluster DNS; the
# pause and CoreDNS images are made locally from those binaries; kube-network-policies (also
# from Go modules, hack/kube-network-policies.sh) enforces NetworkPolicy, which the bridge
# plugin does not. Everything listens on the bridge address or loopback, so nothing is
# reachable from outside this machine.
# Why this instead of a kind node image, and the measured start times: docs/local-cluster.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: hack/local-cluster.sh COMMAND [ARGS]

A single-node Kubernetes (control plane + kubelet + kube-proxy + CoreDNS) running as
processes on this Linux machine, with containerd for containers and kube-network-policies
enforcing NetworkPolicy. Needs root, Docker (for the images) and, on Debian or Ubuntu,
installs containerd, runc, CNI plugins, iptables, nftables and conntrack with apt when
missing.

Commands:
  up           start the cluster, or report it running; prints `export KUBECONFIG=...`
               (the cluster before it keeps its logs in logs/previous)
  down         delete every pod, stop every component, remove the cluster's state
               (the binaries, the node's image store and the logs of the last run stay)
  status       print each component's PID and health; exit 1 unless all run
  load IMAGE.. copy images from the Docker engine into the node's containerd
               (skipped for an image whose ID was loaded before)
  restart-apiserver [SECONDS]
               stop the API server, keep it down SECONDS (default 0), start it again
               with the same flags and wait until it is ready (everything else runs on)
  network-policies on|off
               start (as `up` does) or stop enforcing NetworkPolicy: the enforcer's
               DaemonSet and the rules that queue new connections to it; off, every
               policy is ignored again, as by the bridge plugin alone
  kubeconfig   print the admin kubeconfig's path
  -h, --help   show this help

Environment:
  PULSE_CLUSTER_HOME  cache and state root (default: $HOME/.cache/pulse-cluster)
  PULSE_CLUSTER_CIDR  the node's pod /24; its .1 is the node and API server address
                      (default: 10.244.0.0/24)

Progress and timings go to stderr; stdout carries only results.
EOF
}

readonly NODE_NAME="pulse-node"
readonly BRIDGE="pulse0"
readonly POD_CIDR="${PULSE_CLUSTER_CIDR:-10.244.0.0/24}"
readonly NODE_IP="${POD_CIDR%.*}.1"
readonly SERVICE_CIDR="10.96.0.0/16"
readonly KUBERNETES_SERVICE_IP="10.96.0.1"
readonly DNS_SERVICE_IP="10.96.0.10"
readonly CLUSTER_DOMAIN="cluster.local"
readonly API_PORT=6443
readonly ETCD_CLIENT_PORT=23790
readonly ETCD_PEER_PORT=23800
# How long one component may take to become healthy before `up` gives up with its log.
readonly START_TIMEOUT_S=120

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/daemon.sh
source "${script_dir}/daemon.sh"
readonly CACHE_HOME="${PULSE_CLUSTER_HOME:-${HOME}/.cache/pulse-cluster}"
# Kept across `down`: the node's image store, so a warm start imports nothing.
readonly CONTAINERD_ROOT="${CACHE_HOME}/containerd"
readonly LOADED_DIR="${CACHE_HOME}/loaded-images"
# Removed by `down`: certificates, etcd data, configs, the kubelet's pod directories.
readonly STATE="${CACHE_HOME}/state"
readonly PKI="${STATE}/pki"
readonly LOGS="${CACHE_HOME}/logs"
# Sockets and PID files: a short path (unix socket paths are limited to 108 bytes).
readonly RUN_DIR="/run/pulse-cluster"
readonly CONTAINERD_SOCK="${RUN_DIR}/containerd.sock"
readonly ADMIN_KUBECONFIG="${STATE}/admin.kubeconfig"
readonly PAUSE_IMAGE_REPO="local/pause"
readonly COREDNS_IMAGE_REPO="local/coredns"
readonly NETPOL_IMAGE_REPO="local/kube-network-policies"
# The netfilter queue the enforcer reads (its --nfqueue-id), and the iptables chain that
# feeds it on kernels without nftables' queue statement (steer_to_enforcer).
readonly NETPOL_QUEUE=100
readonly NETPOL_CHAIN="PULSE-NETWORK-POLICIES"
# Every component, as `status` lists them.
readonly COMPONENTS=(kube-controller-manager kube-scheduler kubelet kube-proxy kube-apiserver etcd containerd)

log() { printf 'local-cluster: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# --- binaries and packages ----------------------------------------------------------

require_root() {
  [[ $(id -u) -eq 0 ]] || die "run as root (the kubelet manages cgroups, mounts and iptables): sudo $0 $*"
  [[ "$(uname -s)" == Linux ]] || die "needs Linux (kubelet, containerd, iptables); on macOS or Windows use kind"
}

install_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v nft >/dev/null || missing+=(nftables)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v ip >/dev/null || missing+=(iproute2)
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "install ${missing[*]} with your package manager (CNI plugins into /usr/lib/cni)"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Sets CONTROL_BIN, NODE_BIN, NETPOL_BIN and NETPOL_IMAGE; builds the binaries on first use
# (hack/envtest.sh, hack/kube-network-policies.sh).
find_binaries() {
  eval "$("${script_dir}/envtest.sh")"
  CONTROL_BIN="${KUBEBUILDER_ASSETS}"
  NODE_BIN="$("${script_dir}/envtest.sh" node)"
  NETPOL_BIN="$("${script_dir}/kube-network-policies.sh")"
  NETPOL_IMAGE="${NETPOL_IMAGE_REPO}:$("${script_dir}/kube-network-policies.sh" version | tr -d v)"
}

kubectl() { "${CONTROL_BIN}/kubectl" --kubeconfig="${ADMIN_KUBECONFIG}" "$@"; }
ctr() { command ctr --address "${CONTAINERD_SOCK}" --namespace k8s.io "$@"; }

# --- processes ----------------------------------------------------------------------

pid_of() {
  local pid
  pid="$(cat "${RUN_DIR}/$1.pid" 2>/dev/null)" || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  printf '%s\n' "${pid}"
}

# start NAME BINARY ARGS...: a daemon in its own session, output in logs/NAME.log. The
# subshell execs it (no `cd X &&` in the list), so $! is the component's own PID. It keeps
# none of the caller's other descriptors: under `flock LOCK hack/local-cluster.sh ...` the
# daemon would otherwise hold the caller's lock for as long as it runs.
start() {
  local name="$1"
  shift
  (
    close_inherited_fds
    exec setsid nohup "$@" >"${LOGS}/${name}.log" 2>&1 </dev/null
  ) &
  printf '%s\n' "$!" >"${RUN_DIR}/${name}.pid"
}

# wait_for NAME WHAT COMMAND...: poll COMMAND until it succeeds; fail with NAME's log tail.
wait_for() {
  local name="$1" what="$2" waited=0
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ! pid_of "${name}" >/dev/null; then
      tail -n 25 "${LOGS}/${name}.log" >&2
      die "${name} exited before ${what}; its log: ${LOGS}/${name}.log"
    fi
    if ((waited >= START_TIMEOUT_S * 5)); then
      tail -n 25 "${LOGS}/${name}.log" >&2
      die "${name}: no ${what} within ${START_TIMEOUT_S} s; its log: ${LOGS}/${name}.log"
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
}

# stop NAME...: SIGTERM to all of them at once (each takes ~2 s to shut down), then wait
# up to 15 s for each and SIGKILL what is left.
stop() {
  local name pid pids=() waited
  for name in "$@"; do
    if pid="$(pid_of "${name}")"; then
      kill -TERM "${pid}" 2>/dev/null || true
      pids+=("${pid}")
    fi
    rm -f "${RUN_DIR}/${name}.pid"
  done
  for pid in "${pids[@]}"; do
    waited=0
    while kill -0 "${pid}" 2>/dev/null && ((waited < 150)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -KILL "${pid}" 2>/dev/null || true
  done
}

# --- certificates and kubeconfigs -------------------------------------------------

# issue NAME CN [ORG] [SERVER_SANS]: a certificate signed by the cluster CA; with SANs it
# is a serving certificate, otherwise a client certificate.
issue() {
  local name="$1" cn="$2" org="${3:-}" sans="${4:-}" subject usage
  subject="/CN=${cn}"
  [[ -n "${org}" ]] && subject="/O=${org}${subject}"
  usage="extendedKeyUsage=clientAuth"
  [[ -n "${sans}" ]] && usage="extendedKeyUsage=serverAuth,clientAuth
subjectAltName=${sans}"
  openssl req -new -newkey rsa:2048 -nodes -subj "${subject}" \
    -keyout "${PKI}/${name}.key" -out "${PKI}/${name}.csr" 2>/dev/null
  openssl x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" \
    -CAcreateserial -days 30 -out "${PKI}/${name}.crt" -extfile <(printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "${usage}") 2>/dev/null
  rm -f "${PKI}/${name}.csr"
  chmod 600 "${PKI}/${name}.key"
}

# kubeconfig NAME: a kubeconfig for the client certificate NAME.crt/.key.
kubeconfig() {
  local name="$1"
  cat >"${STATE}/${name}.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: pulse-local
    cluster:
      server: https://${NODE_IP}:${API_PORT}
      certificate-authority: ${PKI}/ca.crt
users:
  - name: ${name}
    user:
      client-certificate: ${PKI}/${name}.crt
      client-key: ${PKI}/${name}.key
contexts:
  - name: pulse-local
    context: {cluster: pulse-local, user: ${name}}
current-context: pulse-local
EOF
  chmod 600 "${STATE}/${name}.kubeconfig"
}

make_pki() {
  mkdir -p "${PKI}"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=pulse-local-ca" \
    -keyout "${PKI}/ca.key" -out "${PKI}/ca.crt" 2>/dev/null
  openssl genrsa -out "${PKI}/sa.key" 2048 2>/dev/null
  openssl rsa -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
  chmod 600 "${PKI}/ca.key" "${PKI}/sa.key"
  local service="kubernetes.default.svc"
  issue apiserver kube-apiserver "" \
    "IP:${NODE_IP},IP:${KUBERNETES_SERVICE_IP},DNS:kubernetes,DNS:kubernetes.default,DNS:${service},DNS:${service}.${CLUSTER_DOMAIN},DNS:localhost"
  issue kubelet-serving "system:node:${NODE_NAME}" system:nodes "IP:${NODE_IP},DNS:${NODE_NAME}"
  issue front-proxy-client front-proxy-client
  issue apiserver-kubelet-client kube-apiserver-kubelet-client
  issue admin pulse-local-admin system:masters
  issue kube-controller-manager system:kube-controller-manager
  issue kube-scheduler system:kube-scheduler
  issue kubelet "system:node:${NODE_NAME}" system:nodes
  issue kube-proxy system:kube-proxy
  local name
  for name in admin kube-controller-manager kube-scheduler kubelet kube-proxy; do
    kubeconfig "${name}"
  done
}

# --- network ------------------------------------------------------------------------

setup_network() {
  modprobe br_netfilter 2>/dev/null || true
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] \
    || die "the kernel has no br_netfilter (needed for Services between pods on one bridge)"
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  if ! ip link show "${BRIDGE}" >/dev/null 2>&1; then
    ip link add "${BRIDGE}" type bridge
  fi
  ip addr replace "${NODE_IP}/${POD_CIDR#*/}" dev "${BRIDGE}"
  ip link set "${BRIDGE}" up
  # Docker sets the FORWARD policy to DROP; pod traffic on the bridge must pass.
  local direction
  for direction in -i -o; do
    iptables -C FORWARD "${direction}" "${BRIDGE}" -j ACCEPT 2>/dev/null \
      || iptables -I FORWARD 1 "${direction}" "${BRIDGE}" -j ACCEPT
  done
  mkdir -p "${STATE}/cni"
  cat >"${STATE}/cni/10-pulse.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "pulse",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${BRIDGE}",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "${STATE}/cni-ipam",
        "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${NODE_IP}"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) outlive it and
# `kube-proxy --cleanup`: drop the jumps into them, then the chains. xargs, not a shell,
# splits the quoted comments of `iptables -S`.
remove_kube_chains() {
  local tool table chains
  for tool in iptables ip6tables; do
    command -v "${tool}" >/dev/null || continue
    for table in filter nat mangle; do
      chains="$("${tool}" -t "${table}" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}')" || continue
      [[ -n "${chains}" ]] || continue
      "${tool}" -t "${table}" -S | grep -E -- '^-A [A-Z]+ .*-j KUBE-' | grep -v -- '^-A KUBE-' |
        sed 's/^-A /-D /' | xargs -r -L1 "${tool}" -t "${table}" || true
      printf '%s\n' "${chains}" | xargs -r -n1 "${tool}" -t "${table}" -F
      printf '%s\n' "${chains}" | xargs -r -n1 "${tool}" -t "${table}" -X
    done
  done
}

teardown_network() {
  remove_kube_chains
  unsteer_from_enforcer
  local direction
  for direction in -i -o; do
    while iptables -D FORWARD "${direction}" "${BRIDGE}" -j ACCEPT 2>/dev/null; do :; done
  done
  ip link del "${BRIDGE}" 2>/dev/null || true
}

# --- components ---------------------------------------------------------------------

# CAP_SYS_RESOURCE (bit 24) lets containerd give sandboxes and Guaranteed pods a negative
# oom_score_adj; in a container or sandbox without it, runc fails every pod ("can't get
# final child's PID from pipe") unless scores are kept at containerd's own or above.
has_sys_resource() {
  local effective
  effective="$(awk '/^CapEff:/{print $2}' /proc/self/status)"
  (((0x${effective} >> 24) & 1))
}

start_containerd() {
  mkdir -p "${CONTAINERD_ROOT}"
  local restrict_oom=false
  if ! has_sys_resource; then
    log "no CAP_SYS_RESOURCE here: pods keep oom_score_adj >= containerd's (restrict_oom_score_adj)"
    restrict_oom=true
  fi
  cat >"${STATE}/containerd.toml" <<EOF
version = 2
root = "${CONTAINERD_ROOT}"
state = "${RUN_DIR}/containerd"
[grpc]
  address = "${CONTAINERD_SOCK}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  restrict_oom_score_adj = ${restrict_oom}
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${STATE}/cni"
EOF
  start containerd containerd --config "${STATE}/containerd.toml"
  wait_for containerd "its socket" ctr version
}

start_etcd() {
  start etcd "${CONTROL_BIN}/etcd" \
    --name="${NODE_NAME}" \
    --data-dir="${STATE}/etcd" \
    --listen-client-urls="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --advertise-client-urls="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster="${NODE_NAME}=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync \
    --log-level=warn
  wait_for etcd /health curl -fsS "http://127.0.0.1:${ETCD_CLIENT_PORT}/health"
}

start_apiserver() {
  start kube-apiserver "${CONTROL_BIN}/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:${ETCD_CLIENT_PORT}" \
    --bind-address="${NODE_IP}" \
    --advertise-address="${NODE_IP}" \
    --secure-port="${API_PORT}" \
    --tls-cert-file="${PKI}/apiserver.crt" \
    --tls-private-key-file="${PKI}/apiserver.key" \
    --client-ca-file="${PKI}/ca.crt" \
    --kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt" \
    --kubelet-client-key="${PKI}/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="${PKI}/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --requestheader-client-ca-file="${PKI}/ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="${PKI}/front-proxy-client.crt" \
    --proxy-client-key-file="${PKI}/front-proxy-client.key" \
    --service-account-issuer="https://kubernetes.default.svc.${CLUSTER_DOMAIN}" \
    --service-account-key-file="${PKI}/sa.pub" \
    --service-account-signing-key-file="${PKI}/sa.key" \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true \
    --profiling=false
  wait_for kube-apiserver /readyz curl -fsS --cacert "${PKI}/ca.crt" "https://${NODE_IP}:${API_PORT}/readyz"
  # What kubeadm grants the API server's kubelet client: logs, exec and port-forward
  # (already there when the API server is restarted).
  kubectl get clusterrolebinding kube-apiserver-kubelet-client >/dev/null 2>&1 \
    || kubectl create clusterrolebinding kube-apiserver-kubelet-client \
      --clusterrole=system:kubelet-api-admin --user=kube-apiserver-kubelet-client >/dev/null
}

start_controller_manager() {
  local kubeconfig="${STATE}/kube-controller-manager.kubeconfig"
  start kube-controller-manager "${CONTROL_BIN}/kube-controller-manager" \
    --kubeconfig="${kubeconfig}" \
    --authentication-kubeconfig="${kubeconfig}" \
    --authorization-kubeconfig="${kubeconfig}" \
    --bind-address=127.0.0.1 \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="${PKI}/sa.key" \
    --root-ca-file="${PKI}/ca.crt" \
    --cluster-signing-cert-file="${PKI}/ca.crt" \
    --cluster-signing-key-file="${PKI}/ca.key" \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --cert-dir="${STATE}/kube-controller-manager"
  wait_for kube-controller-manager "the default ServiceAccount" kubectl get serviceaccount default
}

start_scheduler() {
  local kubeconfig="${STATE}/kube-scheduler.kubeconfig"
  start kube-scheduler "${NODE_BIN}/kube-scheduler" \
    --kubeconfig="${kubeconfig}" \
    --authentication-kubeconfig="${kubeconfig}" \
    --authorization-kubeconfig="${kubeconfig}" \
    --bind-address=127.0.0.1 \
    --leader-elect=false
  wait_for kube-scheduler /healthz curl -fsSk https://127.0.0.1:10259/healthz
}

start_kubelet() {
  cat >"${STATE}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: ${PKI}/kubelet-serving.crt
tlsPrivateKeyFile: ${PKI}/kubelet-serving.key
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
cgroupDriver: cgroupfs
# Debian bookworm hosts may still boot cgroup v1, which kubelet 1.35 refuses by default.
failCgroupV1: false
failSwapOn: false
clusterDomain: ${CLUSTER_DOMAIN}
clusterDNS: [${DNS_SERVICE_IP}]
resolvConf: /etc/resolv.conf
# Never garbage-collect images: they were loaded by hand and cannot be pulled again.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
serializeImagePulls: false
EOF
  start kubelet "${NODE_BIN}/kubelet" \
    --config="${STATE}/kubelet.yaml" \
    --kubeconfig="${STATE}/kubelet.kubeconfig" \
    --hostname-override="${NODE_NAME}" \
    --node-ip="${NODE_IP}" \
    --root-dir="${STATE}/kubelet" \
    --cert-dir="${STATE}/kubelet/pki"
  wait_for kubelet "a registered node" kubectl get node "${NODE_NAME}"
}

start_proxy() {
  cat >"${STATE}/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${STATE}/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: ${POD_CIDR}
hostnameOverride: ${NODE_NAME}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# NodePorts only on the bridge address, never on the machine's network interfaces.
nodePortAddresses: [${NODE_IP}/32]
conntrack: {maxPerCore: 0}
EOF
  start kube-proxy "${NODE_BIN}/kube-proxy" --config="${STATE}/kube-proxy.yaml"
  wait_for kube-proxy /healthz curl -fsS http://127.0.0.1:10256/healthz
}

start_coredns() {
  sed -e "s|@DNS_SERVICE_IP@|${DNS_SERVICE_IP}|g" -e "s|@IMAGE@|${COREDNS_IMAGE}|g" \
    -e "s|@CLUSTER_DOMAIN@|${CLUSTER_DOMAIN}|g" "${script_dir}/local-cluster/coredns.yaml" |
    kubectl apply --server-side --field-manager=local-cluster -f - >/dev/null
  kubectl --namespace kube-system rollout status deployment/coredns --timeout="${START_TIMEOUT_S}s" >&2
}

# --- NetworkPolicy enforcement -------------------------------------------------------

# kube-network-policies queues the first packet of every new connection to itself with an
# nftables `queue` rule. A kernel built without CONFIG_NFT_QUEUE (these machines': `nft`
# answers "Could not process rule: No such file or directory") refuses that rule and with it
# the enforcer's whole table, so nothing would reach it. Such kernels may still have the
# xtables NFQUEUE target; kernel_has_nft_queue asks the kernel (a checked, never committed
# transaction) which is the case.
kernel_has_nft_queue() {
  nft --check -f - >/dev/null 2>&1 <<EOF
table inet pulse_queue_probe {
  chain postrouting { type filter hook postrouting priority 0; queue num ${NETPOL_QUEUE} bypass; }
}
EOF
}

# Where nftables cannot queue, queue with iptables what the enforcer's own table would:
# new TCP/UDP/SCTP connections from or to a pod, after kube-proxy's DNAT (POSTROUTING, which
# bridged pod-to-pod packets pass through br_netfilter too), except those of the node's root
# processes (the kubelet's probes; the enforcer skips them the same way). Unlike the
# enforcer's own rules this queues every pod's connections, not only those of pods that a
# policy selects: the enforcer admits a connection no policy covers, at the cost of one
# round trip to it per new connection. --queue-bypass: while no enforcer reads the queue,
# packets pass (policies are not enforced then, as with `network-policies off`).
steer_to_enforcer() {
  kernel_has_nft_queue && return 0
  iptables -t mangle -N "${NETPOL_CHAIN}" 2>/dev/null || iptables -t mangle -F "${NETPOL_CHAIN}"
  iptables -t mangle -A "${NETPOL_CHAIN}" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -t mangle -A "${NETPOL_CHAIN}" -m owner --uid-owner 0 -j RETURN
  local protocol direction
  for protocol in tcp udp sctp; do
    for direction in --source --destination; do
      iptables -t mangle -A "${NETPOL_CHAIN}" -p "${protocol}" "${direction}" "${POD_CIDR}" \
        -j NFQUEUE --queue-num "${NETPOL_QUEUE}" --queue-bypass
    done
  done
  iptables -t mangle -C POSTROUTING -j "${NETPOL_CHAIN}" 2>/dev/null \
    || iptables -t mangle -I POSTROUTING 1 -j "${NETPOL_CHAIN}"
}

unsteer_from_enforcer() {
  command -v iptables >/dev/null || return 0
  while iptables -t mangle -D POSTROUTING -j "${NETPOL_CHAIN}" 2>/dev/null; do :; done
  if iptables -t mangle -F "${NETPOL_CHAIN}" 2>/dev/null; then
    iptables -t mangle -X "${NETPOL_CHAIN}"
  fi
}

# The enforcer's objects, with the image and queue filled in.
netpol_manifest() {
  sed -e "s|@IMAGE@|${NETPOL_IMAGE}|g" -e "s|@QUEUE@|${NETPOL_QUEUE}|g" \
    "${script_dir}/local-cluster/kube-network-policies.yaml"
}

start_network_policies() {
  docker_image_from_binary "${NETPOL_IMAGE}" "${NETPOL_BIN}"
  load_images "${NETPOL_IMAGE}"
  steer_to_enforcer
  netpol_manifest | kubectl apply --server-side --field-manager=local-cluster -f - >/dev/null
  kubectl --namespace kube-system rollout status daemonset/kube-network-policies \
    --timeout="${START_TIMEOUT_S}s" >&2
}

stop_network_policies() {
  netpol_manifest | kubectl delete --ignore-not-found --wait -f - >/dev/null
  unsteer_from_enforcer
}

# --- images -------------------------------------------------------------------------

# docker_image_from_binary REPO:TAG BINARY: a one-file image (the static binary at /).
docker_image_from_binary() {
  local image="$1" binary="$2" dir
  docker image inspect "${image}" >/dev/null 2>&1 && return 0
  dir="$(mktemp -d)"
  cp "${binary}" "${dir}/"
  tar --numeric-owner --owner=0 --group=0 -C "${dir}" -c . |
    docker import --change "ENTRYPOINT [\"/$(basename "${binary}")\"]" - "${image}" >/dev/null
  rm -rf "${dir}"
}

# containerd stores docker.io/library/NAME:TAG for what Docker calls NAME:TAG.
node_has_image() {
  ctr images ls -q | awk -v want="$1" '
    { name = $0; sub(/^docker\.io\/(library\/)?/, "", name); if (name == want) found = 1 }
    END { exit !found }'
}

# load IMAGE...: docker save | ctr import, once per image ID.
load_images() {
  local image id record
  if ! { command -v docker >/dev/null && docker info >/dev/null 2>&1; }; then
    die "no Docker engine answers: run hack/docker-setup.sh (or start Docker)"
  fi
  mkdir -p "${LOADED_DIR}"
  for image in "$@"; do
    id="$(docker image inspect --format '{{.Id}}' "${image}" 2>/dev/null)" \
      || die "Docker has no image ${image}; build it first (hack/build-image.sh)"
    record="${LOADED_DIR}/$(printf '%s' "${image}" | tr '/:' '__')"
    if [[ "$(cat "${record}" 2>/dev/null)" == "${id}" ]] && node_has_image "${image}"; then
      log "${image} already in the node"
      continue
    fi
    local started=${SECONDS}
    docker save "${image}" | ctr images import - >/dev/null
    printf '%s\n' "${id}" >"${record}"
    log "loaded ${image} into the node in $((SECONDS - started)) s"
  done
}

# --- commands -----------------------------------------------------------------------

running() { pid_of kube-apiserver >/dev/null && pid_of kubelet >/dev/null; }

up() {
  require_root up
  if running; then
    log "already running"
    printf 'export KUBECONFIG=%q\n' "${ADMIN_KUBECONFIG}"
    return 0
  fi
  local started=${SECONDS}
  install_packages
  find_binaries
  local built=${SECONDS}
  PAUSE_IMAGE="${PAUSE_IMAGE_REPO}:$(awk '/^pause:/{print $NF}' "${NODE_BIN}/VERSIONS" | tr -d v)"
  COREDNS_IMAGE="${COREDNS_IMAGE_REPO}:$("${NODE_BIN}/coredns" -version | awk -F- 'NR==1{print $2}')"
  down_quietly
  mkdir -p "${STATE}" "${LOGS}" "${RUN_DIR}"
  # The last cluster's logs stay for one more start, in logs/previous: a failed test
  # run's API server and kubelet logs outlive the next `up`.
  rm -rf "${LOGS}/previous" && mkdir -p "${LOGS}/previous"
  find "${LOGS}" -maxdepth 1 -name '*.log' -exec mv -t "${LOGS}/previous" {} +
  make_pki
  setup_network
  start_containerd
  docker_image_from_binary "${PAUSE_IMAGE}" "${NODE_BIN}/pause"
  docker_image_from_binary "${COREDNS_IMAGE}" "${NODE_BIN}/coredns"
  load_images "${PAUSE_IMAGE}" "${COREDNS_IMAGE}"
  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  start_kubelet
  start_proxy
  kubectl wait --for=condition=Ready "node/${NODE_NAME}" --timeout="${START_TIMEOUT_S}s" >/dev/null
  start_coredns
  start_network_policies
  log "up in $((SECONDS - started)) s ($((SECONDS - built)) s after the binaries were ready);" \
    "logs in ${LOGS}"
  printf 'export KUBECONFIG=%q\n' "${ADMIN_KUBECONFIG}"
}

down_quietly() {
  mkdir -p "${RUN_DIR}"
  # Stop what creates or restarts pods, then remove every pod sandbox through the CRI so
  # that the CNI plugin releases addresses and network namespaces.
  stop kube-controller-manager kube-scheduler kubelet kube-proxy
  if pid_of containerd >/dev/null; then
    "${NODE_BIN}/crictl" --runtime-endpoint "unix://${CONTAINERD_SOCK}" --timeout 30s \
      rmp --all --force >/dev/null 2>&1 || log "crictl could not remove every pod sandbox"
  fi
  # The API server drains against a live etcd; stopping both at once costs it 15 s.
  stop kube-apiserver containerd
  stop etcd
  # Anything of ours without a PID file (a crashed `up`, a component started by hand) and
  # container shims: every one names a file under the state or run dir on its command line.
  pkill -KILL -f -- "(${STATE}|${RUN_DIR})/" 2>/dev/null || true
  "${NODE_BIN}/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # Pod volumes (tmpfs service-account tokens) and the node's overlay mounts.
  grep -oE " (${STATE}|${RUN_DIR})/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  teardown_network
  rm -rf "${STATE}" "${RUN_DIR}"
}

down() {
  require_root down
  find_binaries
  local started=${SECONDS}
  down_quietly
  log "down in $((SECONDS - started)) s (images kept in ${CONTAINERD_ROOT}, logs in ${LOGS})"
}

# restart_apiserver [SECONDS]: what an upgrade or a crash of the control plane looks like
# to clients: connections refused for a while, then the same API back (etcd keeps the
# state; kubelet, controllers and pods run on). The log of the first start is kept.
restart_apiserver() {
  local down_s="${1:-0}"
  [[ "${down_s}" =~ ^[0-9]+$ ]] || die "SECONDS must be a whole number, got '${down_s}'"
  require_root restart-apiserver
  running || die "the cluster is not running: hack/local-cluster.sh up"
  find_binaries
  local started=${SECONDS}
  mv -f "${LOGS}/kube-apiserver.log" "${LOGS}/kube-apiserver.before-restart.log"
  stop kube-apiserver
  log "API server stopped; starting it again in ${down_s} s"
  sleep "${down_s}"
  start_apiserver
  log "API server back after $((SECONDS - started)) s"
}

status() {
  local name pid healthy=0
  for name in "${COMPONENTS[@]}"; do
    if pid="$(pid_of "${name}")"; then
      printf '%-24s running (pid %s)\n' "${name}" "${pid}"
    else
      printf '%-24s stopped\n' "${name}"
      healthy=1
    fi
  done
  return "${healthy}"
}

main() {
  local command="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "${command}" in
    up) up ;;
    down) down ;;
    status) status ;;
    load)
      require_root load
      [[ $# -gt 0 ]] || die "name the Docker images to load, e.g. pulse-recursive-training:0.1.0"
      running || die "the cluster is not running: hack/local-cluster.sh up"
      load_images "$@"
      ;;
    restart-apiserver) restart_apiserver "$@" ;;
    network-policies)
      require_root network-policies
      running || die "the cluster is not running: hack/local-cluster.sh up"
      find_binaries
      case "${1:-}" in
        on) start_network_policies ;;
        off) stop_network_policies ;;
        *) die "network-policies takes on or off, got '${1:-}'" ;;
      esac
      ;;
    kubeconfig) printf '%s\n' "${ADMIN_KUBECONFIG}" ;;
    -h | --help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
