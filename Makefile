# The commands a person runs. `make dev` serves the API locally; `make test` runs every test.
.PHONY: dev test lint build bench hot-text fmt clean-local

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
# Connect links (the connect page, its OAuth callback, and the links' API).
FUNCTIONS += connect-sessions connect-page connect-callback

build: ## Release builds of every function for Lambda (arm64), one cargo invocation
	cargo lambda build --release --arm64 $(addprefix -p ,$(FUNCTIONS))

# The bench's x86_64 builds are linked as the arm64 ones are: position-dependent, with v0 symbol
# names (.cargo/config.toml for arm64), with each function's cold-start functions first in .text (functions/hot-text.rs, for
# arm64 and where CRM_SYNC_HOT_TEXT=1). With an explicit --target the flags reach only the target's
# binaries, not proc macros.
BENCH_TARGET := x86_64-unknown-linux-gnu
BENCH_BUILD := CRM_SYNC_HOT_TEXT=1 CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C link-arg=-no-pie -C symbol-mangling-version=v0" cargo build --release --target $(BENCH_TARGET)
# `$(call bench_binaries,BUILD)`: the functions and the floor as the deploy build selects them (the
# tools' features would change their dependencies), then the tools (cold-start, bench, emulator).
bench_binaries = $(1) $(addprefix -p ,$(FUNCTIONS)) -p lambda-floor && $(1) -p crm-sync-tests --bins

bench: ## Cold starts against a bare lambda_http function, then throughput, latency and memory (release build)
	$(call bench_binaries,$(BENCH_BUILD))
	./target/$(BENCH_TARGET)/release/cold-start 5 200
	./target/$(BENCH_TARGET)/release/bench 2000 8

# The profile behind functions/hot-text.tsv: the functions and tools built unstripped, in their own
# target folder, then each function's cold start run under callgrind (valgrind; moto from PyPI).
HOT_TEXT_BUILD := CARGO_PROFILE_RELEASE_STRIP=none $(BENCH_BUILD) --target-dir target/hot-text
hot-text: ## Re-derive functions/hot-text.tsv, the functions each cold start runs (after changes to what they run)
	$(call bench_binaries,$(HOT_TEXT_BUILD))
	./scripts/hot-text.sh target/hot-text/$(BENCH_TARGET)/release

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

build-ConnectSessionsFunction:
	$(call bootstrap,connect-sessions)
build-ConnectPageFunction:
	$(call bootstrap,connect-page)
build-ConnectCallbackFunction:
	$(call bootstrap,connect-callback)

fmt:
	cargo fmt --all

clean-local: ## Forget the local run's connections and records
	rm -rf .local
