"""`manage.py bench_chat`: measure chat throughput through the whole stack.

It logs in test users (created in the configured database, so run it with
the stack's settings: `deploy/stack.sh manage bench_chat ...`), opens one
socket per client through nginx, sends every client's message at once and
reads the replies as a browser would. For each client count it reports
aggregate tok/s, time to first token and queue wait (p50/p95), and errors.
The cap and the reply length are set live for the run through the
generation settings (every process applies them) and restored afterwards.

With `--processes N` it measures the site-wide queue of issue #11 instead:
it starts N daphne processes of its own on this database and REDIS_URL
(queueadmin.management.bench_processes), spreads the clients over them
round-robin, and runs every client count twice, with the site queue and
with each process's own admission. Besides tok/s and TTFT it reports the
p50/p95 milliseconds from submit to start as the services stamped them
(read back from the records, to the microsecond; the cap is the client
count, so every request finds a free slot and that time is admission
alone), and the site queue's overhead: the difference of the two.

With `--api` (issue #12) every client count also runs through the
OpenAI-compatible API, next to the WebSocket run and with the same cap,
reply length and prompts (queueadmin.management.bench_api): one API key per
bench user, made for the run and revoked afterwards. The table gains a
`path` column (ws, api), and a second table gives both paths' aggregate
tok/s and the API's over the WebSocket's.

With `--rounds N` every client count is measured N times, the sides of the
comparison (site/process, ws/api) in alternating order, and the figures are
pooled over the rounds (queueadmin.management.bench_rounds), so that the
machine's drift during a run costs both sides alike.
"""

import asyncio
import json
import secrets
import statistics
import time
import urllib.parse
from contextlib import ExitStack

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from generation.management.commands.bench_engine import prompt
from generation.stats import summarize
from generation.wsclient import ChatSocket, login
from queueadmin.management.bench_api import (
    bench_api_keys,
    comparison_rows,
    revoke_bench_api_keys,
    run_api_level,
)
from queueadmin.management.bench_processes import SCOPES, admission_ms, daphne_processes, overhead_rows
from queueadmin.management.bench_rounds import admission_summary, pool_rows, public, round_order
from queueadmin.selectors import generation_settings_get
from queueadmin.services import generation_settings_update

SETTLE_S = 1.5  # every process applies a settings change within 1 s


def http_base(ws_url: str) -> str:
    """The site's base URL for a /ws/chat/ URL: where to log in, and the origin."""
    parts = urllib.parse.urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


def bench_users(count: int) -> list[tuple[str, str]]:
    """Create (or reset) `count` bench users with fresh random passwords."""
    users = []
    for index in range(1, count + 1):
        name, password = f"bench-{index}", secrets.token_urlsafe(16)
        user, _ = get_user_model().objects.get_or_create(username=name)
        user.set_password(password)
        user.save(update_fields=["password"])
        users.append((name, password))
    return users


def rounded(value: float | None) -> int | None:
    """Milliseconds for the table: whole, or None when there were no samples."""
    return None if value is None else round(value)


async def run_level(ws_urls: list[str], users: list[tuple[str, str]], clients: int) -> dict:
    """All `clients` send at once, spread round-robin over `ws_urls`; collect
    what each saw. `request_ids` holds the ids of the replies that ended."""
    bases = [http_base(url) for url in ws_urls]
    cookies = await asyncio.gather(
        *(asyncio.to_thread(login, bases[i % len(bases)], *users[i]) for i in range(clients))
    )
    sockets = await asyncio.gather(
        *(
            ChatSocket.open(ws_urls[i % len(ws_urls)], cookie, origin=bases[i % len(bases)])
            for i, cookie in enumerate(cookies)
        )
    )
    started = time.perf_counter()
    replies = await asyncio.gather(
        *(s.reply(prompt(i)[0]["content"], timeout=600) for i, s in enumerate(sockets))
    )
    wall = time.perf_counter() - started
    await asyncio.gather(*(s.close() for s in sockets))
    done = [r for r in replies if r.terminal["type"] == "done"]
    errors = [r.terminal["code"] for r in replies if r.terminal["type"] == "error"]
    tokens = sum(r.terminal["usage"]["completion_tokens"] for r in done)
    ttfts = [(r.first_token_at - r.sent_at) * 1000 for r in done if r.first_token_at]
    waits = [r.terminal["timings"]["queue_ms"] for r in done]
    return {
        "clients": clients,
        "completion_tokens": tokens,
        "wall_s": round(wall, 2),
        "aggregate_tok_s": round(tokens / wall, 1),
        **{f"ttft_{key}_ms": rounded(value) for key, value in summarize(ttfts).items() if key != "count"},
        **{
            f"queue_wait_{key}_ms": rounded(value)
            for key, value in summarize(waits).items()
            if key != "count"
        },
        "mean_reply_tokens": round(statistics.mean(r.terminal["usage"]["completion_tokens"] for r in done), 1)
        if done
        else 0,
        "errors": {code: errors.count(code) for code in sorted(set(errors))},
        "replies": len(done),
        "request_ids": [r.terminal["request"] for r in done],
        "_ttft_ms": ttfts,
        "_queue_wait_ms": waits,
    }


