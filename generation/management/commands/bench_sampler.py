"""`manage.py bench_sampler`: what choosing the next tokens costs per decode step.

Times generation.runtime.sampler alone, on random logits the size of the
model's vocabulary, for a batch of --rows replies that have each written
--history tokens: greedy (the old path), the repetition penalty, and
sampling at the bundled model's defaults (temperature 0.2, top_p 0.9), with
and without the penalty. The forward pass is not included: compare with
bench_engine's step time.
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

    def handle(self, *args, **options):
        import torch

        from generation.runtime.sampler import TokenHistory, penalise, pick

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
            case()
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                case()
                times.append((time.perf_counter() - started) * 1000)
            self.stdout.write(
                f"{name:40s} median {statistics.median(times):7.3f} ms  p90 {statistics.quantiles(times, n=10)[-1]:7.3f} ms"
            )


def _append(history, rows: int) -> None:
    import torch

    history.append(torch.zeros(rows, dtype=torch.long))
    history.ids = history.ids[:, :-1]  # keep the width constant across repeats
