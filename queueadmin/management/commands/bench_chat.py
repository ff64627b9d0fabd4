"""`manage.py bench_chat`: measure chat throughput through the whole stack.

It logs in test users (created in the configured database, so run it with
the stack's settings: `deploy/stack.sh manage bench_chat ...`), opens one
socket per client through nginx, sends every client's message at once and
reads the replies as a browser would. For each client count it reports
aggregate tok/s, time to first token and queue wait (p50/p95), and errors.
The cap and the reply length are set live for the run through the
generation settings (every process applies them) and restored afterwards.
"""

import asyncio
import json
import secrets
import statistics
import time
import urllib.parse

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from generation.management.commands.bench_engine import prompt
from generation.stats import summarize
from generation.wsclient import ChatSocket, login
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


async def run_level(ws_url: str, users: list[tuple[str, str]], clients: int) -> dict:
    """All `clients` send at once; collect what each saw."""
    base = http_base(ws_url)
    cookies = await asyncio.gather(*(asyncio.to_thread(login, base, *users[i]) for i in range(clients)))
    sockets = await asyncio.gather(*(ChatSocket.open(ws_url, cookie, origin=base) for cookie in cookies))
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
    }


class Command(BaseCommand):
    help = "Benchmark chat throughput through the whole stack (nginx, daphne, the service)."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="ws://127.0.0.1:8080/ws/chat/")
        parser.add_argument("--clients", default="1,8,16", help="Comma-separated client counts.")
        parser.add_argument("--new-tokens", type=int, default=128, help="Reply length limit during the run.")
        parser.add_argument(
            "--cap", type=int, default=None, help="max_concurrency per process (default: clients)."
        )
        parser.add_argument(
            "--warmup", type=int, default=4, help="Untimed clients first (one per process or more)."
        )
        parser.add_argument("--json", dest="json_path", help="Write the results to this file.")

    def handle(self, *args, **options):
        levels = [int(level) for level in options["clients"].split(",")]
        users = bench_users(max(*levels, options["warmup"]))
        keep = generation_settings_get().limits()
        rows = []
        try:
            # Untimed: nginx spreads these over the processes, so each loads its
            # model replica before any timed run.
            generation_settings_update(user=None, limits=keep.replace(max_new_tokens=8))
            asyncio.run(run_level(options["url"], users, min(options["warmup"], len(users))))
            for level in levels:
                cap = options["cap"] or level
                limits = keep.replace(
                    max_concurrency=cap, max_queue_size=max(level, 1), max_new_tokens=options["new_tokens"]
                )
                generation_settings_update(user=None, limits=limits)
                time.sleep(SETTLE_S)
                row = asyncio.run(run_level(options["url"], users, level))
                rows.append({**row, "cap": cap, "new_tokens": options["new_tokens"]})
                self.stderr.write(f"  done: {level} clients: {row['aggregate_tok_s']} tok/s")
        finally:
            generation_settings_update(user=None, limits=keep)
        columns = ["clients", "cap", "aggregate_tok_s", "ttft_p50_ms", "ttft_p95_ms"]
        columns += ["queue_wait_p50_ms", "queue_wait_p95_ms", "mean_reply_tokens", "errors"]
        self.stdout.write(" | ".join(columns))
        for row in rows:
            self.stdout.write(" | ".join(str(row[column]) for column in columns))
        if options["json_path"]:
            with open(options["json_path"], "w") as handle:
                json.dump({"url": options["url"], "results": rows}, handle, indent=2)
