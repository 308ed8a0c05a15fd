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
	$(BIN)/python -m pytest -q

lint: $(READY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(READY)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.env:
	cp .env.sample .env

run: $(READY) .env
	@echo "Starting a server on http://localhost:5000 and a client on http://localhost:9000 (Ctrl-C stops both)."
	@echo "  API documentation: http://localhost:5000/swagger-ui/"
	@echo "  Submit a job:      curl -F file=@example/run.sh -F user_id=1 -F service=example http://localhost:5000/upload"
	@echo "  Then:              curl http://localhost:5000/download/1 -o result.zip"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start

bench: $(READY)
	$(BIN)/python -m bench $(BENCH)

screenshot: $(READY)  # the README's picture of the dashboard, taken by its browser test
	DASHBOARD_SCREENSHOT=docs/dashboard.png $(BIN)/python -m pytest -q tests/test_dashboard.py

clean:
	rm -rf $(VENV) data *.sqlite *.sqlite-* bench/.scratch
