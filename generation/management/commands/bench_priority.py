"""`manage.py bench_priority`: the start order under a mixed load, simulated.

A replay of the admission order alone (issue #15), not of the model: the
requests go through LocalAdmission (the reference model of admission, the
same rules as a process's own queue and the site queue's scripts) on a
simulated clock, and each running reply generates tokens at a fixed rate.
So it measures what the order decides (who waits how long, who gets which
share of the tokens), in seconds of simulated time, with no noise from the
machine. Two classes: "staff" (rank 1, two people) and the default class
(three people using the chat and one heavy API user who keeps --heavy
requests outstanding). The chat users send a request, read the reply, think
(exponential, mean --think-s) and send again. It runs with the classes and,
for comparison, without (first come, first served), and prints per class
and per person the queue wait p50/p95 and the share of generated tokens;
and, for the default class, the heavy user's token share over the window
against their fair share while others of the class were waiting, in two
measures (see `simulate`).
"""

import asyncio
import random

from django.core.management.base import BaseCommand

from generation.runtime.admission import Admitted, LocalAdmission, Waiting
from generation.runtime.admission.order import PriorityClass, PriorityPolicy
from generation.runtime.types import Limits, RequestSource
from generation.stats import percentile

STAFF = ["staff1", "staff2"]
CHAT = ["ann", "bob", "cy"]
HEAVY = "heavy"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def simulate(*, policy, cap, duration_s, heavy, think_s, rate, seed, step_s=0.25) -> dict:
    """Run one replay. Returns {"people": {person: {"waits": [s], "tokens":
    n}}, "heavy_share_contested": share, "heavy_vs_backlogged": ratio}.

    Both figures count only the default class's tokens generated while
    another person of that class (a chat user) had a request waiting.
    `heavy_share_contested` is the heavy user's share of those tokens (the
    first measure, compared with a fixed fair share of 1/4, everyone of the
    class). `heavy_vs_backlogged` is the heavy user's tokens among those
    divided by their fair entitlement as VTC defines it (Sheng et al., OSDI
    2024: fairness among backlogged clients): each token counts 1/k to the
    entitlement, k the number of people of the class backlogged (a request
    waiting or running) in the step it was generated. 1.0 is exactly fair;
    None when nobody else of the class ever waited."""
    rng = random.Random(seed)
    clock = Clock()
    admission = LocalAdmission(clock=clock, lease_s=1e9)
    limits = Limits(max_concurrency=cap, max_queue_size=1000, max_active_api_per_user=heavy)
    await admission.set_limits(limits)
    await admission.set_policy(policy)
    people = {p: {"waits": [], "tokens": 0} for p in [*STAFF, *CHAT, HEAVY]}
    tickets: dict[str, dict] = {}  # ticket -> person, left, arrived, started
    next_send = {p: rng.uniform(0, think_s) for p in [*STAFF, *CHAT]}
    serial = 0
    contested = {"heavy": 0, "class": 0, "entitled": 0.0}

    async def send(person, source):
        nonlocal serial
        serial += 1
        ticket = f"t{serial}"
        result = await admission.enqueue(ticket, "p", person, limits, local_free=cap, source=source)
        assert isinstance(result, (Admitted, Waiting)), result
        tickets[ticket] = {
            "person": person,
            "left": rng.randint(50, 300),
            "arrived": clock.now,
            "started": None,
        }
        if result == Admitted():
            tickets[ticket]["started"] = clock.now

    while clock.now < duration_s:
        for person in [*STAFF, *CHAT]:
            busy = any(t["person"] == person for t in tickets.values())
            if not busy and clock.now >= next_send[person]:
                await send(person, RequestSource.CHAT)
        while sum(1 for t in tickets.values() if t["person"] == HEAVY) < heavy:
            await send(HEAVY, RequestSource.API)
        for ticket in await admission.claim("p", cap):
            tickets[ticket]["started"] = clock.now
        waiting_default = {
            t["person"] for t in tickets.values() if t["started"] is None and t["person"] in CHAT
        }
        backlogged = {t["person"] for t in tickets.values() if t["person"] in (*CHAT, HEAVY)}
        clock.now += step_s
        for ticket, held in list(tickets.items()):
            if held["started"] is None:
                continue
            made = min(held["left"], round(rate * step_s))
            held["left"] -= made
            people[held["person"]]["tokens"] += made
            if held["person"] in (*CHAT, HEAVY) and waiting_default:
                contested["class"] += made
                contested["heavy"] += made if held["person"] == HEAVY else 0
                contested["entitled"] += made / len(backlogged)
            if held["left"] <= 0:
                people[held["person"]]["waits"].append(held["started"] - held["arrived"])
                await admission.account(ticket, made)
                await admission.release(ticket)
                del tickets[ticket]
                if held["person"] != HEAVY:
                    next_send[held["person"]] = clock.now + rng.expovariate(1 / think_s)
            elif made:
                await admission.account(ticket, made)
    share = contested["heavy"] / contested["class"] if contested["class"] else None
    ratio = contested["heavy"] / contested["entitled"] if contested["entitled"] else None
    return {"people": people, "heavy_share_contested": share, "heavy_vs_backlogged": ratio}


