"""The ragged engine's prefill plan (generation.runtime.prefillplan): with
the time budget a short turn does not queue behind a pasted document, the
document is not starved by a stream of short turns, a step's prefill grows
with the replies decoding but stays within its time and token bounds; the
costs are learned from measured steps; and on the tiny model the timed plan
changes no greedy reply."""

from dataclasses import dataclass

import pytest

from generation.runtime.engine import SamplingParams, make_engine
from generation.runtime.loading import shared_model
from generation.runtime.prefillplan import MAX_CHUNKS, FixedChunks, StepCosts, TimedBudget, make_policy
from generation.runtime.worker import stop_token_ids
from tests.generation.test_chunked_prefill import generate, prompt_of


@dataclass
class Prompt:
    name: str
    left: int
    waited: int = 0


class LinearCosts(StepCosts):
    """Known costs instead of learned ones: a step takes 20 ms + 8 ms per
    decoding row + 1 ms per prompt token (about this machine's SmolLM2 step
    at 8-16 rows, docs/benchmarks.md)."""

    def observe(self, rows, tokens, seconds):
        pass

    def decode_s(self, rows):
        return 0.020 + 0.008 * rows

    @property
    def token_s(self):
        return 0.001


def run(policy, queue: list[Prompt], rows: int, arrivals=None, steps=400) -> dict[str, int]:
    """Plan `steps` steps over `queue` as the engine does; `arrivals(step)`
    gives the prompts arriving before that step. Returns the step at which
    each prompt's prefill ended, by name."""
    done = {}
    for step in range(steps):
        queue += arrivals(step) if arrivals else []
        pieces = policy.plan(list(queue), rows)
        assert len({id(p) for p, _ in pieces}) == len(pieces) and all(size > 0 for _, size in pieces)
        for prompt, size in pieces:
            assert size <= prompt.left
            prompt.left -= size
        for prompt in list(queue):
            if prompt.left == 0:
                done[prompt.name] = step
                queue.remove(prompt)
            else:
                prompt.waited += 1
        if not queue and not arrivals:
            break
    return done


def test_a_short_turn_behind_a_pasted_document_starts_at_once():
    """16 replies decode; a 3,000-token paste waits, and a 120-token turn
    arrives just after it. With the time budget the turn is prefilled in
    the very next step; with fixed chunks of 64, oldest first, it waits
    for the whole paste (47 steps, some 10 s at 16 replies)."""
    timed = run(TimedBudget(64, costs=LinearCosts()), [Prompt("paste", 3000), Prompt("turn", 120)], rows=16)
    fixed = run(FixedChunks(64), [Prompt("paste", 3000), Prompt("turn", 120)], rows=16)
    assert timed["turn"] == 0
    assert fixed["turn"] >= 3000 // 64
    assert timed["paste"] <= fixed["paste"]  # and the paste itself is not later for it


