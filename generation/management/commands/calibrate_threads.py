"""`manage.py calibrate_threads`: measure torch's fastest CPU thread count now.

Loads the configured model (GENERATION_MODEL, GENERATION_DEVICE) and times
the engine at each candidate thread count, as a server does at its first
start with GENERATION_TORCH_THREADS=auto (generation.runtime.threads), then
stores the pick in GENERATION_CACHE_DIR, replacing any earlier one for the
same key: servers started afterwards use it (a running one keeps the count
it started with). Prints a table of the timings, or `--json` the whole
entry. Run it on a quiet machine; another job on the cores skews the pick.
"""

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Measure the fastest torch thread count for the configured model and store it."

    def add_arguments(self, parser):
        parser.add_argument("--strategy", default="batched", help="The engine timed (default: batched).")
        parser.add_argument("--json", action="store_true", help="Print the entry as JSON instead of a table.")

    def handle(self, *args, **options):
        # Imported here: every other manage.py command should not pay for torch.
        from generation.runtime import threads
        from generation.runtime.loading import ModelLoadError, shared_model

        try:
            loaded = shared_model(
                settings.GENERATION_MODEL, settings.GENERATION_DEVICE, settings.GENERATION_CACHE_DIR
            )
        except ModelLoadError as error:
            raise CommandError(str(error)) from None
        progress = (lambda line: None) if options["json"] else self.stderr.write
        result = threads.calibrate(
            loaded, settings.GENERATION_CACHE_DIR, options["strategy"], remeasure=True, progress=progress
        )
        if result is None:
            raise CommandError(f"Nothing to calibrate on {loaded.device}: auto calibrates on the CPU only.")
        if options["json"]:
            entry = {
                "key": result.key,
                "threads": result.threads,
                "timings": result.timings,
                "measured_at": result.measured_at,
                "path": str(result.path) if result.path else None,
            }
            self.stdout.write(json.dumps(entry, indent=2))
            return
        key = result.key
        self.stdout.write(f"{key['cpu']}, {key['cores']} usable cores, torch {key['torch']}")
        self.stdout.write(f"model {key['model']['name']}, {options['strategy']} engine, {result.measured_at}")
        self.stdout.write("threads | ms/step | decode step ms | decode + chunk ms")
        for count, figures in result.timings.items():
            mark = "  <- picked" if count == result.threads else ""
            chunk = "cut short" if figures.get("cut") else f"{figures['chunk_ms']:.1f}"
            self.stdout.write(
                f"{count:>7} | {figures['step_ms']:>7.1f} | {figures['decode_ms']:>14.1f} | {chunk:>17}{mark}"
            )
        where = (
            f"stored in {result.path}"
            if result.path
            else "not stored (the machine was busy, or the cache folder is not writable: see the log above)"
        )
        self.stdout.write(f"Picked {result.threads} thread(s); {where}.")
