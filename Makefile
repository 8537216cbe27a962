# keylessgo: `make test` is what CI runs; `make image` builds the default recipe into out/.
SHELL := /bin/bash
RECIPE ?= recipes/debian-bookworm.yaml
OUT ?= out
# Throwaway credentials for trying the tool out; real builds pass their own.
TRY_DIR ?= $(OUT)/try-credentials

.PHONY: all deps build test test-unit test-e2e test-updates bench image clean

all: build

deps:
	bash scripts/install-deps.sh

node_modules: package-lock.json
	npm ci --no-audit --no-fund
	@touch node_modules

build: node_modules
	npm run build

test-unit: build
	npx vitest run --config vitest.config.ts

test-e2e: deps build
	npx vitest run --config vitest.e2e.config.ts

test: deps build test-unit test-e2e

# Not in `make test` (CI): a newer kernel and Debian 12 -> 13 on an enrolled machine, each
# rebuilding the initramfs on the machine (tens of minutes under TCG).
test-updates: deps build
	npx vitest run --config vitest.updates.config.ts

# Speed and size against targets and baselines measured in the same run (never asserted).
bench: build
	bash scripts/install-deps.sh --bench
	node scripts/bench.mjs

image: deps build
	bash scripts/try-credentials.sh $(TRY_DIR)
	node dist/cli.js build $(RECIPE) --out $(OUT) \
	  --passphrase-file $(TRY_DIR)/passphrase --authorized-keys $(TRY_DIR)/id_ed25519.pub

clean:
	rm -rf dist $(OUT)
