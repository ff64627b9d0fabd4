"""`manage.py bench_sampler`: what choosing the next tokens costs per decode step.

Times generation.runtime.sampler alone, on random logits the size of the
model's vocabulary, for a batch of --rows replies that have each written
--history tokens: greedy (the old path), the repetition penalty, and
sampling at the bundled model's defaults (temperature 0.2, top_p 0.9), with
and without the penalty. With --engine, it also times whole decode steps
of the configured model (forward pass and sampling) for --rows replies,
greedy without a penalty (the old path) against the defaults.

Each figure is the median over --repeat runs of wall time and of this
process's CPU time; with --threads 1 the CPU time hardly moves when other
programs load the machine, which the wall time does.
"""

import statistics
import time

from django.core.management.base import BaseCommand

from generation.runtime.sampling import SamplingParams


class Command(BaseCommand):
    help = "Time the sampler's share of one decode step."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, default=16)
        parser.add_argument("--vocab", type=int, default=49152)
        parser.add_argument("--history", type=int, default=256, help="Tokens each reply has written.")
        parser.add_argument("--repeat", type=int, default=200)
        parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
        parser.add_argument(
            "--engine", action="store_true", help="Also time whole decode steps of the model."
        )

    def handle(self, *args, **options):
        import torch

        from generation.runtime.sampler import TokenHistory, penalise, pick

        if options["threads"]:
            torch.set_num_threads(options["threads"])
        rows, vocab, repeat = options["rows"], options["vocab"], options["repeat"]
        torch.manual_seed(0)
        # Peaked like a chat model's logits: a few likely tokens, a long tail.
        logits = torch.randn(rows, vocab) * 3
        replies = torch.randint(0, vocab, (rows, options["history"])).tolist()
        history = TokenHistory()
        seen = history.covering(replies, logits.device)
        factor = torch.full((rows, 1), 1.1)
        shared = torch.Generator().manual_seed(0)
        greedy = [SamplingParams(1, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0)] * rows
        chat = [SamplingParams(1, temperature=0.2, top_p=0.9, top_k=0, repetition_penalty=1.1)] * rows

        def penalty():
            step = logits.clone()
            penalise(step, seen, factor)
            return step

        cases = {
            "clone only (baseline of the next two)": lambda: logits.clone(),
            "repetition penalty": penalty,
            "penalty + history append": lambda: (penalty(), _append(history, rows)),
            "greedy pick (the old path)": lambda: pick(logits, greedy, [None] * rows, shared),
            "sampled pick, t 0.2 top_p 0.9": lambda: pick(logits, chat, [None] * rows, shared),
            "penalty + sampled pick": lambda: pick(penalty(), chat, [None] * rows, shared),
        }
        self.stdout.write(
            f"rows {rows}, vocab {vocab}, history {options['history']}, torch threads {torch.get_num_threads()}"
        )
        for name, case in cases.items():
            self._time(name, case, repeat)
        if options["engine"]:
            self._engine_steps(rows, repeat)

    def _time(self, name: str, case, repeat: int) -> None:
        case()
        walls, cpus = [], []
        for _ in range(repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            case()
            cpus.append((time.process_time() - cpu) * 1000)
            walls.append((time.perf_counter() - wall) * 1000)
        self.stdout.write(
            f"{name:40s} wall median {statistics.median(walls):7.3f} ms   cpu median {statistics.median(cpus):7.3f} ms"
        )

    def _engine_steps(self, rows: int, repeat: int) -> None:
        from django.conf import settings

        from generation.management.commands.bench_engine import prompt
        from generation.runtime.engine import make_engine
        from generation.runtime.loading import shared_model
        from generation.runtime.prompt import encode_conversation
        from generation.runtime.sampling import FALLBACK
        from generation.runtime.worker import stop_token_ids

        loaded = shared_model(
            settings.GENERATION_MODEL, settings.GENERATION_DEVICE, settings.GENERATION_CACHE_DIR
        )
        defaults = loaded.sampling.layered(FALLBACK)
        self.stdout.write(f"{loaded.name}: {defaults.describe()}")
        configs = {
            "greedy, no penalty (the old path)": SamplingParams(
                10_000, temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, ignore_eos=True
            ),
            "the defaults": SamplingParams(10_000, ignore_eos=True),
        }
        for name, params in configs.items():
            engine = make_engine("batched", loaded.model, stop_token_ids(loaded), defaults)
            for index in range(rows):
                engine.add(str(index), encode_conversation(loaded.tokenizer, prompt(index)), params)
            for _ in range(64):  # replies some way in, so the penalty has history to look at
                engine.step()
            self._time(f"decode step x{rows}: {name}", engine.step, repeat)


def _append(history, rows: int) -> None:
    import torch

    history.append(torch.zeros(rows, dtype=torch.long))
    history.ids = history.ids[:, :-1]  # keep the width constant across repeats
