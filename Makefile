# The two commands of a new user: `make demo` and `make test`. Each creates or reuses .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sam3edge-installed

.PHONY: demo test test-slow lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,openvino,distill,export,coreml,video,ros,dev]'
	$(PY) -m pip install -q --no-deps 'trackeval>=1.3'  # benchmarks/tracking.py; see pyproject's dev extra
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sam3edge quickstart --out runs/quickstart

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check sam3edge tests benchmarks

clean:
	rm -rf runs/demo runs/quickstart .pytest_cache
