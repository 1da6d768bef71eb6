# The two commands a newcomer needs are `make run` and `make test` (see README).
PYTHON ?= python3
STAMP := .stack/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run serve demo test test-fast stop status bench typecheck

# Idempotent: pip runs only when pyproject.toml changed; servers and jars are
# installed by `python -m ctxpipe.infra` itself when missing.
install: $(STAMP)
$(STAMP): pyproject.toml
	@echo "installing the Python package and its dependencies (once; a few minutes on a fresh machine)"
	@$(PYTHON) -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev]'
	@mkdir -p .stack && rm -f .stack/.installed-* && touch $(STAMP)

run: install
	@$(PYTHON) -m ctxpipe.infra up
	@$(PYTHON) -m ctxpipe serve --demo

serve: install
	@$(PYTHON) -m ctxpipe.infra up
	@$(PYTHON) -m ctxpipe serve

demo: install
	@$(PYTHON) -m ctxpipe demo

test: install
	$(PYTHON) -m pytest

test-fast: install
	$(PYTHON) -m pytest -m "not stack and not slow"

stop:
	@$(PYTHON) -m ctxpipe.infra down

status:
	@$(PYTHON) -m ctxpipe.infra status

# mypy strict over the packages and the tests (files and paths: pyproject's [tool.mypy]).
typecheck: install
	$(PYTHON) -m mypy

bench: install
	$(PYTHON) bench/ingest_throughput.py
