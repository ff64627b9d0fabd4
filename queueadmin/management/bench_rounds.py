"""Rounds of `bench_chat`: repeat a comparison and pool what each side saw.

A comparison of two ways through the site (the site queue against each
process's own admission, or the API against the chat socket) on this shared
machine drifts: other work starts and stops, caches warm, the load average
moves by a core in a minute. `bench_chat --rounds N` therefore runs the
pair N times in an alternating order (A B, B A, A B, ...), so that a drift
over the run costs both sides alike, and reports each side's figures
pooled over its rounds: tokens over wall time for tok/s, and percentiles of
all the samples of every round together.

A row of one round carries its raw samples under keys that start with an
underscore (milliseconds): `_ttft_ms`, `_queue_wait_ms` and, with
--processes, `_admission_ms`. `pool_rows` uses them; `public` drops them
before a row is printed or written.
"""

from generation.stats import summarize

SAMPLE_KEYS = ("_ttft_ms", "_queue_wait_ms", "_admission_ms")


def round_order(sides: list[str], index: int) -> list[str]:
    """`sides` in the order round `index` (from 0) runs them: as given in
    even rounds, reversed in odd ones (A B, B A, A B, ...)."""
    return list(sides) if index % 2 == 0 else list(reversed(sides))


def _ms(value: float | None, digits: int) -> float | int | None:
    if value is None:
        return None
    return round(value) if digits == 0 else round(value, digits)


def percentiles(prefix: str, samples: list[float], *, digits: int = 0) -> dict:
    """{`<prefix>_p50_ms`, `<prefix>_p95_ms`} of millisecond samples, rounded
    to `digits` (0: whole milliseconds); None without samples."""
    summary = summarize(samples)
    return {
        f"{prefix}_p50_ms": _ms(summary["p50"], digits),
        f"{prefix}_p95_ms": _ms(summary["p95"], digits),
    }


def pool_rows(rows: list[dict]) -> list[dict]:
    """One row per (scope, path, clients) of the rounds' `rows`, in the order
    first seen: tokens and wall time summed (aggregate tok/s is their
    quotient), errors added up, TTFT, queue wait and (with samples) submit-to-
    start percentiles over every round's samples, and `rounds` counted."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("scope"), row.get("path"), row["clients"]), []).append(row)
    pooled = []
    for members in groups.values():
        first = members[0]
        samples = {key: [value for row in members for value in row.get(key, [])] for key in SAMPLE_KEYS}
        tokens = sum(row["completion_tokens"] for row in members)
        wall = sum(row["wall_s"] for row in members)
        errors: dict[str, int] = {}
        for row in members:
            for code, count in row["errors"].items():
                errors[code] = errors.get(code, 0) + count
        replies = sum(row["replies"] for row in members)
        row = {
            **{key: value for key, value in first.items() if key not in ("round", *SAMPLE_KEYS)},
            "rounds": len(members),
            "completion_tokens": tokens,
            "wall_s": round(wall, 2),
            "aggregate_tok_s": round(tokens / wall, 1) if wall else 0.0,
            **percentiles("ttft", samples["_ttft_ms"]),
            "mean_reply_tokens": round(tokens / replies, 1) if replies else 0,
            "replies": replies,
            "errors": errors,
        }
        if any(row_.get("queue_wait_p50_ms") is not None for row_ in members):
            row.update(percentiles("queue_wait", samples["_queue_wait_ms"]))
        if "_admission_ms" in first:
            row.update(admission_summary(samples["_admission_ms"]))
        pooled.append(row)
    return pooled


def admission_summary(samples: list[float]) -> dict:
    """p50/p95 of submit-to-start samples (ms), to the microsecond, and their count."""
    return {**percentiles("admission", samples, digits=3), "admission_samples": len(samples)}


def public(row: dict) -> dict:
    """`row` without its raw samples, for the table and the JSON report."""
    return {key: value for key, value in row.items() if key not in SAMPLE_KEYS}
