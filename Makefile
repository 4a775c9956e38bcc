# Two commands on a fresh clone: `make run` and `make test`.
# Stages run `python stages/...`: the venv's bin comes first on PATH so that python is ours.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# torch first, on its own: the lock files leave it out, because its CPU and CUDA builds are different
# files under one version. Where pip's index has the CPU build (these machines) nothing more is needed;
# on a stock machine see README ("Installing"), e.g. TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu".
TORCH_INDEX ?=

.PHONY: run test bench lint lock clean corpus pretrained plots-template

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(TORCH_INDEX)
	$(BIN)/pip install --quiet --require-hashes -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.txt
	touch $(DEV_STAMP)

# Re-resolve both lock files from pyproject.toml, keeping every pin that still fits (uv prefers the
# versions already in the output file). torch's own dependencies are resolved for its CPU build, so
# its index must be reachable: TORCH_CPU_INDEX, or a folder holding the wheel in UV_FIND_LINKS.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --python-version 3.11 --generate-hashes \
	--no-emit-package torch --override $(VENV)/torch-cpu.txt --custom-compile-command "make lock" \
	--extra-index-url $(TORCH_CPU_INDEX) --index-strategy unsafe-best-match

lock: $(DEV_STAMP)
	echo "torch==2.13.0+cpu" > $(VENV)/torch-cpu.txt
	$(UV_COMPILE) -o requirements.txt
	$(UV_COMPILE) --extra dev --extra ray --extra s3 -c requirements.txt -o requirements-dev.txt

# `data/` is the user's collection, tracked by data.dvc; a fresh clone has no DVC cache to
# check it out from, and dvc refuses to run with the dependency missing, so make sure it exists.
run: $(STAMP)
	mkdir -p data
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

# DVC's plots page with Vega, Vega-Lite and Vega-Embed inlined (.dvc/plots/offline.html, committed, named
# by .dvc/config), so `dvc plots show/diff` draw offline: the npm registry's packages at the versions
# DVC's renderer asks for.
VEGA_PACKAGES := vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
plots-template:
	rm -rf $(VENV)/npm && mkdir -p $(VENV)/npm
	cd $(VENV)/npm && npm pack --silent $(VEGA_PACKAGES)
	$(PYTHON) tools/offline_plots_template.py .dvc/plots/offline.html $(VENV)/npm/*.tgz

# The photo corpus of corpus.yaml (pinned Debian packages; needs apt-get and dpkg-deb, installs nothing).
corpus: $(STAMP)
	$(BIN)/colorizer corpus

# The recipe behind the shipped model (src/colorizer/pretrained, MODEL_CARD.md): the corpus at 128 px
# with a fifth of its photographs for validation and a fifth for test, half-width networks, twelve
# epochs of the L1 term with an EMA of the weights and pix2pix's linear decay over the last six.
# An experiment, so the default params.yaml stays the quick bundled-samples run. It reads corpus/,
# so it runs in the workspace (a --temp copy has no corpus).
PRETRAINED := -S 'fetch.sources=[samples,corpus]' -S fetch.min_side=96 -S fetch.split.photo_val=0.2 \
	-S fetch.split.photo_test=0.2 -S augment.image_size=128 -S augment.copies_per_image=96 \
	-S augment.copies_per_cutout=24 -S model.width_multiplier=0.5 -S train.batch_size=16 -S train.epochs=12 \
	-S train.l1_warmup_epochs=12 -S train.lr_decay_epochs=6 -S train.ema_decay=0.999 -S train.init=none

pretrained: $(STAMP)
	mkdir -p data
	PATH="$(abspath $(BIN)):$$PATH" dvc exp run -n pretrained $(PRETRAINED)

test: $(DEV_STAMP)
	PATH="$(abspath $(BIN)):$$PATH" python -m pytest

bench: $(DEV_STAMP)
	PATH="$(abspath $(BIN)):$$PATH" python -m bench

lint: $(DEV_STAMP)
	$(BIN)/ruff check src stages tests bench tools
	$(BIN)/ruff format --check src stages tests bench tools

clean:
	rm -rf work metrics plots mlflow.db
