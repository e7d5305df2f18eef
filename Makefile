# One entry point for the usual chores.
.PHONY: fmt lint test ci bench build

build:
	cargo build --release

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

test:
	cargo test --workspace

ci:
	bash .ci/run

bench: build
	bash bench/proxy
	python3 bench/deploy
	python3 bench/pipeline
	bash bench/probes
