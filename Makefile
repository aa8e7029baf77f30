# consorzio — the two commands a new user needs:
#   make run    build everything, start the local control plane, install the CRDs and run the operator
#   make test   the whole test suite, against the local control plane
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CLUSTER := tests/cluster
# Two cores: cargo's own parallelism plus two test threads keeps the control plane responsive.
TEST_THREADS ?= 2

.PHONY: test test-unit cluster-up cluster-down cluster-selftest lint fmt crds

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
