# Two commands for users: `make demo` and `make test`. Both create .venv when it is
# missing or older than pyproject.toml, using nothing but python3.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# pynetdicom's console scripts (storescu, getscu, ...) shadow dcmtk's: removed after installing, and again
# before demo and tests (cheap, idempotent: a pip install by hand may have brought them back)
DROP_PYNETDICOM_TOOLS := $(VENV)/bin/python scripts/drop_pynetdicom_tools.py

.PHONY: demo test test-slow test-emulation test-netns typecheck fuzz vectors bench bench-sim clean system-deps npm-tools viewer viewer-check

# Debian packages the interoperability tests run against (real dcmtk, Orthanc, Chromium, and rsyslog
# with its TLS driver as the audit repository).
SYSTEM_DEPS := dcmtk orthanc orthanc-dicomweb chromium chromium-driver rsyslog rsyslog-gnutls unzip p7zip-full libarchive-tools iptables tcpdump

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	$(VENV)/bin/python scripts/drop_pynetdicom_tools.py  # its storescu/getscu/... would shadow dcmtk's
	touch $(STAMP)

demo: $(STAMP)
	$(DROP_PYNETDICOM_TOOLS)
	$(VENV)/bin/python -m meshnode.demo

system-deps:
	scripts/install-system-deps.sh $(SYSTEM_DEPS)

# npm packages the browser tests run (axe-core, oidc-provider), pinned by tools/browser/package-lock.json
npm-tools:
	scripts/install-npm-tools.sh

# the portal's viewer (viewer/, Cornerstone3D pinned by viewer/package-lock.json) bundled into
# meshnode/web/static/viewer/ (committed: `make demo` needs only python3); viewer-check fails when the committed
# files differ from a fresh build
viewer:
	scripts/build_viewer.sh

viewer-check:
	scripts/check_viewer_build.sh

test: $(STAMP) system-deps
	$(DROP_PYNETDICOM_TOOLS)
	$(VENV)/bin/python -m pytest -q -m "not slow and not emulation and not netns"

test-slow: $(STAMP) system-deps npm-tools
	$(DROP_PYNETDICOM_TOOLS)
	$(VENV)/bin/python -m pytest -q -m slow

# meshsim emulation with real meshnode processes (network namespaces + tc when root, else the node's limiter)
test-emulation: $(STAMP)
	$(DROP_PYNETDICOM_TOOLS)
	$(VENV)/bin/python -m pytest -q -m emulation

# NAT traversal in network namespaces: two organisations behind iptables MASQUERADE, a public relay, real
# nodes (root, ip, tc, iptables, tcpdump; MESH_NETNS_REQUIRED=1 makes a missing one fail instead of skip)
test-netns: $(STAMP) system-deps
	$(DROP_PYNETDICOM_TOOLS)
	$(VENV)/bin/python -m pytest -q -m netns tests/netns

# coverage-guided fuzzing (atheris) of every decoder of untrusted bytes, about a minute in all;
# new crashers land in tests/fuzz/crashers/ (commit them) and fail the run
fuzz: $(STAMP)
	$(VENV)/bin/python scripts/fuzz.py --seconds 60

typecheck: $(STAMP)
	$(VENV)/bin/python -m mypy protocol common tools meshnode simulations

# the bench extra (py-spy, to profile the nodes while a bench runs: docs/performance.md), its own stamp
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,bench]'
	$(VENV)/bin/python scripts/drop_pynetdicom_tools.py
	touch $(BENCH_STAMP)

# every speed bench, then one table of every target (bench/summary.py); each script appends its verdicts
# to the file MESH_BENCH_SUMMARY names; each installs the Debian packages its peers need (dcmtk, orthanc).
# Scripts that are not there yet (another branch) are skipped.
BENCH_SCRIPTS := libp2p_stack ingest transfer gateway small_studies soak

bench: $(BENCH_STAMP)
	@summary=$$(mktemp /tmp/mesh-bench-summary.XXXXXX); status=0; \
	for script in $(BENCH_SCRIPTS); do \
	  if [ -f bench/$$script.py ]; then \
	    echo "== bench/$$script.py"; \
	    MESH_BENCH_SUMMARY=$$summary $(VENV)/bin/python bench/$$script.py || status=1; \
	  fi; \
	done; \
	$(VENV)/bin/python bench/summary.py $$summary; rm -f $$summary; exit $$status

# meshsim speed: one simulated year of nhs-england.toml, mesh and hub (minutes)
bench-sim: $(STAMP)
	$(VENV)/bin/python bench/sim_speed.py

vectors: $(STAMP)
	$(VENV)/bin/python scripts/gen_vectors.py

clean:
	rm -rf $(VENV) build *.egg-info
