"""The batched sampler: repetition penalty, top-k and top-p, for all rows at once."""

import pytest
import torch

from generation.runtime.sampler import CANDIDATES, TokenHistory, penalise, pick
from generation.runtime.sampling import SamplingParams


def params(**fields) -> SamplingParams:
    return SamplingParams(max_new_tokens=8, **{"top_p": 1.0, "top_k": 0, **fields})


def test_penalty_divides_positive_and_multiplies_negative_logits_once():
    """CTRL's rule: a seen token's logit 2 becomes 1 and -2 becomes -4 at
    penalty 2, however often it was seen; unseen tokens keep theirs."""
    logits = torch.tensor([[2.0, -2.0, 3.0, 0.5]])
    penalise(logits, torch.tensor([[0, 1, 0, 0]]), torch.tensor([[2.0]]))
    assert logits.tolist() == [[1.0, -4.0, 3.0, 0.5]]


def test_a_row_at_penalty_one_is_left_exactly_as_it_was():
    """Penalty 1 changes no bit, so mixing rows with and without is safe."""
    torch.manual_seed(0)
    logits = torch.randn(2, 1000) * 7
    before = logits.clone()
    seen = torch.randint(0, 1000, (2, 50))
    penalise(logits, seen, torch.tensor([[1.0], [1.5]]))
    assert torch.equal(logits[0], before[0])
    assert not torch.equal(logits[1], before[1])


def test_the_penalty_turns_greedy_away_from_a_seen_token():
    logits = torch.tensor([[4.0, 3.0, -1.0]])
    penalise(logits, torch.tensor([[0]]), torch.tensor([[1.5]]))
    assert int(torch.argmax(logits)) == 1


def test_token_history_follows_rows_that_join_and_leave():
    """Rows are covered from their token lists when they join, gain one
    column per step, and keep their own tokens when others leave."""
    history = TokenHistory()
    ids = history.covering([[5, 6], [7]], torch.device("cpu"))
    assert ids.tolist() == [[5, 6], [7, 7]]
    history.append(torch.tensor([8, 9]))
    ids = history.covering([[5, 6, 8], [7, 9], [1, 2, 3, 4]], torch.device("cpu"))
    assert [set(row) for row in ids.tolist()] == [{5, 6, 8}, {7, 9}, {1, 2, 3, 4}]
    history.keep([0, 2])
    assert [set(row) for row in history.ids.tolist()] == [{5, 6, 8}, {1, 2, 3, 4}]
    history.keep([])
    assert len(history) == 0


def test_greedy_rows_take_the_argmax_and_top_k_one_is_greedy():
    torch.manual_seed(1)
    logits = torch.randn(3, 500)
    rows = [
        params(temperature=0.0),
        params(temperature=1.5, top_k=1),
        params(temperature=2.0, top_k=1, top_p=0.3),
    ]
    tokens = pick(logits, rows, [None] * 3, torch.Generator().manual_seed(0))
    assert tokens.tolist() == torch.argmax(logits, dim=-1).tolist()


def nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> set[int]:
    """The reference nucleus: the smallest most-likely set whose mass reaches top_p."""
    probs = torch.softmax(logits / temperature, dim=-1)
    ordered, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(ordered, dim=-1) - ordered <= top_p
    return set(order[keep].tolist())


@pytest.mark.parametrize(
    ("scale", "temperature", "top_p"),
    [(8.0, 0.2, 0.9), (1.0, 1.0, 0.95), (0.1, 2.0, 0.99)],
    ids=["peaked: within the candidates", "broad", "flat: the whole vocabulary is sorted"],
)
def test_top_p_draws_only_from_the_nucleus(scale, temperature, top_p):
    """However many tokens the nucleus holds (a few, or more than the
    CANDIDATES looked at first), every draw lies inside it, and a broad one
    is not cut down to the candidates."""
    torch.manual_seed(2)
    logits = torch.randn(1, 4000) * scale
    allowed = nucleus(logits[0], temperature, top_p)
    generator = torch.Generator().manual_seed(3)
    row = params(temperature=temperature, top_p=top_p)
    drawn = {int(pick(logits, [row], [None], generator)[0]) for _ in range(300)}
    assert drawn <= allowed
    if len(allowed) > 2 * CANDIDATES:
        assert len(drawn) > CANDIDATES


def test_top_k_keeps_the_k_most_likely_then_top_p_within_them():
    logits = torch.tensor([[5.0, 4.9, 4.8, 4.7, -3.0, -3.0]])
    generator = torch.Generator().manual_seed(0)
    drawn = {int(pick(logits, [params(temperature=1.0, top_k=3)], [None], generator)[0]) for _ in range(200)}
    assert drawn == {0, 1, 2}
    row = params(temperature=1.0, top_k=3, top_p=0.5)
    drawn = {int(pick(logits, [row], [None], generator)[0]) for _ in range(200)}
    assert drawn == {0, 1}  # 0 holds a third of the three's mass; 0 and 1 pass a half


def test_a_seeded_row_draws_the_same_alone_or_in_a_batch():
    torch.manual_seed(4)
    logits = torch.randn(3, 800) * 3
    row = params(temperature=1.0, top_p=0.95)
    alone = [int(pick(logits[1:2], [row], [g], torch.Generator())[0]) for g in _seeded(5)]
    batch = [
        int(
            pick(
                logits, [params(temperature=1.0), row, row], [None, g, None], torch.Generator().manual_seed(9)
            )[1]
        )
        for g in _seeded(5)
    ]
    assert alone == batch


def _seeded(count: int):
    generator = torch.Generator().manual_seed(42)
    for _ in range(count):
        yield generator
