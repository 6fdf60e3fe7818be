# mxproxy developer commands; see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TRIAL_ARGS ?= --jobs=2

.PHONY: venv test check demo bench clean

# Twisted finds twistd plugins by listing the twisted/plugins folders of sys.path, which an
# editable install does not extend: every command below runs with the checkout first on
# PYTHONPATH, so the working tree is what runs, plugin included. Tested versions are pinned by
# constraints.txt; pyproject.toml keeps the supported ranges.
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	set -o pipefail; $(PY) -m twisted.trial $(TRIAL_ARGS) tests 2>&1 | tee .trial.log; \
	status=$$?; $(PY) scripts/trial_summary.py .trial.log; exit $$status

check: venv
	$(VENV)/bin/ruff check mxproxy tests bench scripts twisted
	$(VENV)/bin/mypy mxproxy

demo: venv
	$(VENV)/bin/twistd --nodaemon --pidfile= mxproxy --demo

bench: venv
	for script in bench/*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) _trial_temp .trial.log build *.egg-info
