# consorzio — the two commands a new user needs:
#   make run    build everything, start the local control plane, install the CRDs and run the operator
#   make test   the whole test suite, against the local control plane
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CLUSTER := tests/cluster
# Two cores: cargo's own parallelism plus two test threads keeps the control plane responsive.
TEST_THREADS ?= 2

.PHONY: run bench bench-controllers test test-unit cluster-up cluster-down cluster-selftest lint fmt crds manifests

METRICS_ADDR ?= 127.0.0.1:8080

# The demo: the local control plane, the CRDs and tenant roles, the example comuni and service
# catalogue, and the operator in the foreground (Ctrl-C stops it; the cluster keeps running).
run: cluster-up
	cargo build -p consorzio -p consorzio-testkit --bins
	source target/cluster/env && \
	  kubectl apply --server-side -f crds/ && \
	  kubectl wait --for=condition=Established crd/municipalities.consorzio.io crd/sharedservices.consorzio.io && \
	  kubectl apply --server-side -f deploy/namespace.yaml -f deploy/rbac/ && \
	  kubectl apply --server-side -f deploy/platform/ -f deploy/examples/ && \
	  echo && \
	  echo "The operator runs below. In another terminal:" && \
	  echo "  source target/cluster/env" && \
	  echo "  kubectl get mun                     # the comuni, with their namespace and readiness" && \
	  echo "  kubectl get ssvc                    # the shared services" && \
	  echo "  kubectl get clusters.postgresql.cnpg.io,mariadbs.k8s.mariadb.com -A   # their databases" && \
	  echo "  kubectl get all,quota,netpol,rolebinding -n comune-lugano" && \
	  echo "  curl -s http://$(METRICS_ADDR)/metrics | grep ^consorzio_" && \
	  echo "  kubectl get certificates.cert-manager.io -A   # a certificate for every host (the Ticino cities'" && \
	  echo "      nextcloud names their ACME issuer, not here: those stay not ready, as their entries say)" && \
	  echo "(cert-manager's controllers run in the local control plane; CloudNativePG and mariadb-operator cannot:" && \
	  echo " target/debug/play-operators sets their objects' status as they would, as kwok plays the kubelet)" && \
	  echo && \
	  { target/debug/play-operators & player=$$!; trap 'kill $$player' EXIT; \
	    KUBECONFIG=target/cluster/operator-kubeconfig target/debug/consorzio run --metrics-addr $(METRICS_ADDR) --pod-toleration kwok.x-k8s.io/node:NoSchedule \
	    --cluster-issuer consorzio-demo --leader-election-namespace consorzio; }

test: cluster-up
	cargo test --workspace --all-targets --no-fail-fast -- --test-threads=$(TEST_THREADS)
	$(CLUSTER)/selftest

# Tests that need no cluster.
test-unit:
	cargo test --workspace --lib --bins

cluster-up:
	$(CLUSTER)/up

cluster-down:
	$(CLUSTER)/down

cluster-selftest: cluster-up
	$(CLUSTER)/selftest

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# Regenerates crds/ from the Rust types in crates/api.
crds:
	cargo run --quiet -p consorzio -- crds > crds/consorzio.io.yaml
	cp crds/consorzio.io.yaml charts/consorzio/crds/consorzio.io.yaml

# The plain manifests in deploy/, rendered from the chart (a test keeps them in sync).
HELM = target/cluster/bin/helm
manifests: cluster-up crds
	$(HELM) template consorzio charts/consorzio --namespace consorzio --include-crds > deploy/consorzio.yaml
	$(HELM) template consorzio charts/consorzio --namespace consorzio \
	  --show-only templates/tenant-roles.yaml > deploy/rbac/tenant-roles.yaml
	$(HELM) template consorzio charts/consorzio --namespace consorzio \
	  --show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml \
	  --show-only templates/admission-policies.yaml > deploy/rbac/operator.yaml

# The fleet benchmark: Italy's comuni (BENCH_SIZES of them, one size after another) against the
# local control plane and against the physical limit; prints a table and writes
# docs/benchmarks.md and its plot. Release build, the operator as its own process.
BENCH_SIZES ?= 500
bench: cluster-up
	cargo build --release -p consorzio -p consorzio-bench
	target/release/consorzio-bench fleet --municipalities $(BENCH_SIZES) --report docs/benchmarks.md

# The controllers' own benchmarks: onboarding latency, memory, writes per joining comune, and
# memory against 1 MB objects labelled as consorzio's in a namespace it does not manage.
bench-controllers: cluster-up
	cargo build --release -p consorzio -p consorzio-bench
	target/release/consorzio-bench onboarding --municipalities 50
	target/release/consorzio-bench memory --municipalities 500
	target/release/consorzio-bench join --sizes 10,100,1000
	target/release/consorzio-bench foreign --configmaps 100 --kib 900
