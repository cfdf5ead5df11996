# PeakNet Pipeline. `make demo` and `make test` each build .venv from scratch when it is missing.
#
# torch is installed first from TORCH_SPEC so that nothing pulls a multi-GB CUDA build on a
# CPU machine. GPU users: TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
# (or install their CUDA torch into .venv first; an installed torch that satisfies the
# package's bound is kept).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,operator
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC) $(EXTRAS)' | cksum | cut -d' ' -f1)
DEMO_CONFIG ?= examples/configs/demo.yaml
DEMO_WEIGHTS := examples/weights/peaknet-demo.pt
PYTEST_ARGS ?=
# pytest-xdist workers. The tests of each session Ray form a group (tests/conftest.py: two
# groups, two Rays) that runs in order on one worker; the others take the rest (most of it
# waits on subprocesses and streams, so three workers fit two cores). --durations keeps the
# slowest in view.
PYTEST_WORKERS ?= 3
BENCH ?=
CRD := crds/peaknetpipelines.peaknet.slac.stanford.edu.yaml
# checkov (the security scan of the chart, the rendered manifests and the Dockerfiles) pins
# packaging<24 and python-dateutil<3, which Ray and kubernetes do not accept: it gets its own
# virtualenv, and the tests find it through $$CHECKOV.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_REQS := tests/deploy/checkov/requirements.txt
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(shell cksum < $(CHECKOV_REQS) | cut -d' ' -f1)

.PHONY: install checkov-env browser demo demo-weights test lint format bench gpu-wheels crd clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*
	@touch $@

checkov-env: $(CHECKOV_STAMP)

$(CHECKOV_STAMP): $(CHECKOV_REQS)
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(CHECKOV_REQS)
	@rm -f $(CHECKOV_VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/peaknet-pipeline run --config $(DEMO_CONFIG)

# Re-creates the demo's PeakNet weights and their sidecar (.json: command, seed, versions,
# loss curve, evaluation figures) by training on the random source: a few minutes on 2 cores.
demo-weights: $(STAMP)
	$(VENV)/bin/peaknet-pipeline train --config examples/configs/demo.yaml --seed 0 --output $(DEMO_WEIGHTS) --force

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Debian's chromium for the headless-browser test of report.html: installed where this runs as
# root with apt-get (CI, the project's machines); elsewhere that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium not installed: the report page's browser test will skip"

# compileall: the package's bytecode, written once. Where PYTHONDONTWRITEBYTECODE is set (as on
# CI) nothing is cached otherwise, and every process the suite starts (each Ray worker, each
# CLI run) compiles what it imports again: 0.1-0.2 s of CPU each, hundreds of processes.
test: lint $(CHECKOV_STAMP) browser
	$(PY) -m compileall -q pipeline operator
	CHECKOV=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup \
		--durations=15 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH)

# Wheels bench/gpu_check.py needs on a bare GPU machine (CPython 3.12, no network) beyond what
# its image has, listed in bench/gpu-wheels.txt, into an ignored folder the device run carries
# (bench/README.md, "GPU check"). The list is empty today: the folder is made, nothing fetched.
GPU_WHEELS ?= build/gpu-wheels
gpu-wheels: $(STAMP)
	@rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	@reqs=$$(grep -v '^[[:space:]]*\(#\|$$\)' bench/gpu-wheels.txt); \
	if [ -n "$$reqs" ]; then $(PY) -m pip download --quiet --disable-pip-version-check --no-deps \
		--only-binary=:all: --python-version 3.12 --implementation cp --platform any \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d $(GPU_WHEELS) $$reqs; fi
	@echo "$(GPU_WHEELS): $$(ls $(GPU_WHEELS) | wc -l) wheel(s), $$(du -sk $(GPU_WHEELS) | cut -f1) KiB"

# The PeakNetPipeline CRD, generated from the pydantic models, and its copy in the chart (tests
# fail when either drifts).
crd: $(STAMP)
	$(PY) -m peaknet_operator.crd > $(CRD)
	cp $(CRD) charts/peaknet-operator/$(CRD)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build *.egg-info pipeline/*.egg-info operator/*.egg-info
