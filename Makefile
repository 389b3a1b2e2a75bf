# pe_failover — developer entry points.
#
#   make demo   the module's job in a sandbox on this machine
#   make test   every check CI runs
#
# Both first install what is missing on Debian 12 (apt-get, as root), then
# build the native extension for the system Ruby.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Debian packages the build, the tests and the demo need.
DEB_PACKAGES := build-essential ruby ruby-dev rake libclang-dev pkg-config libssl-dev zlib1g-dev \
	puppet-agent puppet-module-puppetlabs-stdlib puppet-lint metadata-json-lint puppet-strings \
	ruby-rspec ruby-rspec-puppet ruby-puppetlabs-spec-helper ruby-rspec-puppet-facts \
	ruby-puppet-resource-api ruby-webrick openssl openssh-server openssh-client rsync b3sum \
	inotify-tools util-linux procps

CARGO ?= cargo

.PHONY: help deps toolchain build compile test test-rust test-ruby lint demo bench package clean

help:
	@echo "make demo    run the demo (installs missing packages, builds)"
	@echo "make test    run every check: rustfmt, clippy, rustdoc, cargo test, rspec, puppet-lint, metadata-json-lint, REFERENCE.md current"
	@echo "make bench   run the benchmarks"
	@echo "make package write pkg/ipcrm-pe_failover-<version>.tar.gz"

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed$$' || echo "$$p"; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing missing Debian packages: $$missing"; \
	  if [ "$$(id -u)" -ne 0 ]; then echo "run as root, or: sudo apt-get install $$missing" >&2; exit 1; fi; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

toolchain:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy

compile: deps toolchain
	rake compile

build: compile

test: deps toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps --locked
	$(CARGO) test --workspace --locked
	rake compile
	rspec --format progress spec/functions spec/unit $(wildcard spec/classes) $(wildcard spec/emulator) spec/acceptance
	$(MAKE) --no-print-directory lint

lint:
	metadata-json-lint --strict-license metadata.json
	puppet-lint --fail-on-warnings manifests
	rake reference:check

demo: compile
	ruby spec/support/demo.rb

bench: compile
	$(CARGO) bench -p pe_failover_core --bench scan --bench replicate --bench vs_rsync --bench classifier

package: compile
	rake build

clean:
	rm -rf target pkg spec/fixtures/modules spec/fixtures/manifests lib/puppet_x/pe_failover/*/pe_failover_native.so
