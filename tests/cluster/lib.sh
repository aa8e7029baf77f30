# Shared by tests/cluster/up and tests/cluster/down. Not meant to be run on its own.

# Pinned versions. Changing one rebuilds what depends on it (and only that).
KUBERNETES_VERSION=v1.35.8
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0
GO_MIN_VERSION=1.25

repo="$(cd "$here/../.." && pwd)"
dir="${CONSORZIO_CLUSTER_DIR:-$repo/target/cluster}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
kcp="$dir/bin/kcp"
kubectl="$dir/bin/kubectl"
export KUBECONFIG="$dir/kubeconfig"
components=(cert-manager kwok kube-scheduler kube-controller-manager kube-apiserver etcd)

die() {
  echo "tests/cluster: $*" >&2
  exit 1
}

# Prints the last lines of a component's log, to show why it failed.
log_tail() {
  local log="$dir/logs/$1.log"
  [[ -f "$log" ]] || return 0
  echo "---- last lines of $log ----" >&2
  tail -n 25 "$log" >&2
  echo "----" >&2
}

# The pid of a component we started, if that process is still alive and is ours.
alive_pid() {
  local file="$dir/pids/$1.pid" pid
  [[ -f "$file" ]] || return 1
  pid="$(<"$file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # A pid can be reused by an unrelated process after a reboot: only trust it when the process
  # runs one of our binaries.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/bin/" || return 1
  echo "$pid"
}

stop_component() {
  stop_components "$1"
}

