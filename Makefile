# Two commands for users: `make demo` and `make test`. Both create .venv when it is
# missing or older than pyproject.toml, using nothing but python3.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow typecheck vectors bench clean system-deps

# Debian packages the interoperability tests run against (real dcmtk, Orthanc, Chromium).
SYSTEM_DEPS := dcmtk orthanc orthanc-dicomweb chromium chromium-driver

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m tools.demo

system-deps:
	scripts/install-system-deps.sh $(SYSTEM_DEPS)

test: $(STAMP) system-deps
	$(VENV)/bin/python -m pytest -q -m "not slow"

test-slow: $(STAMP) system-deps
	$(VENV)/bin/python -m pytest -q -m slow

typecheck: $(STAMP)
	$(VENV)/bin/python -m mypy protocol tools meshnode

bench: $(STAMP)
	$(VENV)/bin/python bench/libp2p_stack.py
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/transfer.py
	$(VENV)/bin/python bench/gateway.py

vectors: $(STAMP)
	$(VENV)/bin/python scripts/gen_vectors.py

clean:
	rm -rf $(VENV) build *.egg-info
