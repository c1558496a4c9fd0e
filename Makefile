# portshift — two commands for a fresh machine (Python 3.10+, make, the package registries):
#   make demo   set everything up, export the Chorus simulator into ./demo-export, verify it
#   make test   set everything up, run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PLUGIN_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
STAMP  := $(VENV)/.portshift-installed

.PHONY: setup demo test lint soak clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(wildcard plugins/*/pyproject.toml) $(wildcard plugins/*/setup.sh) tests/setup_postgres.sh Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "portshift needs Python 3.10 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]' $(foreach p,$(PLUGIN_DIRS),-e '$(p)[test]')
	bash tests/setup_postgres.sh
	@for s in $(wildcard plugins/*/setup.sh); do echo "setup: $$s"; PYTHON=$(CURDIR)/$(BIN)/python bash $$s || exit 1; done
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check portshift plugins tests benchmarks demo
	$(BIN)/ruff format --check portshift plugins tests benchmarks demo

# Two parts: everything on two workers (pytest-xdist; the service's tests share one), then the
# tests that measure time or memory (marked `serial`) alone, so that no other test skews them.
TESTS  := tests $(addsuffix /tests,$(PLUGIN_DIRS))
PYTEST := $(BIN)/python -m pytest $(TESTS) -q -p no:randomly -p no:schemathesis

test: setup lint
	$(PYTEST) -n 2 --dist loadgroup -m "not serial"
	$(PYTEST) -m serial

soak: setup
	PORTSHIFT_SOAK=1 $(BIN)/python -m pytest tests/test_crash_resume.py plugins/source_chorus/tests/test_soak.py plugins/sink_s3/tests/test_crash_resume.py -q -s -p no:randomly
	PORTSHIFT_WORKER_CALLS=2000 PORTSHIFT_WORKER_KILLS=20 $(BIN)/python -m pytest tests/test_workers.py plugins/sink_s3/tests/test_workers.py -q -s -p no:randomly
	PORTSHIFT_SOAK=1 $(BIN)/python -m pytest plugins/server/tests/test_handover.py -q -s -p no:randomly
	PORTSHIFT_RESUME_MIB=1024 $(BIN)/python -m pytest plugins/sink_s3/tests/test_resume_midfile.py plugins/sink_azure/tests/test_resume_midfile.py plugins/sink_gcs/tests/test_resume_midfile.py -k big -q -s -p no:randomly

demo: setup
	$(BIN)/python demo/demo.py

clean:
	rm -rf $(VENV) .tools demo-export
