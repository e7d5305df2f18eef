# One entry point for the usual chores.
.PHONY: fmt lint test ci bench build

build:
	cargo build --release

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

# The e-mail test uses the aiosmtpd venv that .ci/run makes, when it exists.
test:
	if [ -x target/ci-venv/bin/python ]; then export TANDEM_TEST_PYTHON=$$PWD/target/ci-venv/bin/python; fi; \
	cargo test --workspace

ci:
	bash .ci/run

bench: build
	bash bench/proxy
	python3 bench/deploy
	python3 bench/pipeline
	bash bench/probes
	bash bench/upgrade
