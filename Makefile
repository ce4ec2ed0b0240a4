# The commands a person runs. `make dev` serves the API locally; `make test` runs every test.
.PHONY: dev test lint build bench fmt clean-local

dev: ## Run the API on http://127.0.0.1:9000 with embedded stores and the CRM emulators
	./scripts/dev.sh

test: ## Install what the tests need, start moto, run every test, stop what was started
	./scripts/test.sh

lint: ## Formatting, clippy and the SAM template
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cfn-lint infra/template.yaml
	SAM_CLI_TELEMETRY=0 sam validate --lint --region us-east-1

build: ## Release builds of every function for Lambda (arm64)
	cargo lambda build --release --arm64 --workspace

bench: ## Throughput, latency and memory against the HubSpot emulator on loopback (release build)
	cargo build --release -p crm-sync-tests --bins
	./target/release/bench 2000 8

fmt:
	cargo fmt --all

clean-local: ## Forget the local run's connections and records
	rm -rf .local
