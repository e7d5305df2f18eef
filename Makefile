# One entry point for the usual chores.
.PHONY: fmt lint test ci bench build

build:
	cargo build --release

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

# Installs what the tests need (.ci/setup: Debian packages such as pebble
# and curl, aiosmtpd in a venv for the e-mail tests), then runs them all.
test:
	bash .ci/setup
	TANDEM_TEST_PYTHON=$$PWD/target/ci-venv/bin/python cargo test --workspace

ci:
	bash .ci/run

bench: build
	bash bench/proxy
	python3 bench/deploy
	python3 bench/pipeline
	bash bench/probes
	bash bench/upgrade
	bash bench/isolation
	python3 bench/alerts
