"""Engine tests on the tiny model: batching must not change what is generated."""

import pytest

from generation.runtime.engine import SamplingParams, make_engine
from generation.runtime.loading import shared_model
from generation.runtime.prompt import encode_conversation
from generation.runtime.sampling import SamplingDefaults
from generation.runtime.worker import stop_token_ids

QUESTIONS = [
    "hello",
    "What is the capital of France?",
    "Tell me a story about a dragon who loved tea, in many words please.",
    "x y z",
    "日本語で自己紹介してください。",
]


@pytest.fixture
def loaded(tiny_model_dir, settings):
    return shared_model(str(tiny_model_dir), "cpu", settings.GENERATION_CACHE_DIR)


def prompts(loaded):
    return [encode_conversation(loaded.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def generate(loaded, strategy, prompt_list, *, join_every=1, max_new_tokens=40, params=None):
    """Run prompts through an engine, letting a new one join every `join_every`
    steps; `params` (one per prompt) default to greedy with `max_new_tokens`."""
    engine = make_engine(strategy, loaded.model, stop_token_ids(loaded))
    tokens = {str(i): [] for i in range(len(prompt_list))}
    reasons = {}
    pending = list(enumerate(prompt_list))
    params = params or [SamplingParams(max_new_tokens)] * len(prompt_list)
    step = 0
    while pending or len(engine):
        if pending and step % join_every == 0:
            index, prompt = pending.pop(0)
            outputs = [engine.add(str(index), prompt, params[index])]
        else:
            outputs = []
        outputs += engine.step()
        for output in outputs:
            tokens[output.seq_id].append(output.token_id)
            if output.finish_reason:
                reasons[output.seq_id] = output.finish_reason
        step += 1
    return tokens, reasons


@pytest.mark.parametrize("join_every", [1, 3, 7])
def test_batched_greedy_equals_single_greedy(loaded, join_every):
    """Prompts of different lengths joining at different steps get exactly the
    tokens they get when run alone."""
    prompt_list = prompts(loaded)
    alone = {str(i): generate(loaded, "batched", [p])[0]["0"] for i, p in enumerate(prompt_list)}
    together, _ = generate(loaded, "batched", prompt_list, join_every=join_every)
    assert together == alone
    assert len({tuple(t) for t in alone.values()}) == len(prompt_list), "outputs should differ per prompt"


def test_interleave_matches_batched(loaded):
    """The baseline strategy produces the same greedy text as the batched one."""
    prompt_list = prompts(loaded)
    assert generate(loaded, "interleave", prompt_list)[0] == generate(loaded, "batched", prompt_list)[0]


def test_length_limit_and_stop_reasons(loaded):
    """A sequence ends with "length" after max_new_tokens, or "stop" on an end token."""
    tokens, reasons = generate(loaded, "batched", prompts(loaded), max_new_tokens=5)
    for seq_id, seq_tokens in tokens.items():
        if reasons[seq_id] == "length":
            assert len(seq_tokens) == 5
        else:
            assert reasons[seq_id] == "stop"
            assert seq_tokens[-1] in stop_token_ids(loaded)


def test_sampling_respects_temperature(loaded):
    """temperature > 0 samples (outputs vary across seeds); 0 stays greedy."""
    prompt = prompts(loaded)[0]
    engine = make_engine("batched", loaded.model, stop_token_ids(loaded))
    sampled = set()
    for index in range(4):
        seq_id = f"s{index}"
        first = engine.add(seq_id, prompt, SamplingParams(max_new_tokens=8, temperature=1.5, top_p=0.95))
        run = [first.token_id]
        while seq_id in engine.sequences:
            run += [o.token_id for o in engine.step() if o.seq_id == seq_id]
        sampled.add(tuple(run))
    assert len(sampled) > 1


def test_a_seed_gives_the_same_reply_alone_and_in_a_batch(loaded):
    """A sampled request with a seed gets the same tokens whether it runs
    alone or joins a batch of other sampled requests (seeded or not) at
    another step; another seed gives another reply."""
    prompt_list = prompts(loaded)[:4]
    seeded = SamplingParams(max_new_tokens=16, temperature=1.0, seed=42)
    others = [SamplingParams(max_new_tokens=16, temperature=1.0, seed=seed) for seed in (None, 7, None)]
    alone = generate(loaded, "batched", [prompt_list[2]], params=[seeded])[0]["0"]
    in_batch, _ = generate(
        loaded, "batched", prompt_list, join_every=2, params=[*others[:2], seeded, others[2]]
    )
    assert in_batch["2"] == alone
    other_seed = SamplingParams(max_new_tokens=16, temperature=1.0, seed=43)
    assert generate(loaded, "batched", [prompt_list[2]], params=[other_seed])[0]["0"] != alone


def test_a_repetition_penalty_is_the_same_in_a_batch_as_alone(loaded):
    """With the penalty on for some rows, every row gets exactly the tokens it
    gets alone, while others join and leave the batch; rows without it get
    what they got before the penalty existed; and it does change a reply
    that repeated a token (the tiny model repeats one on "x y z")."""
    prompt_list = prompts(loaded)
    penalised = SamplingParams(max_new_tokens=40, repetition_penalty=1.3)
    plain = SamplingParams(max_new_tokens=40)
    mixed = [penalised if index % 2 else plain for index in range(len(prompt_list))]
    alone = {
        str(index): generate(loaded, "batched", [prompt], params=[mixed[index]])[0]["0"]
        for index, prompt in enumerate(prompt_list)
    }
    together, _ = generate(loaded, "batched", prompt_list, join_every=3, params=mixed)
    assert together == alone
    interleaved, _ = generate(loaded, "interleave", prompt_list, params=mixed)
    assert interleaved == alone
    repeated = generate(loaded, "batched", [prompt_list[3]], params=[plain])[0]["0"]
    assert len(set(repeated)) < len(repeated)
    assert alone["3"] != repeated
    assert len(set(alone["3"])) == len(alone["3"])


def test_engine_defaults_fill_what_a_request_leaves_unset(loaded):
    """A request that leaves top_k unset takes the engine's default: top_k 1
    makes sampling at any temperature greedy."""
    prompt = prompts(loaded)[:1]
    defaults = SamplingDefaults(temperature=1.5, top_p=1.0, top_k=1, repetition_penalty=1.0)
    engine = make_engine("batched", loaded.model, stop_token_ids(loaded), defaults)
    outputs = [engine.add("a", prompt[0], SamplingParams(max_new_tokens=12))]
    while len(engine):
        outputs += engine.step()
    assert [o.token_id for o in outputs] == generate(loaded, "batched", prompt, max_new_tokens=12)[0]["0"]


def test_unknown_strategy_is_refused(loaded):
    with pytest.raises(ValueError, match="interleave"):
        make_engine("round-robin", loaded.model, set())
