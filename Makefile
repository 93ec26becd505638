# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-engines clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned explicitly: a bare requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,test,bench]'
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wit demo

test: $(STAMP)
	$(PY) -m pytest -q tests

# Other Beam runners on loopback. Prism is built from the Go module proxy at the installed apache-beam's
# version; a Spark cluster runs from PyPI's pyspark and a Flink session cluster from PyPI's apache-flink, each
# with Beam's job server resolved from Maven Central (tests/engines.py prepares them). All are kept in ENGINES; what cannot be had is said in one line and its
# tests are skipped.
ENGINES ?= $(HOME)/.cache/wit-engines
test-engines: $(STAMP)
	@v=$$($(PY) -c 'import apache_beam; print(apache_beam.__version__)'); dir=$(ENGINES)/prism-$$v; \
	if [ ! -x $$dir/prism ]; then \
		if command -v go >/dev/null; then \
			mkdir -p $(ENGINES); echo "building Prism $$v into $$dir (once)"; \
			GOBIN=$$dir GOFLAGS=-mod=mod go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$$v >$(ENGINES)/prism-$$v.log 2>&1 \
				|| echo "Prism $$v could not be built (see $(ENGINES)/prism-$$v.log): its checks are skipped"; \
		else echo "no Go toolchain: Prism's checks are skipped"; fi; \
	fi; \
	WIT_ENGINES=$(ENGINES) $(PY) -m tests.engines prepare; \
	WIT_ENGINES=$(ENGINES) WIT_PRISM=$$dir/prism $(PY) -m pytest -q -m engines tests

clean:
	rm -rf $(VENV) wit-demo *.egg-info