class Command(BaseCommand):
    """Replay a mixed load through the start order, with and without classes."""

    help = "Simulated replay of a mixed load through the priority order (issue #15)."

    def add_arguments(self, parser):
        parser.add_argument("--cap", type=int, default=2)
        parser.add_argument(
            "--duration-s", type=float, default=600.0, help="Simulated seconds (default 600)."
        )
        parser.add_argument("--heavy", type=int, default=4, help="Requests the API user keeps outstanding.")
        parser.add_argument("--think-s", type=float, default=5.0)
        parser.add_argument("--rate", type=float, default=20.0, help="Tokens per second per running reply.")
        parser.add_argument("--seed", type=int, default=1)

    def handle(self, *args, **options):
        policy = PriorityPolicy(classes=(PriorityClass("staff", 1, frozenset(STAFF)),))
        for name, given in (("classes + fair shares", policy), ("first come, first served", None)):
            result = asyncio.run(
                simulate(
                    policy=given,
                    cap=options["cap"],
                    duration_s=options["duration_s"],
                    heavy=options["heavy"],
                    think_s=options["think_s"],
                    rate=options["rate"],
                    seed=options["seed"],
                )
            )
            self._print(name, result)

    def _print(self, name, result):
        people = result["people"]
        total = sum(p["tokens"] for p in people.values()) or 1
        self.stdout.write(f"\n{name}")
        self.stdout.write(
            f"{'who':<10} {'class':<8} {'n':>5} {'wait p50 s':>11} {'wait p95 s':>11} {'tokens %':>9}"
        )
        groups = [("staff", STAFF), ("default", [*CHAT, HEAVY])]
        for label, members in groups:
            waits = [w for p in members for w in people[p]["waits"]]
            tokens = sum(people[p]["tokens"] for p in members)
            self.stdout.write(self._row(f"[{label}]", label, waits, tokens / total))
            for person in members:
                data = people[person]
                self.stdout.write(self._row(person, label, data["waits"], data["tokens"] / total))
        share = result["heavy_share_contested"]
        if share is not None:
            fair = 1 / (len(CHAT) + 1)
            self.stdout.write(
                f"heavy user's share of the default class's tokens while others of it waited: "
                f"{share:.2f} (fixed fair share {fair:.2f}, everyone of the class: {share / fair:.2f}x)"
            )
        ratio = result["heavy_vs_backlogged"]
        if ratio is not None:
            self.stdout.write(
                f"heavy user's tokens then against their fair share among the people of the class "
                f"backlogged at each token (VTC): {ratio:.2f}x"
            )

    @staticmethod
    def _row(who, label, waits, share) -> str:
        def fmt(value):
            return f"{value:11.1f}" if value is not None else f"{'-':>11}"

        return (
            f"{who:<10} {label:<8} {len(waits):>5} {fmt(percentile(waits, 50))} "
            f"{fmt(percentile(waits, 95))} {share * 100:9.1f}"
        )
