"""Settings for chatsite, driven by environment variables.

One module serves a laptop and a production host alike: every variable has a
safe local default (SQLite, the in-memory channel layer, the bundled model) and
production switches on by setting them. Each variable is documented in the
README's settings table.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# The model must never be fetched from a hub at run time: a deployment may be offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Progress bars redraw one line with carriage returns: in a server's log they
# become one very long line. Loading logs its steps and its time instead.
# Set here, before anything imports tqdm or huggingface_hub, which read them once.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def env_bool(name: str, default: bool) -> bool:
    """Read a boolean variable; accepts 1/0, true/false, yes/no, on/off."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {value!r}")


def env_int(name: str, default: int) -> int:
    """Read an integer variable, failing loudly on anything else."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from None


def env_threads(name: str) -> int | str:
    """Read a thread-count variable: "auto" (the default, also when unset or
    empty) or an integer of 0 or more; anything else fails loudly."""
    value = (os.environ.get(name) or "auto").strip().lower()
    if value == "auto":
        return "auto"
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ImproperlyConfigured(
            f"{name} must be auto or an integer of 0 or more, not {os.environ[name]!r}"
        )
    return number


def env_float(name: str, default: float, minimum: float = 0) -> float:
    """Read a number variable (seconds, say) above `minimum`, failing loudly on anything else."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from None
    if not number > minimum:  # also refuses nan
        raise ImproperlyConfigured(f"{name} must be above {minimum:g}, not {value!r}")
    return number


