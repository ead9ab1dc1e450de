# Every target runs from the project's own virtual environment; setup makes it when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast build-train build-validate build-infer push-train push-validate push-infer \
	watch-train watch-validate watch-infer submit scores serve bench clean

# $(call apt_try,COMMAND,PACKAGE,MESSAGE): install a Debian package where we are root with apt-get (updating the
# package lists only when the first try fails); never fails setup, says MESSAGE when COMMAND is still missing.
apt_try = command -v $(1) >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	(apt-get install -y -q $(2) >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	apt-get install -y -q $(2) >/dev/null 2>&1))) || echo "$(3)"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# the exact versions tests and CI run with (pyproject.toml holds the ranges a tool install uses)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[local,dev]'
	@# bubblewrap sandboxes local kernels (else kpack's own namespaces do); chromium: the report test's browser
	@$(call apt_try,bwrap,bubblewrap,no bubblewrap: local kernels use kpack's own sandbox (install the bubblewrap package to use it))
	@$(call apt_try,chromium,chromium,no chromium: tests/test_report.py needs it (install the chromium package))
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kpack demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not slow"

build-%: $(STAMP)
	$(BIN)/kpack build $*

push-train push-validate push-infer: push-%: $(STAMP)
	$(BIN)/kpack push $*

watch-train watch-validate watch-infer: watch-%: $(STAMP)
	$(BIN)/kpack watch $*

submit: $(STAMP)
	$(BIN)/kpack submit

scores: $(STAMP)
	$(BIN)/kpack scores

serve: $(STAMP)
	$(BIN)/kpack local serve

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf build runs .pytest_cache
