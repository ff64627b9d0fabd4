"""`manage.py generate "PROMPT"`: a quick proof that the configured model works.

It goes through the same generation service and backend (GENERATION_BACKEND)
the chat uses, printing the local model's loading progress to stderr and
streaming the reply to stdout.
"""

import asyncio
import functools
import sys

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from generation.runtime.backends.local import LocalBackend
from generation.runtime.registry import default_limits, make_backend
from generation.runtime.service import GenerationService
from generation.runtime.types import Done, Error, Token


class Command(BaseCommand):
    help = "Load the configured model and stream a reply to PROMPT."

    def add_arguments(self, parser):
        parser.add_argument("prompt", help="The user message to answer.")
        parser.add_argument("--max-new-tokens", type=int, default=None)
        parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy (default).")
        parser.add_argument("--top-p", type=float, default=1.0)
        parser.add_argument(
            "--repetition-penalty",
            type=float,
            default=1.0,
            help="1 means none (default): the model's plain greedy answer, unlike the chat's defaults.",
        )

    def handle(self, *args, **options):
        try:
            backend = self._local_backend() if settings.GENERATION_BACKEND == "local" else make_backend()
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from None
        event = asyncio.run(self._generate(backend, options))
        if isinstance(event, Error):
            raise CommandError(event.message)
        self.stdout.write("")
        timings = event.timings
        self._progress(
            f"[{event.usage.completion_tokens} tokens, first token after {timings.ttft_ms} ms, "
            f"{timings.total_ms} ms in total, finish reason {event.finish_reason}]"
        )

    def _local_backend(self) -> LocalBackend:
        """The configured model, loaded with progress lines on stderr."""
        # Here, not at the top: torch takes seconds to import, and `--help` or
        # a mistyped argument should not wait for it.
        from generation.runtime.loading import ModelLoadError, load_model, resolve_device, resolve_source

        try:
            source = resolve_source(settings.GENERATION_MODEL)
            device = resolve_device(settings.GENERATION_DEVICE)
        except ModelLoadError as error:
            raise CommandError(str(error)) from None
        load = functools.partial(
            load_model, source, device, settings.GENERATION_CACHE_DIR, progress=self._progress
        )
        self._progress(f"Loading model {source.label} on {device}")
        return LocalBackend(load)

    async def _generate(self, backend, options) -> Done | Error:
        limits = default_limits()
        limits = limits.replace(max_new_tokens=options["max_new_tokens"] or limits.max_new_tokens)
        service = GenerationService(backend=backend, limits=limits)
        service.start()
        try:
            handle = service.submit(
                user_id="cli",
                messages=[{"role": "user", "content": options["prompt"]}],
                temperature=options["temperature"],
                top_p=options["top_p"],
                repetition_penalty=options["repetition_penalty"],
            )
            async for event in handle:
                if isinstance(event, Token):
                    self.stdout.write(event.text, ending="")
                    self.stdout.flush()
            return event
        finally:
            service.stop()

    def _progress(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
