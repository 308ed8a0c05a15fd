# `make test` and `make run` set everything up by themselves (a .venv with pinned packages).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: test lint fmt run bench screenshot clean

$(READY): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(READY)

test: $(READY)
	tests/system/install.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -rs

lint: $(READY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(READY)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.env:
	cp .env.sample .env

run: $(READY) .env
	@echo "Starting a server and a client with the settings of .env (Ctrl-C stops both). With the defaults:"
	@echo "  dashboard: http://localhost:5000/dashboard   API: http://localhost:5000/swagger-ui/"
	@echo "  a job:     .venv/bin/python orchestrator.py submit --service example --user 1 example/run.sh --wait"
	@# Ctrl-C reaches every process here: honcho stops the two, and its exit status 130 is no error.
	trap "" INT; PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho -f Procfile.dev start || [ $$? -eq 130 ]

bench: $(READY)
	$(BIN)/python -m bench $(BENCH)

screenshot: $(READY)  # the README's picture of the dashboard, taken by its browser test
	DASHBOARD_SCREENSHOT=docs/dashboard.png $(BIN)/python -m pytest -q tests/test_dashboard.py

clean:
	rm -rf $(VENV) data *.sqlite *.sqlite-* bench/.scratch