def env_number_in(name: str, low: float, high: float, *, integer: bool = False) -> float | int | None:
    """Read an optional number variable from `low` to `high` (None when unset
    or empty), failing loudly on anything else; `integer` for a whole number."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ImproperlyConfigured(f"{name} must be {kind}, not {value!r}") from None
    if not low <= number <= high:  # also refuses nan
        raise ImproperlyConfigured(f"{name} must be from {low:g} to {high:g}, not {value!r}")
    return number


def env_http_url(name: str, default: str = "", *, key_variable: str = "") -> str:
    """Read an http:// or https:// URL variable, such as a server's base URL.

    Refused: another scheme, no host, a bad port, a query or fragment, and
    anything beyond printable ASCII (spaces, control characters, unicode
    lookalikes; an international host name is written in its xn-- form).
    Also refused: a user name or password in it (user:secret@host), since
    the URL is shown on the console, in status.json, /metrics and logs; the
    message names `key_variable`, where a key belongs, and does not repeat
    the value. Whether the URL answers is checked later, by a system check.
    """
    from urllib.parse import urlsplit

    value = os.environ.get(name, default).strip()
    if not value:
        return ""
    example = "such as http://127.0.0.1:8100/v1"
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ImproperlyConfigured(
            f"{name} must be a plain ASCII http:// or https:// URL ({example}), not {value!r}"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - parses the port, raising ValueError when it is not one
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} is not a URL ({error}): {value!r}") from None
    if parts.username is not None or parts.password is not None:
        where = f"; put the engine's key in {key_variable} instead" if key_variable else ""
        raise ImproperlyConfigured(f"{name} must not hold a user name or password (user:secret@host){where}.")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ImproperlyConfigured(f"{name} must be an http:// or https:// URL ({example}), not {value!r}")
    if parts.query or parts.fragment:
        raise ImproperlyConfigured(f"{name} must not have a query or fragment: {value!r}")
    return value.rstrip("/")


def env_list(name: str, default: list[str]) -> list[str]:
    """Read a comma-separated list variable."""
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "django-insecure-development-only-key-do-not-use-in-production"
# Earlier keys, while rotating SECRET_KEY: sessions, password-reset links and
# API key digests made with them still verify (Django's SECRET_KEY_FALLBACKS).
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS", [])

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "generation",
    "queueadmin",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "chatsite.middleware.refuse_null_characters",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # After sessions, before common: the language from the cookie set_language
    # sets, else the browser's Accept-Language (README, "Languages").
    "django.middleware.locale.LocaleMiddleware",
    # After locale (reasons in the reader's language), before csrf (its 403
    # passes through): /api/ refusals as {"error"} JSON.
    "chatsite.jsonerrors.api_errors_as_json",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chatsite.jsi18n.catalog_context",
            ],
        },
    },
]

ASGI_APPLICATION = "chatsite.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        # Under ASGI each request may run in a different thread: persistent
        # connections would leak, one per thread.
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several writers share one file on a laptop (daphne's requests, the stats
    # recorder, a management command beside the server). Django's defaults
    # (deferred transactions, rollback journal, 5 s) fail such a writer at
    # once with "database is locked" when its transaction must upgrade from
    # read to write; IMMEDIATE takes the write lock up front and waits for it,
    # and WAL lets readers go on while one writes (Django's SQLite notes,
    # "Database is locked errors" and "transaction_mode").
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py's default socket timeout (5 s) equals channels-redis's
                # blocking-receive timeout (5 s): an idle socket's receive then
                # fails with TimeoutError and kills its consumer. Wait longer.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                # A slow client must not make Redis hold unbounded backlogs.
                "capacity": env_int("CHANNEL_CAPACITY", 1500),
                "expiry": env_int("CHANNEL_EXPIRY", 10),
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# English and Japanese (locale/, README "Languages"). A page follows the
# language cookie that the switcher sets, else the browser's Accept-Language,
# else English. WebSocket frames and the API stay in English codes and words.
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("ja", "日本語")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# HTTPS behind a proxy. Off by default so that http://127.0.0.1:8000 works.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Generation service. GenerationSettings rows in the database override the
# limits at run time; these are the defaults until staff first save them.
GENERATION_MODEL = os.environ.get("GENERATION_MODEL", "")
GENERATION_DEVICE = os.environ.get("GENERATION_DEVICE", "auto")
# "auto" measures the fastest count once per machine and model
# (generation.runtime.threads); an integer forces it, 0 keeps torch's default
# (every core). Set cores / processes when several processes share a host.
GENERATION_TORCH_THREADS = env_threads("GENERATION_TORCH_THREADS")
# Prompt tokens prefilled per engine step, in the decode step's forward pass
# (chunked prefill); 0 prefills each prompt whole, stalling every running reply
# meanwhile. 64: docs/benchmarks.md, "The ragged batch".
GENERATION_PREFILL_CHUNK_TOKENS = env_int("GENERATION_PREFILL_CHUNK_TOKENS", 64)
if GENERATION_PREFILL_CHUNK_TOKENS < 0:
    raise ImproperlyConfigured("GENERATION_PREFILL_CHUNK_TOKENS must be 0 (whole prompts) or more.")
# How the chunks are planned (generation.runtime.prefillplan): "timed", a
# time budget per step of GENERATION_PREFILL_STEP_STRETCH decode steps (at
# least the chunk), shortest prompt first; "fixed", the chunk per step,
# oldest first. docs/benchmarks.md, "A time budget per step".
GENERATION_PREFILL_POLICY = os.environ.get("GENERATION_PREFILL_POLICY", "timed")
if GENERATION_PREFILL_POLICY not in ("timed", "fixed"):
    raise ImproperlyConfigured("GENERATION_PREFILL_POLICY must be 'timed' or 'fixed'.")
GENERATION_PREFILL_STEP_STRETCH = env_number_in("GENERATION_PREFILL_STEP_STRETCH", 1, 10) or 2.0
# Megabytes of keys and values kept from finished replies, so that a
# conversation's next turn prefills only its new tokens (prefix reuse); 0: off.
GENERATION_PREFIX_CACHE_MB = env_int("GENERATION_PREFIX_CACHE_MB", 256)
if GENERATION_PREFIX_CACHE_MB < 0:
    raise ImproperlyConfigured("GENERATION_PREFIX_CACHE_MB must be 0 (no prefix reuse) or more.")
# glibc's malloc mmap threshold for the model thread's process, in KB: KV
# blocks at least this large get mappings of their own, returned to the system
# when freed (generation.runtime.allocator); 0 leaves glibc's dynamic default.
GENERATION_MALLOC_MMAP_THRESHOLD_KB = env_int("GENERATION_MALLOC_MMAP_THRESHOLD_KB", 1024)
if not 0 <= GENERATION_MALLOC_MMAP_THRESHOLD_KB <= 32768:
    raise ImproperlyConfigured("GENERATION_MALLOC_MMAP_THRESHOLD_KB must be 0 (glibc's default) to 32768.")
GENERATION_CACHE_DIR = Path(
    os.environ.get("GENERATION_CACHE_DIR", Path.home() / ".cache" / "chatsite" / "models")
)
# Sampling defaults (README, "Sampling"): unset means the model's own
# generation config, else chatsite's fallback (generation.runtime.sampling).
GENERATION_TEMPERATURE = env_number_in("GENERATION_TEMPERATURE", 0, 2)
GENERATION_TOP_P = env_number_in("GENERATION_TOP_P", 0.01, 1)
GENERATION_TOP_K = env_number_in("GENERATION_TOP_K", 0, 1_000_000, integer=True)
GENERATION_REPETITION_PENALTY = env_number_in("GENERATION_REPETITION_PENALTY", 1, 2)
GENERATION_MAX_CONCURRENCY = env_int("GENERATION_MAX_CONCURRENCY", 4)
GENERATION_MAX_QUEUE = env_int("GENERATION_MAX_QUEUE", 32)
GENERATION_MAX_NEW_TOKENS = env_int("GENERATION_MAX_NEW_TOKENS", 512)
GENERATION_MAX_ACTIVE_PER_USER = env_int("GENERATION_MAX_ACTIVE_PER_USER", 1)
# The same for requests through the OpenAI-compatible API, counted apart.
GENERATION_MAX_ACTIVE_API_PER_USER = env_int("GENERATION_MAX_ACTIVE_API_PER_USER", 2)
GENERATION_QUEUE_TIMEOUT_S = env_int("GENERATION_QUEUE_TIMEOUT_S", 300)
# Seconds a chat reply whose page went away (reload, lost Wi-Fi) keeps its
# place or slot, waiting for a page of the same person to re-attach; 0 cancels
# at once, as closing the socket once did (generation.replies).
GENERATION_REATTACH_GRACE_S = env_float("GENERATION_REATTACH_GRACE_S", 20.0, minimum=-1)
if GENERATION_REATTACH_GRACE_S < 0:
    raise ImproperlyConfigured("GENERATION_REATTACH_GRACE_S must be 0 (cancel at once) or more.")
# The most replies one process's engine runs at once, under the site-wide cap
# (0: the cap alone). Matters with several processes on the local backend,
# where each process runs its own model.
GENERATION_PROCESS_MAX_CONCURRENCY = env_int("GENERATION_PROCESS_MAX_CONCURRENCY", 0)
if GENERATION_PROCESS_MAX_CONCURRENCY < 0:
    raise ImproperlyConfigured("GENERATION_PROCESS_MAX_CONCURRENCY must be 0 (the cap alone) or more.")
# One queue for the whole site (issue #11): with REDIS_URL set, every process
# admits through the same Redis keys (generation.runtime.sitequeue).
GENERATION_SITE_QUEUE = env_bool("GENERATION_SITE_QUEUE", True)
# Priority classes (issue #15): a waiting request rises one class per this many
# seconds waited, and a person's counted service halves every half-life.
GENERATION_PRIORITY_AGEING_S = env_float("GENERATION_PRIORITY_AGEING_S", 60.0, minimum=1)
GENERATION_FAIR_SHARE_HALF_LIFE_S = env_float("GENERATION_FAIR_SHARE_HALF_LIFE_S", 300.0, minimum=1)
GENERATION_ADMISSION_PREFIX = os.environ.get("GENERATION_ADMISSION_PREFIX", "chatsite:admission")
# A killed process's slots come back within this many seconds.
GENERATION_ADMISSION_LEASE_S = env_float("GENERATION_ADMISSION_LEASE_S", 5.0)
# A Redis call that takes longer sends the process to its own queue.
GENERATION_ADMISSION_TIMEOUT_S = env_float("GENERATION_ADMISSION_TIMEOUT_S", 1.0)
# What generates the replies: "local" (the model thread, on GENERATION_MODEL)
# or "openai" (a remote OpenAI-compatible engine such as vLLM).
GENERATION_BACKEND = os.environ.get("GENERATION_BACKEND", "local").strip().lower() or "local"
if GENERATION_BACKEND not in ("local", "openai"):
    raise ImproperlyConfigured(f"GENERATION_BACKEND must be local or openai, not {GENERATION_BACKEND!r}")
# The remote engine, when GENERATION_BACKEND is openai (README, settings table).
GENERATION_OPENAI_BASE_URL = env_http_url(
    "GENERATION_OPENAI_BASE_URL", key_variable="GENERATION_OPENAI_API_KEY"
)
if GENERATION_BACKEND == "openai" and not GENERATION_OPENAI_BASE_URL:
    raise ImproperlyConfigured(
        "GENERATION_OPENAI_BASE_URL must be set when GENERATION_BACKEND is openai "
        "(the engine's OpenAI API, such as http://127.0.0.1:8100/v1)."
    )
GENERATION_OPENAI_API_KEY = os.environ.get("GENERATION_OPENAI_API_KEY", "")
GENERATION_OPENAI_MODEL = os.environ.get("GENERATION_OPENAI_MODEL", "").strip()  # "": the first one listed
GENERATION_OPENAI_CONTEXT_TOKENS = env_int("GENERATION_OPENAI_CONTEXT_TOKENS", 0)  # 0: as the engine says
if GENERATION_OPENAI_CONTEXT_TOKENS < 0:
    raise ImproperlyConfigured("GENERATION_OPENAI_CONTEXT_TOKENS must be 0 (ask the engine) or more.")
# A folder with the remote model's tokenizer, to trim conversations to its
# context exactly; "" means the bundled SmolLM2's (the model `make vllm` serves).
GENERATION_OPENAI_TOKENIZER = os.environ.get("GENERATION_OPENAI_TOKENIZER", "")
GENERATION_OPENAI_CONNECT_TIMEOUT_S = env_float("GENERATION_OPENAI_CONNECT_TIMEOUT_S", 5)
GENERATION_OPENAI_READ_TIMEOUT_S = env_float("GENERATION_OPENAI_READ_TIMEOUT_S", 120)
# How often each process reads the saved settings row, in case it missed a
# broadcast (Redis down or restarted): the longest a process can lag a save.
QUEUEADMIN_SETTINGS_CHECK_S = env_int("QUEUEADMIN_SETTINGS_CHECK_S", 5)
if QUEUEADMIN_SETTINGS_CHECK_S < 1:
    raise ImproperlyConfigured("QUEUEADMIN_SETTINGS_CHECK_S must be at least 1 (seconds).")
# /metrics answers loopback requests, and any request that sends
# "Authorization: Bearer <METRICS_TOKEN>" when this is set.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
# Longest chat message a person may send, in characters; longer frames get an "invalid" error.
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 8000)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # The openai client's transport logs a line per HTTP request at INFO:
        # one per reply with GENERATION_BACKEND=openai. Failures still show.
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
    },
}
