# autoresearch-farm: every target does its own set-up (`make install` is implied).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The torch wheel installed first on a machine without a CUDA GPU (a CPU build where one is at hand).
CPU_TORCH ?= torch==2.13.0
# The profile the GPUs fit (trainer/cards.py: h100, gpu-48gb, gpu-24gb by memory, bf16 and compute capability;
# a card none fits prints why and picks `unsupported-gpu`, which the farm refuses); cpu-tiny without a GPU.
PROFILE ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	if [ -x $(VENV)/bin/python ]; then $(VENV)/bin/python -m trainer.cards || echo unsupported-gpu; \
	else echo h100; fi; else echo cpu-tiny; fi)
RUN_DIR ?= runs/try-$(PROFILE)

# Images (images/build.sh; no registry needed): the trainer image FROM a debootstrapped base, torch from
# wheels downloaded on the host (IMAGES_WHEELS=0: pip inside the build uses the index, e.g. a CUDA torch).
BASE_IMAGE ?= autoresearch-farm/base:bookworm
TORCH_SPEC ?= $(CPU_TORCH)
EXTRA_PIP ?=
KERNELS ?=
APT_PACKAGES ?=
IMAGES_WHEELS ?= 1
FARM_IMAGE ?= 0
IMAGES_ENV = BASE_IMAGE='$(BASE_IMAGE)' TORCH_SPEC='$(TORCH_SPEC)' EXTRA_PIP='$(EXTRA_PIP)' APT_PACKAGES='$(APT_PACKAGES)' \
	$(if $(KERNELS),KERNELS='$(KERNELS)') \
	IMAGES_WHEELS='$(IMAGES_WHEELS)' FARM_IMAGE='$(FARM_IMAGE)' PIP='$(BIN)/pip'

.PHONY: install test test-fast farm try prepare doctor lint clean images images-wheels bench-dispatch bench-search bench-search-n1 bench-proposers monitor monitor-down helm-render \
	farm-live-check

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@if ! (command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1); then \
		echo "no CUDA GPU found: installing a CPU torch ($(CPU_TORCH)) first"; \
		$(BIN)/pip install --quiet $(CPU_TORCH); \
	fi
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

## The whole test suite (CPU only; a few minutes).
test: install
	$(BIN)/python -m pytest -q --durations=25

## Skip the slow tests (real training runs).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

## The farm. With a GPU: every GPU (or GPUS=N), the h100 profile, Claude agents when ANTHROPIC_API_KEY is set.
## Without one: the cpu-tiny profile, the offline mutator, a bounded demo run (FARM_ARGS to change it).
GPUS ?=
HAS_GPU := $(filter-out cpu-%,$(PROFILE))
FARM_ARGS ?= $(if $(HAS_GPU),,--max-experiments 30)
# The paired policy (cluster/decisions/policies/tournament.py PAIRED_DEFAULTS): judging starts from the profile's documented
# noise (cpu-tiny's; on a GPU the H100's sd 0.0043, docs/gpu.md), so candidates run beside main's first two
# baselines: a short demo run gets to promote something, and one GPU tries its first idea by the third experiment
FARM_ENV ?= FARM_TOURNAMENT__POLICY=paired
farm: prepare
	$(FARM_ENV) $(BIN)/farm run --profile $(PROFILE) $(if $(GPUS),--gpus $(GPUS)) $(FARM_ARGS)

## One experiment on the profile's seed train.py, end to end (`farm try`).
try: prepare
	$(BIN)/farm try --profile $(PROFILE) --out $(RUN_DIR)

prepare: install
	$(BIN)/farm prepare --profile $(PROFILE)

doctor: install
	$(BIN)/farm doctor

## One real Claude proposal against the real API (ANTHROPIC_API_KEY): prints its diff and cost. Skips (exit 0)
## without a key; CI never needs it. LIVE_ARGS e.g. --model claude-haiku-4-5.
LIVE_ARGS ?=
farm-live-check: install
	$(BIN)/python -m agent.live_check $(LIVE_ARGS)

## The Docker images: base (debootstrap, once), wheels, trainer [, farm with FARM_IMAGE=1]. Needs dockerd.
images: install
	$(IMAGES_ENV) images/build.sh all

## Only download the wheels the images install from (into images/.build/wheels).
images-wheels: install
	$(IMAGES_ENV) images/build.sh wheels

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache images/.build

## Benchmark (not a test) of the farm's own overhead: GPU duty, dispatch gap, driver CPU on 8/16/64 logical GPUs
## with a sleeping stand-in trainer (~10 min; docs/bench/dispatch.md). BENCH_ARGS e.g. --variants "as-is;all".
BENCH_ARGS ?=
bench-dispatch: install
	$(BIN)/python bench/dispatch.py $(BENCH_ARGS)

## Search efficiency (issues 7, 15, 27): sequential, best of 8 independent loops (from sequential's runs), naive
## parallel, the stack and the pipeline policy at N = 8, every strategy on the same 32 seeds, 160 experiments each,
## the real farm on a virtual clock, 2 worker processes; each doc leads with the equal-GPU-hours and the wall-clock
## tables (seed-paired 90 % intervals) and issue 27's goals; writes docs/bench/search-equal-calibrated.* and
## search-equal-realistic.* (BENCH_ARGS to change sizes: --oracle-n1 adds the noiseless loop, --variants more rows).
SEARCH_ARGS ?= --seeds 32 --n 8 --budget 160 --variants stack,pipeline --no-oracle --jobs 2
bench-search: install
	$(BIN)/python bench/search.py $(SEARCH_ARGS) --name search-equal-calibrated $(BENCH_ARGS)
	$(BIN)/python bench/search.py $(SEARCH_ARGS) --landscape realistic --name search-equal-realistic $(BENCH_ARGS)

## One slot, 30 experiments: how soon the first promotion comes (docs/bench/search-n1.md; ~7 min).
bench-search-n1: install
	$(BIN)/python bench/search.py --seeds 16 --n 1 --budget 30 --variants paired,stack --name search-n1 $(BENCH_ARGS)

## The optimiser proposer against the mutator on the surrogate landscape (docs/bench/proposers.md).
bench-proposers: install
	$(BIN)/python bench/proposers.py $(BENCH_ARGS)

## Prometheus + Grafana for a farm on this machine (docker compose, images pulled once): Grafana at
## http://127.0.0.1:3000 (dashboard autoresearch-farm), Prometheus at http://127.0.0.1:9090, scraping the
## farm's metrics on 127.0.0.1:9464 (monitoring/prometheus.yml). `make monitor-down` stops them.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
monitor:
	$(COMPOSE) -p autoresearch-farm-monitoring -f monitoring/docker-compose.yml up -d
	@echo "Grafana: http://127.0.0.1:3000 (dashboard autoresearch-farm)  Prometheus: http://127.0.0.1:9090"

monitor-down:
	$(COMPOSE) -p autoresearch-farm-monitoring -f monitoring/docker-compose.yml down

## The Helm chart's manifests without a helm binary (Helm's Go SDK via helm-python-sdk), linted and checked against
## Kubernetes schemas: HELM_ARGS e.g. "-f my-values.yaml -n research" (experiments need cache.experimentsClaim: see README);
## pipe the output to `kubectl apply -f -`.
HELM_ARGS ?= --set cache.experimentsClaim=farm-cache
helm-render: install
	@$(BIN)/python helm/render.py --lint --validate $(HELM_ARGS)
