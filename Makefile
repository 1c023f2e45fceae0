# DCD: `make demo` runs the demo pass end to end; `make test` runs the suite.
# Both install what they need first (scripts/setup.sh, cached in ~/.cache/dcd).

SHELL := /bin/bash
# Absolute (go install refuses a relative GOBIN), even given on make's
# command line, and exported: the programs make runs find the setup's files
# by it too (internal/toolcache).
override DCD_CACHE := $(abspath $(or $(DCD_CACHE),$(HOME)/.cache/dcd))
export DCD_CACHE
CACHE := $(DCD_CACHE)
export DCD_TEMPORAL ?= $(CACHE)/bin/temporal
export DCD_ORT_LIB ?= $(CACHE)/lib/libonnxruntime.so.1.30.0
export DCD_MNIST_DIR ?= $(CACHE)/mnist
export DCD_VERSITYGW ?= $(CACHE)/bin/versitygw
export DCD_FAKE_GCS ?= $(CACHE)/bin/fake-gcs-server
export DCD_AZURITE ?= $(CACHE)/azurite-3.37.0/node_modules/.bin/azurite-blob
export CGO_ENABLED := 1

CORRUPTION ?= blur

.PHONY: setup setup-gpu build demo test bench bench-gpu clean-demo

# Everything the tests need; demo and bench install only their parts.
setup:
	@DCD_CACHE="$(CACHE)" scripts/setup.sh >/dev/null

# ONNX Runtime's GPU build, for GPU workers only (scripts/setup-gpu.sh).
setup-gpu:
	@DCD_CACHE="$(CACHE)" scripts/setup-gpu.sh >/dev/null

build:
	go build -o bin/starter ./starter
	go build -o bin/worker ./worker

demo: build
	@DCD_CACHE="$(CACHE)" scripts/setup.sh core >/dev/null
	bin/starter demo -corruption $(CORRUPTION)

test: setup
	go test -count=1 -timeout 40m ./...

bench: build
	@DCD_CACHE="$(CACHE)" scripts/setup.sh core servers >/dev/null
	bin/starter bench

# The embedding bench starts no server: no Temporal CLI to build.
bench-gpu: setup-gpu build
	@DCD_CACHE="$(CACHE)" scripts/setup.sh local >/dev/null
	DCD_ORT_LIB="$(CACHE)/ort-gpu-1.29.0/libonnxruntime.so" bin/starter bench -parts embed -ep cuda

# The dev server and worker are stopped first: their pid files are in .dcd.
clean-demo: build
	bin/starter dev -stop
	rm -rf .dcd