def test_a_pasted_document_is_not_starved_by_a_stream_of_short_turns():
    """A new 200-token turn arrives every step, more than the budget
    prefills: the paste still finishes, within twice the steps its ageing
    (3,000 / 64 steps to overtake any newer turn) and its half of the
    budget (3,000 / 74) take, while the turns pile up. Shortest first
    without the ageing never gets to it."""
    policy = TimedBudget(64, costs=LinearCosts())
    budget = policy.budget(16)
    assert budget < 200  # the turns alone are more than the steps can prefill

    def arrivals(step):
        return [Prompt(f"turn{step}", 200)]

    done = run(policy, [Prompt("paste", 3000)], rows=16, arrivals=arrivals, steps=300)
    assert done["paste"] <= 2 * (3000 // 64 + 3000 // (budget // 2)), done["paste"]

    class ShortestFirst(TimedBudget):
        def order(self, waiting):
            return sorted(waiting, key=lambda prefill: prefill.left)

    starved = run(ShortestFirst(64, costs=LinearCosts()), [Prompt("paste", 3000)], 16, arrivals, steps=300)
    assert "paste" not in starved


def test_the_budget_grows_with_the_replies_decoding_and_stays_bounded():
    """The prompt tokens a step may carry are `chunk` until the costs are
    known; then those that keep the step within `stretch` times its
    decode-only time: more with more rows decoding (a longer step anyway),
    never under the chunk nor over MAX_CHUNKS chunks. A planned step's
    predicted time stays within the stretch once above the chunk."""
    assert TimedBudget(64).budget(16) == 64
    policy = TimedBudget(64, stretch=2.0, costs=LinearCosts())
    budgets = {rows: policy.budget(rows) for rows in (1, 4, 8, 16, 32, 1000)}
    assert budgets[1] == budgets[4] == 64  # 28-52 ms of decode: under a chunk's 64 ms
    assert budgets[8] == 84 and budgets[16] == 148 and budgets[32] == 276
    assert budgets[1000] == MAX_CHUNKS * 64
    costs = LinearCosts()
    for rows in (8, 16, 32):
        queue = [Prompt(str(i), 50 + 97 * i) for i in range(12)]
        planned = sum(size for _, size in policy.plan(queue, rows))
        assert planned == budgets[rows]
        assert costs.decode_s(rows) + planned * costs.token_s <= 2.0 * costs.decode_s(rows) + costs.token_s


def test_an_idle_engine_prefills_the_shortest_prompt_whole():
    """With no reply decoding, the first prompt in the plan's order is
    prefilled whole in one step, however long."""
    policy = TimedBudget(64, costs=LinearCosts())
    queue = [Prompt("paste", 3000), Prompt("turn", 300)]
    assert [(p.name, size) for p, size in policy.plan(queue, rows=0)] == [("turn", 300)]
    assert [(p.name, size) for p, size in policy.plan(queue[:1], rows=0)] == [("paste", 3000)]


def test_costs_are_learned_from_measured_steps():
    """Steps timed at 20 ms + 8 ms per row, plus 1 ms per prompt token when
    they carry prefill, give back those costs and the budget they imply;
    when the steps get slower (another load on the machine) while prompts
    keep waiting, steps with prefill alone bring the costs up to date."""
    policy = TimedBudget(64, stretch=2.0)
    assert policy.costs.decode_s(8) is None and policy.budget(8) == 64
    for rows, tokens in (
        (2, 0),
        (4, 0),
        (8, 0),
        (16, 0),
        (4, 64),
        (8, 0),
        (8, 64),
        (16, 100),
        (4, 64),
        (16, 0),
    ):
        policy.observe(rows, tokens, 0.020 + 0.008 * rows + 0.001 * tokens)
    assert policy.costs.decode_s(16) == pytest.approx(0.148, rel=0.05)
    assert policy.costs.token_s == pytest.approx(0.001, rel=0.05)
    assert policy.budget(16) == pytest.approx(148, abs=8)
    for step in range(64):  # all with prefill, every cost doubled
        rows, tokens = 8 + step % 9, policy.budget(8 + step % 9)
        policy.observe(rows, tokens, 2 * (0.020 + 0.008 * rows + 0.001 * tokens))
    assert policy.costs.decode_s(16) == pytest.approx(0.296, rel=0.1)
    assert policy.costs.token_s == pytest.approx(0.002, rel=0.1)
    assert policy.budget(16) == pytest.approx(148, abs=16)


def test_a_few_slow_steps_do_not_move_the_costs():
    """Three steps among twenty that took ten times as long (another
    process had the cores) leave the learned costs, and so the budget,
    where the other steps put them."""
    policy = TimedBudget(64, stretch=2.0)
    for step in range(20):
        rows, tokens = 4 + step % 13, (0, 64, 100)[step % 3]
        seconds = 0.020 + 0.008 * rows + 0.001 * tokens
        policy.observe(rows, tokens, seconds * (10 if step in (1, 2, 9) else 1))
    assert policy.costs.decode_s(16) == pytest.approx(0.148, rel=0.02)
    assert policy.costs.token_s == pytest.approx(0.001, rel=0.02)
    assert policy.budget(16) == pytest.approx(148, abs=3)


def test_one_row_count_seen_predicts_a_flat_decode_cost():
    """Steps seen only at 4 rows say nothing of 16: the decode cost is then
    taken as flat (the smaller prediction, so the smaller budget)."""
    costs = StepCosts()
    for tokens in (0, 64, 0, 100, 0):
        costs.observe(4, tokens, 0.052 + 0.001 * tokens)
    assert costs.decode_s(4) == pytest.approx(0.052, rel=0.05)
    assert costs.decode_s(16) == pytest.approx(0.052, rel=0.05)
    assert costs.token_s == pytest.approx(0.001, rel=0.05)


def test_unknown_policy_names_are_refused():
    assert isinstance(make_policy("fixed", 64), FixedChunks)
    with pytest.raises(ValueError, match="policy"):
        make_policy("fastest", 64)


@pytest.fixture
def loaded(tiny_model_dir, settings):
    return shared_model(str(tiny_model_dir), "cpu", settings.GENERATION_CACHE_DIR)


def test_on_the_tiny_model_a_short_prompt_starts_while_a_long_one_is_prefilled(loaded):
    """Three replies decode; a 600-token prompt arrives, then a 3-word one a
    step later. With the time budget (chunk 32, known costs: 44 tokens a
    step at 3 rows, shortest first) the short prompt's first token
    comes in the step after it arrived, long before the long prompt's; with
    fixed chunks it comes only after the long prompt's."""
    firsts = {}
    for name, policy in (("timed", TimedBudget(32, costs=LinearCosts())), ("fixed", FixedChunks(32))):
        engine = make_engine("batched", loaded.model, stop_token_ids(loaded), prefill_chunk_tokens=32)
        engine.prefill_policy = policy
        for index in range(3):
            engine.add(str(index), prompt_of(loaded, 3, index), SamplingParams(200))
            engine.step()
        engine.add("long", prompt_of(loaded, 400, 7), SamplingParams(200))
        engine.step()
        engine.add("short", prompt_of(loaded, 3, 11), SamplingParams(200))
        first = {}
        for step in range(60):
            for output in engine.step():
                first.setdefault(output.seq_id, step)
        firsts[name] = first
    assert firsts["timed"]["short"] == 0 < firsts["timed"]["long"]
    assert firsts["fixed"]["short"] >= firsts["fixed"]["long"] > 10


def test_the_timed_plan_writes_the_same_greedy_text(loaded):
    """Prompts of many lengths arriving while others run and others wait,
    planned by the time budget (chunk 16, known costs: 28-76 tokens a step
    at 1-7 rows, shortest first, so pieces of several prompts share steps
    in another order), get exactly the tokens they get alone with whole prefill; and
    so with the budget learned from this machine's own step times."""
    prompt_list = [prompt_of(loaded, words, 100 + words) for words in (2, 60, 7, 120, 30, 1, 90)]
    alone = {str(i): generate(loaded, [p], chunk=0)[0]["0"] for i, p in enumerate(prompt_list)}
    known = TimedBudget(16, costs=LinearCosts())
    assert known.budget(1) == 28 and known.budget(7) == 76
    for policy in (known, TimedBudget(16)):
        together, _ = generate(loaded, prompt_list, chunk=16, join_every=1, policy=policy)
        assert together == alone
