# mxproxy developer commands; see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TRIAL_ARGS ?= --jobs=2

.PHONY: venv test check demo bench clean

# The editable install in "compat" mode puts the checkout on sys.path, which is what lets twistd
# find twisted/plugins/mxproxy_plugin.py in the working tree.
$(VENV)/.installed: setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --editable '.[test]' --config-settings editable_mode=compat
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
