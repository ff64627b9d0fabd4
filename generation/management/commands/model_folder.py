"""`manage.py model_folder`: print the configured model's Hugging Face folder."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from generation.runtime.modelfolder import model_folder
from generation.runtime.source import ModelLoadError


class Command(BaseCommand):
    help = (
        "Print the path of the configured model's Hugging Face folder (GENERATION_MODEL; the "
        "bundled SmolLM2 by default), writing the dequantised cache first if it is missing. "
        "`make vllm` serves this folder."
    )
    # No system checks: `make vllm` runs this before the engine it serves exists,
    # and printing a folder needs neither the database nor the engine.
    requires_system_checks = []

    def handle(self, *args, **options):
        try:
            folder = model_folder(
                settings.GENERATION_MODEL, settings.GENERATION_CACHE_DIR, progress=self._progress
            )
        except ModelLoadError as error:
            raise CommandError(str(error)) from error
        # The path alone on stdout, so that scripts can use $(manage.py model_folder).
        self.stdout.write(str(folder))

    def _progress(self, message: str) -> None:
        self.stderr.write(message)
