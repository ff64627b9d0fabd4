"""`bench_chat --rounds`: the order of the sides and the pooled figures."""

from queueadmin.management.bench_rounds import pool_rows, public, round_order


def test_rounds_alternate_the_order_of_the_sides():
    """A B, B A, A B: a drift over the run costs both sides alike."""
    sides = ["ws", "api"]
    assert [round_order(sides, i) for i in range(3)] == [["ws", "api"], ["api", "ws"], ["ws", "api"]]


def run(path: str, round_: int, tokens: int, wall: float, ttfts: list[float], errors=None) -> dict:
    return {
        "path": path,
        "round": round_,
        "clients": 2,
        "completion_tokens": tokens,
        "wall_s": wall,
        "aggregate_tok_s": round(tokens / wall, 1),
        "replies": len(ttfts),
        "errors": errors or {},
        "_ttft_ms": ttfts,
    }


def test_pooled_rows_are_all_tokens_over_all_time_and_percentiles_of_all_samples():
    """A slow round and a fast one pool to tokens / wall time (not the mean of
    the two rates); TTFT percentiles come from every round's samples; errors
    add up; each path keeps its own row, in the order first seen."""
    rows = [
        run("ws", 1, 100, 10.0, [10, 20]),
        run("api", 1, 100, 5.0, [30, 40], {"rate_limit_exceeded": 1}),
        run("api", 2, 100, 5.0, [50, 60], {"rate_limit_exceeded": 1}),
        run("ws", 2, 100, 2.5, [70, 80]),
    ]
    ws, api = pool_rows(rows)
    assert (ws["path"], ws["rounds"], ws["completion_tokens"], ws["wall_s"]) == ("ws", 2, 200, 12.5)
    assert ws["aggregate_tok_s"] == 16.0  # not (10 + 40) / 2
    assert (ws["ttft_p50_ms"], ws["ttft_p95_ms"]) == (20, 80)
    assert api["errors"] == {"rate_limit_exceeded": 2}
    assert api["mean_reply_tokens"] == 50.0
    assert "round" not in ws
    assert not [key for key in public(rows[0]) if key.startswith("_")]
