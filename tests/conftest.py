"""Fixtures shared by the whole suite.

Most tests run on a tiny randomly initialised Llama (seeded, two small
layers) that uses the real SmolLM2 tokenizer, so that prompts, chat templates
and detokenisation are the real ones while a forward pass costs a millisecond.
Only the tests marked `real_model` load the bundled SmolLM2.
"""

import asyncio
import contextlib
import functools
import json
from pathlib import Path

import pytest
import torch
from channels.auth import AuthMiddlewareStack
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import AsyncClient, override_settings

from generation.runtime.backends.local import LocalBackend
from generation.runtime.loading import cached_folder, resolve_source, shared_model
from generation.runtime.service import GenerationService
from generation.runtime.types import Limits

# One torch thread in the test process, as GENERATION_TORCH_THREADS=1 gives a
# server. With torch's default (a thread per core) its threads spin against
# each other and the other processes of a busy two-core machine: the engine
# tests took 48 s instead of 5.5 s at load 5. What a test checks does not
# depend on it; live servers (subprocesses) keep their own setting.
torch.set_num_threads(1)


def pytest_sessionstart(session):
    """Compile the translations (.po to .mo) that are missing or stale, as
    make does, so that a direct pytest run on a fresh checkout serves the
    Japanese words (chatsite.translations)."""
    from chatsite.translations import compile_translations

    compile_translations()


def build_tiny_model(target: Path) -> Path:
    """Write a seeded tiny Llama with the real SmolLM2 tokenizer to `target`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, _ = cached_folder(resolve_source(""), django_settings.GENERATION_CACHE_DIR)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
        # Wider than the default init, so that greedy output varies with the
        # prompt instead of collapsing onto one token.
        initializer_range=0.3,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config)
    # Its publisher's advice, as a real model folder states it: greedy, no
    # repetition penalty. Tests that compare replies need them deterministic;
    # tests of the defaults themselves (test_sampling_defaults) say otherwise.
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    # save_pretrained leaves out values equal to transformers' defaults.
    config_path = target / "generation_config.json"
    generation = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**generation, "do_sample": False, "repetition_penalty": 1.0}))
    return target


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing():
    """Hash the test database's passwords with MD5, for the whole session.

    Django's default PBKDF2 takes 0.4 to 1.2 s per hash on this machine, paid
    for every user a fixture creates and every login; what the tests check
    does not depend on the hash's strength. Live servers (subprocesses) keep
    the real settings.
    """
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_setting():
    """GENERATION_TORCH_THREADS=1 for the services the tests start, for the
    whole session: its default, "auto", would time the engine at each
    thread count on the first model load (seconds, on a busy machine) and
    then change this process's thread count. tests/generation/test_threads.py
    sets "auto" where it tests that."""
    with override_settings(GENERATION_TORCH_THREADS=1):
        yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder holding the tiny test model, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def tiny_model(tiny_model_dir, settings):
    """Point the process's generation service at the tiny model."""
    settings.GENERATION_MODEL = str(tiny_model_dir)
    settings.GENERATION_DEVICE = "cpu"
    return tiny_model_dir


@pytest.fixture(scope="session")
def real_model():
    """The bundled SmolLM2, loaded once per test session (slow)."""
    return shared_model("", "cpu", django_settings.GENERATION_CACHE_DIR)


@pytest.fixture
async def make_service(tiny_model_dir):
    """Build started GenerationServices on the tiny model; stopped at teardown.

    Call it with Limits fields as keyword arguments; `strategy` and `load`
    may be given too.
    """
    services = []
    shared = functools.partial(shared_model, str(tiny_model_dir), "cpu", django_settings.GENERATION_CACHE_DIR)

    async def factory(*, strategy: str = "batched", load=None, **limits) -> GenerationService:
        backend = LocalBackend(load or shared, strategy)
        service = GenerationService(backend=backend, limits=Limits(**limits))
        service.start()
        services.append(service)
        return service

    yield factory
    for service in services:
        service.stop()


@pytest.fixture
async def websocket_as():
    """Open WebSocket communicators to a consumer as a given user (as the auth
    middleware would set it); they are closed at teardown.

    Call it as `await websocket_as(ConsumerClass, "/ws/path/", user)`.
    """
    opened = []

    async def factory(consumer, path: str, user):
        application = consumer.as_asgi()

        async def with_user(scope, receive, send):
            return await application({**scope, "user": user}, receive, send)

        communicator = WebsocketCommunicator(with_user, path)
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        opened.append(communicator)
        return communicator

    yield factory
    for communicator in opened:
        # Closing an already closed socket is harmless; the app just ends. A
        # test may have cancelled the app, as a server drops one.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await communicator.disconnect(timeout=10)


@pytest.fixture
async def websocket_logged_in():
    """Log a user in through Django's login (a real session row) and open
    WebSocket communicators to a consumer through the real session and auth
    middleware with that session's cookie; closed at teardown.

    Call it as `client, socket = await websocket_logged_in(ConsumerClass,
    "/ws/path/", username, password)`; `client` is the logged-in AsyncClient,
    for logging out or posting as that person.
    """
    opened = []

    async def factory(consumer, path: str, username: str, password: str):
        client = AsyncClient()
        assert await client.alogin(username=username, password=password)
        cookie = f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"
        communicator = WebsocketCommunicator(
            AuthMiddlewareStack(consumer.as_asgi()), path, headers=[(b"cookie", cookie.encode())]
        )
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        opened.append(communicator)
        return client, communicator

    yield factory
    for communicator in opened:
        with contextlib.suppress(Exception):
            await communicator.disconnect(timeout=10)
