# seespeaker: `make demo` and `make test` work on a fresh machine with nothing else run first.
# A GPU user with their own CUDA torch: `make install CONSTRAINTS=` keeps that torch.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
INSTALL_STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export PYTHONUNBUFFERED := 1

.PHONY: install system-packages demo demo-stages test results bench bench-train clean

$(INSTALL_STAMP): pyproject.toml constraints.txt
	@start=$$(date +%s); \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/pip install -q --upgrade pip wheel && \
	$(if $(CONSTRAINTS),$(BIN)/pip install -q $(PIP_C) torch &&) \
	$(BIN)/pip install -q $(PIP_C) -e ".[faces,test]" && \
	$(BIN)/pip install -q --no-deps syncnet-python==0.2.3 && \
	$(BIN)/pip install -q --no-deps codeformer-pip==0.0.4 && \
	echo $$(( $$(date +%s) - start )) > $(VENV)/.install_seconds && touch $@

install: $(INSTALL_STAMP)

# Debian packages the distributed tests need (a real SLURM); installed only as root, once.
system-packages:
	@if [ "$$(id -u)" = 0 ] && ! command -v slurmctld >/dev/null; then \
		start=$$(date +%s); \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge iproute2 >/dev/null && \
		echo $$(( $$(date +%s) - start )) > $(VENV)/.system_seconds; \
	fi

demo: install
	$(BIN)/python -m reports.demo

# demo/stages + demo/MANIFEST.json from the small stages `make results` trained (EMA-only fp16, <= 30 MB);
# make demo-stages [ALLOW_DIRTY=1]
demo-stages: install
	$(BIN)/python -m reports.demo_stages $(if $(ALLOW_DIRTY),--allow-dirty)

test: install system-packages
	$(BIN)/python tests/run_tiers.py

# make results [NAMES="portrait sync"] [DRY_RUN=1] [TRAIN_ONLY=1] [ALLOW_DIRTY=1]
results: install
	$(BIN)/python -m reports.results $(if $(DRY_RUN),--dry-run) $(if $(TRAIN_ONLY),--train-only) \
		$(if $(ALLOW_DIRTY),--allow-dirty) $(NAMES)

bench: install
	$(BIN)/python -m bench

# make bench-train [SCALE=small] [STAGES="conre syncnet"] [THREADS=1] [SAVE=cpu]: the training step against a bare
# loop (docs/throughput.md); every stage at the small scale takes over two hours on 2 cores with one thread
bench-train: install
	$(BIN)/python -m bench train --scale=$(or $(SCALE),small) $(foreach s,$(STAGES),--stage=$(s)) \
		$(if $(THREADS),--threads=$(THREADS)) $(if $(SAVE),--save=$(SAVE))

clean:
	rm -rf outputs data/synthetic data/synthetic_small .pytest_cache
