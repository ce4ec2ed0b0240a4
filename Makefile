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

FUNCTIONS := platforms test-connection sync-customer sync-appointment sync-lead get-customer sync-batch sync-records scheduled-sync

build: ## Release builds of every function for Lambda (arm64), one cargo invocation
	cargo lambda build --release --arm64 $(addprefix -p ,$(FUNCTIONS))

bench: ## Cold starts against a bare lambda_http function, then throughput, latency and memory (release build)
	# The functions as the deploy build selects them (tools' features would change their dependencies).
	cargo build --release $(addprefix -p ,$(FUNCTIONS)) -p lambda-floor
	cargo build --release -p crm-sync-tests --bins
	./target/release/cold-start 5 200
	./target/release/bench 2000 8

# `sam build` (BuildMethod: makefile) runs build-<LogicalId> once per function in the source tree
# (`build_in_source` in samconfig.toml). The first builds every function; the rest find them built.
ROOT := $(dir $(abspath $(firstword $(MAKEFILE_LIST))))
bootstrap = $(MAKE) -C $(ROOT) build && cp $(ROOT)target/lambda/$(1)/bootstrap $(ARTIFACTS_DIR)/bootstrap

build-PlatformsFunction:
	$(call bootstrap,platforms)
build-TestConnectionFunction:
	$(call bootstrap,test-connection)
build-SyncCustomerFunction:
	$(call bootstrap,sync-customer)
build-SyncAppointmentFunction:
	$(call bootstrap,sync-appointment)
build-SyncLeadFunction:
	$(call bootstrap,sync-lead)
build-GetCustomerFunction:
	$(call bootstrap,get-customer)
build-SyncBatchFunction:
	$(call bootstrap,sync-batch)
build-SyncRecordsFunction:
	$(call bootstrap,sync-records)
build-ScheduledSyncFunction:
	$(call bootstrap,scheduled-sync)

fmt:
	cargo fmt --all

clean-local: ## Forget the local run's connections and records
	rm -rf .local