# Sends TERM to every named component at once, then KILL to those still running after 10s.
stop_components() {
  local name pid pids=()
  for name in "$@"; do
    if pid="$(alive_pid "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$dir/pids/$name.pid"
  done
  local running
  for _ in $(seq 50); do
    running=false
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=true; done
    $running || return 0
    sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

stop_all() {
  stop_components cert-manager kwok kube-scheduler kube-controller-manager kube-apiserver
  stop_components etcd
}

cluster_healthy() {
  for name in "${components[@]}"; do alive_pid "$name" >/dev/null || return 1; done
  [[ -x "$kubectl" && -f "$dir/kubeconfig" ]] || return 1
  [[ "$("$kubectl" get --raw /readyz --request-timeout=5s 2>/dev/null)" == ok ]]
}

# start NAME COMMAND ARGS...: runs a component in its own session, logging to logs/NAME.log.
start() {
  local name="$1"
  shift
  setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/pids/$name.pid"
  started+=("$name")
}

# wait_until WHAT SECONDS COMMAND...: polls COMMAND until it succeeds. Fails, naming WHAT and
# showing its log, on timeout or as soon as any started component has exited.
wait_until() {
  local what="$1" seconds="$2" deadline name
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    for name in "${started[@]}"; do
      if ! alive_pid "$name" >/dev/null; then
        log_tail "$name"
        die "$name exited during start (log: $dir/logs/$name.log)"
      fi
    done
    if ((SECONDS >= deadline)); then
      log_tail "${what%% *}"
      die "$what not ready after ${seconds}s (logs: $dir/logs/)"
    fi
    sleep 0.2
  done
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The apiserver refuses a loopback advertise address, so give it the host's first address.
advertise_ip() {
  local ip
  ip="$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9.]+$' | grep -v '^127\.' | head -n1 || true)"
  echo "${ip:-192.0.2.1}"
}

check_go() {
  command -v go >/dev/null || die "go is not installed: install Go $GO_MIN_VERSION or newer (https://go.dev/doc/install)"
  local have
  have="$(go env GOVERSION 2>/dev/null | sed -E 's/^go([0-9]+\.[0-9]+).*/\1/')"
  [[ -n "$have" ]] || die "cannot read the Go version from 'go env GOVERSION'"
  if [[ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$have" | sort -V | head -n1)" != "$GO_MIN_VERSION" ]]; then
    die "go $have is too old: the control plane needs Go $GO_MIN_VERSION or newer"
  fi
}

# build NAME STAMP COMMAND...: runs COMMAND unless bin/NAME exists and was built from STAMP.
build() {
  local name="$1" stamp="$2"
  shift 2
  if [[ -x "$dir/bin/$name" && "$(cat "$dir/bin/.$name.stamp" 2>/dev/null)" == "$stamp" ]]; then
    return 0
  fi
  check_go
  echo "building $name (first build of the control plane takes a while; Go's cache makes later ones fast)" >&2
  local t0=$SECONDS
  if ! "$@" >"$dir/logs/build-$name.log" 2>&1; then
    log_tail "build-$name"
    die "building $name failed (log: $dir/logs/build-$name.log)"
  fi
  echo "$stamp" >"$dir/bin/.$name.stamp"
  echo "built $name in $((SECONDS - t0))s" >&2
}

kcp_ldflags() {
  local minor="${KUBERNETES_VERSION#v1.}"
  minor="${minor%%.*}"
  local kv
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for kv in "gitVersion=$KUBERNETES_VERSION" gitMajor=1 "gitMinor=$minor" gitTreeState=clean \
      gitCommit=0000000000000000000000000000000000000000 buildDate=1970-01-01T00:00:00Z; do
      printf -- "-X '%s.%s' " "$pkg" "$kv"
    done
  done
}

build_all() {
  local stamp
  stamp="$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-16) $(kcp_ldflags | sha256sum | cut -c1-16) $(go env GOVERSION 2>/dev/null || echo none)"
  build kcp "$stamp" bash -c 'cd "$1" && go build -trimpath -ldflags "$2" -o "$3" .' _ "$here" "$(kcp_ldflags)" "$kcp"
  ln -sf kcp "$dir/bin/kubectl"
  build kwok "$KWOK_VERSION" env GOBIN="$dir/bin" go install -trimpath "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  build helm "$HELM_VERSION" env GOBIN="$dir/bin" go install -trimpath "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  stamp="$(cat "$here/cert-manager/go.mod" "$here/cert-manager/go.sum" "$here/cert-manager/main.go" | sha256sum | cut -c1-16) $(go env GOVERSION 2>/dev/null || echo none)"
  build cert-manager "$stamp" bash -c 'cd "$1" && go build -trimpath -o "$2" .' _ "$here/cert-manager" "$dir/bin/cert-manager"
}

generate_pki() {
  local p="$dir/pki"
  command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"
  if [[ ! -f "$p/ca.crt" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=consorzio-local-ca" \
      -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
    openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
    openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
    signed_cert admin "/O=system:masters/CN=consorzio-admin" "extendedKeyUsage=clientAuth"
  fi
  # The serving certificate names the host address, which may change between runs.
  signed_cert apiserver "/CN=kube-apiserver" \
    "extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$(advertise_ip),IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
}

# signed_cert NAME SUBJECT EXTENSIONS: a key and a certificate signed by the local CA.
signed_cert() {
  local p="$dir/pki" name="$1"
  openssl req -new -newkey rsa:2048 -nodes -subj "$2" -keyout "$p/$name.key" -out "$p/$name.csr" 2>/dev/null
  printf '%s\n' "$3" >"$p/$name.ext"
  openssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial \
    -days 3650 -extfile "$p/$name.ext" -out "$p/$name.crt" 2>/dev/null
}

write_kubeconfig() {
  local port="$1" p="$dir/pki"
  cat >"$dir/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: consorzio-local
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(base64 -w0 <"$p/ca.crt")
users:
- name: consorzio-admin
  user:
    client-certificate-data: $(base64 -w0 <"$p/admin.crt")
    client-key-data: $(base64 -w0 <"$p/admin.key")
contexts:
- name: consorzio-local
  context:
    cluster: consorzio-local
    user: consorzio-admin
current-context: consorzio-local
EOF
  mv "$dir/kubeconfig.tmp" "$dir/kubeconfig"
  # The operator's identity: the admin certificate, impersonating the chart's ServiceAccount, so
  # that the operator runs under its real RBAC and admission policies (deploy/rbac/operator.yaml).
  awk '
    { print }
    /client-key-data:/ {
      print "    as: system:serviceaccount:consorzio:consorzio"
      print "    as-groups: [system:serviceaccounts, system:serviceaccounts:consorzio, system:authenticated]"
    }' "$dir/kubeconfig" >"$dir/operator-kubeconfig.tmp"
  mv "$dir/operator-kubeconfig.tmp" "$dir/operator-kubeconfig"
}

# The operator's namespace, ServiceAccount, RBAC and admission policies, and the tenant roles, as
# the chart installs them: every test and the demo run the operator under them.
# A failure is reported, not fatal: `make manifests` needs the cluster's helm to regenerate a
# broken file (the tests apply them again, and fail on an error).
# The CRDs of the operators listed in operators.txt, from the Go module cache (downloaded once).
# SKIP_OPERATOR_CRDS=1 leaves them out (a cluster without them: the operator says what to install).
install_operator_crds() {
  [[ -n "${SKIP_OPERATOR_CRDS:-}" ]] && return 0
  local module version files mod_dir args=()
  while read -r module version files; do
    [[ -z "$module" || "$module" == \#* ]] && continue
    mod_dir=$(cd "$dir" && GOFLAGS=-mod=mod go mod download -json "$module@$version" | jq -r .Dir) ||
      die "go mod download $module@$version failed"
    for f in $files; do args+=(-f "$mod_dir/$f"); done
  done <"$here/operators.txt"
  "$kubectl" apply --server-side --force-conflicts "${args[@]}" >/dev/null
  "$kubectl" wait --for=condition=Established --timeout=30s crd/certificates.cert-manager.io \
    crd/clusterissuers.cert-manager.io >/dev/null
  # The rig's CA, which cert-manager's controller (started by up) issues.
  "$kubectl" apply --server-side --force-conflicts -f "$here/issuers.yaml" >/dev/null
}

install_platform() {
  local repo="$here/../.."
  "$kubectl" apply --server-side --force-conflicts -f "$here/platform.yaml" \
    -f "$repo/deploy/namespace.yaml" \
    -f "$repo/deploy/rbac/operator.yaml" -f "$repo/deploy/rbac/tenant-roles.yaml" >/dev/null ||
    echo "warning: deploy/rbac could not be applied (see above); run make manifests" >&2
  install_operator_crds
}

# The default StorageClass, whose volumes kwok provisions (see kwok.yaml). A claim is bound once
# a pod that uses it is scheduled (WaitForFirstConsumer, as with most clouds' disks): the scheduler
# picks the node and waits for the volume, instead of retrying every waiting pod at each volume
# event. The binding mode cannot change, so a class from an older cluster is replaced.
register_storage_class() {
  local mode
  mode=$("$kubectl" get storageclass kwok-volume -o 'jsonpath={.volumeBindingMode}' 2>/dev/null || true)
  if [[ -n "$mode" && "$mode" != WaitForFirstConsumer ]]; then
    "$kubectl" delete storageclass kwok-volume >/dev/null
  fi
  "$kubectl" apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: kwok-volume
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kwok.x-k8s.io/volume
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
EOF
}

register_fake_nodes() {
  local n="$1" i
  for ((i = 0; i < n; i++)); do
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
spec:
  taints:
  - key: kwok.x-k8s.io/node
    value: fake
    effect: NoSchedule
EOF
  done | "$kubectl" apply -f - >/dev/null
}