class Command(BaseCommand):
    help = "Benchmark chat throughput through the whole stack (nginx, daphne, the service)."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="ws://127.0.0.1:8080/ws/chat/")
        parser.add_argument("--clients", default="1,8,16", help="Comma-separated client counts.")
        parser.add_argument("--new-tokens", type=int, default=128, help="Reply length limit during the run.")
        parser.add_argument(
            "--cap",
            type=int,
            default=None,
            help="max_concurrency (default: clients, so that every request finds a free slot).",
        )
        parser.add_argument(
            "--warmup", type=int, default=4, help="Untimed clients first (one per process or more)."
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=0,
            help="Start this many daphne processes here (on this database and REDIS_URL; --url is "
            "ignored) and run each client count with the site-wide queue and with per-process "
            "admission, reporting the overhead of global admission.",
        )
        parser.add_argument(
            "--api",
            action="store_true",
            help="Also run each client count through POST /v1/chat/completions (streamed, one API "
            "key per bench user, revoked afterwards), next to the WebSocket run, and report both "
            "paths' aggregate tok/s and the API's over the WebSocket's.",
        )
        parser.add_argument(
            "--rounds",
            type=int,
            default=1,
            help="Measure each client count this many times, alternating the order of the sides "
            "compared (site/process, ws/api: A B, B A, ...) so that drift costs both alike; the "
            "figures are pooled over the rounds (each round's are in the JSON report).",
        )
        parser.add_argument("--json", dest="json_path", help="Write the results to this file.")

    def handle(self, *args, **options):
        if options["rounds"] < 1:
            raise CommandError("--rounds must be at least 1.")
        levels = [int(level) for level in options["clients"].split(",")]
        users = bench_users(max(*levels, options["warmup"], options["processes"]))
        keep = generation_settings_get().limits()
        self.api_keys = bench_api_keys([name for name, _ in users]) if options["api"] else []
        try:
            if options["processes"]:
                report = self.bench_processes(options, levels, users, keep)
            else:
                report = self.bench_url(options, levels, users, keep)
            if options["api"]:
                report["comparison"] = comparison_rows(report["results"])
                self.stdout.write("")
                self.write_table(list(report["comparison"][0]), report["comparison"])
        finally:
            generation_settings_update(user=None, limits=keep)
            revoke_bench_api_keys(self.api_keys)
        if options["json_path"]:
            with open(options["json_path"], "w") as handle:
                json.dump(report, handle, indent=2)

    def set_limits(self, keep, **values) -> None:
        """Apply `values` over the kept limits, live, and give every process time to apply them."""
        generation_settings_update(user=None, limits=keep.replace(**values))
        time.sleep(SETTLE_S)

    def paths(self, options) -> list[str]:
        """The paths measured: the chat socket, and the API with --api."""
        return ["ws", "api"] if options["api"] else ["ws"]

    def run_levels(self, options, levels, users, keep, sides: dict[str | None, list[str]]) -> list[dict]:
        """Each client count in turn, with the cap and reply length of the
        options, --rounds times: in each round every side (a scope's URLs;
        None: the stack at --url) and path once, in round_order. One row per run, with its samples."""
        rows = []
        for level in levels:
            cap = options["cap"] or level
            self.set_limits(
                keep, max_concurrency=cap, max_queue_size=max(level, 1), max_new_tokens=options["new_tokens"]
            )
            runs = [(scope, path) for scope in sides for path in self.paths(options)]
            for index in range(options["rounds"]):
                for scope, path in round_order(runs, index):
                    row = asyncio.run(self.run_path(path, sides[scope], users, level))
                    labels = {"scope": scope, "processes": options["processes"]} if scope else {}
                    rows.append({**labels, "path": path, "round": index + 1, **row})
                    rows[-1].update(cap=cap, new_tokens=options["new_tokens"])
                    where = f"{scope}, {path}" if scope else path
                    self.stderr.write(
                        f"  round {index + 1}: {level} clients ({where}): {row['aggregate_tok_s']} tok/s"
                    )
        return rows

    async def run_path(self, path: str, urls: list[str], users, clients: int) -> dict:
        """One client count through the chat socket ("ws") or the API ("api")."""
        if path == "api":
            tokens = [token for _, token in self.api_keys]
            return await run_api_level([http_base(url) for url in urls], tokens, clients)
        return await run_level(urls, users, clients)

    def warm_up(self, options, urls: list[str], users, clients: int) -> None:
        """Untimed requests through each path the run measures."""
        for path in self.paths(options):
            asyncio.run(self.run_path(path, urls, users, clients))

    def report(self, options, rows: list[dict], columns: list[str]) -> dict:
        """Print the pooled rows under `columns`; the report's results (pooled)
        and, with several rounds, each round's rows."""
        pooled = [public(row) for row in pool_rows(rows)]
        if options["api"]:
            columns.insert(2 if options["processes"] else 0, "path")
        self.write_table([*columns, "rounds"], pooled)
        report = {"rounds": options["rounds"], "results": pooled}
        if options["rounds"] > 1:
            report["per_round"] = [public(row) for row in rows]
        return report

    def bench_url(self, options, levels, users, keep) -> dict:
        """The stack at --url (nginx in front of its processes)."""
        # Untimed: nginx spreads these over the processes, so each loads its
        # model replica before any timed run.
        generation_settings_update(user=None, limits=keep.replace(max_new_tokens=8))
        self.warm_up(options, [options["url"]], users, min(options["warmup"], len(users)))
        rows = self.run_levels(options, levels, users, keep, {None: [options["url"]]})
        for row in rows:
            row.pop("request_ids")
            if not options["api"]:
                row.pop("path")
        columns = ["clients", "cap", "aggregate_tok_s", "ttft_p50_ms", "ttft_p95_ms"]
        columns += ["queue_wait_p50_ms", "queue_wait_p95_ms", "mean_reply_tokens", "errors"]
        return {"url": options["url"], **self.report(options, rows, columns)}

    def bench_processes(self, options, levels, users, keep) -> dict:
        """--processes N: N daphne processes of this command's own per scope
        (site queue, per-process admission), all started first, clients
        spread over a scope's processes round-robin, the scopes alternated."""
        if not settings.REDIS_URL:
            raise CommandError(
                "--processes needs REDIS_URL: the site queue and the settings go through Redis."
            )
        count = options["processes"]
        with ExitStack() as stack:
            sides = {scope: stack.enter_context(daphne_processes(count, scope=scope)) for scope in SCOPES}
            # Untimed, one or more per process: each loads its model and
            # (site) makes its first calls to Redis before any timed run.
            self.set_limits(keep, max_concurrency=max(count, keep.max_concurrency), max_new_tokens=8)
            for urls in sides.values():
                self.warm_up(options, urls, users, max(options["warmup"], count))
            rows = self.run_levels(options, levels, users, keep, sides)
            # While the processes live: each writes its records about every second.
            for row in rows:
                row["_admission_ms"] = admission_ms(row.pop("request_ids"))
                row.update(admission_summary(row["_admission_ms"]))
                if not options["api"]:
                    row.pop("path")
        columns = ["scope", "processes", "clients", "cap", "aggregate_tok_s", "admission_p50_ms"]
        columns += ["admission_p95_ms", "admission_samples", "ttft_p50_ms", "ttft_p95_ms", "errors"]
        report = self.report(options, rows, columns)
        overhead = overhead_rows(report["results"])
        self.stdout.write("")
        self.write_table(["clients", "overhead_p50_ms", "overhead_p95_ms"], overhead)
        return {"processes": count, **report, "overhead": overhead}

    def write_table(self, columns: list[str], rows: list[dict]) -> None:
        self.stdout.write(" | ".join(columns))
        for row in rows:
            self.stdout.write(" | ".join(str(row[column]) for column in columns))
