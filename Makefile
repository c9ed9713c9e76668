# Two commands for users: `make demo` and `make test`. Both create .venv when it is
# missing or older than pyproject.toml, using nothing but python3.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-emulation typecheck fuzz vectors bench bench-sim clean system-deps

# Debian packages the interoperability tests run against (real dcmtk, Orthanc, Chromium, and rsyslog
# with its TLS driver as the audit repository).
SYSTEM_DEPS := dcmtk orthanc orthanc-dicomweb chromium chromium-driver rsyslog rsyslog-gnutls

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m meshnode.demo

system-deps:
	scripts/install-system-deps.sh $(SYSTEM_DEPS)

test: $(STAMP) system-deps
	$(VENV)/bin/python -m pytest -q -m "not slow and not emulation"

test-slow: $(STAMP) system-deps
	$(VENV)/bin/python -m pytest -q -m slow

# meshsim emulation with real meshnode processes (network namespaces + tc when root, else the node's limiter)
test-emulation: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m emulation

# coverage-guided fuzzing (atheris) of every decoder of untrusted bytes, about a minute in all;
# new crashers land in tests/fuzz/crashers/ (commit them) and fail the run
fuzz: $(STAMP)
	$(VENV)/bin/python scripts/fuzz.py --seconds 60

typecheck: $(STAMP)
	$(VENV)/bin/python -m mypy protocol common tools meshnode simulations

bench: $(STAMP)
	$(VENV)/bin/python bench/libp2p_stack.py
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/transfer.py
	$(VENV)/bin/python bench/gateway.py

# meshsim speed: one simulated year of nhs-england.toml, mesh and hub (minutes)
bench-sim: $(STAMP)
	$(VENV)/bin/python bench/sim_speed.py

vectors: $(STAMP)
	$(VENV)/bin/python scripts/gen_vectors.py

clean:
	rm -rf $(VENV) build *.egg-info
