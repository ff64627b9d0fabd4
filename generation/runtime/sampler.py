"""Choosing the next token of every row of a batch at once.

`penalise` applies the repetition penalty of CTRL (Keskar et al. 2019, as
transformers' RepetitionPenaltyLogitsProcessor and vLLM do): the logit of
every token already in the row's reply is divided by the penalty when
positive and multiplied by it when negative, once per distinct token. Only
the reply's own tokens count: the question's words may be used freely, and
the prompt's end-of-turn markers are not made less likely, which would only
keep the model from stopping. `pick` then takes the argmax for greedy rows
(temperature 0) and samples the others after temperature, top-k and top-p
(top-k first, then top-p within what top-k kept, renormalised, as
transformers and vLLM order them).

Both work on the whole batch with a handful of tensor operations. Top-p
needs the tokens in order of probability; sorting 49,152 logits per row
costs about 10 ms on a CPU, so `pick` takes the CANDIDATES most likely tokens
first (`torch.topk`) and sorts the whole vocabulary only for a row whose
candidates hold no more than top_p of its probability (at the temperatures
chat uses, almost never). The nucleus is the same either way.
"""

import torch

CANDIDATES = 64
"""Tokens looked at first for top-k and top-p; a row that needs more sorts the whole vocabulary."""


def penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> None:
    """Apply the repetition penalty in place. `logits` [rows, vocab]; `seen`
    [rows, width] token ids of each row's reply (a repeated id changes
    nothing); `penalty` [rows, 1], 1.0 for a row without (left exactly as it was)."""
    scores = logits.gather(1, seen)
    logits.scatter_(1, seen, torch.where(scores > 0, scores / penalty, scores * penalty))


class TokenHistory:
    """Each batch row's reply tokens as one [rows, width] tensor, for `penalise`.

    It covers the first `len(self)` rows of the batch; rows that joined since
    are added from their token lists by `covering`, later ones get one column
    per step from `append`, and `keep` follows the rows that stay when some
    leave. A row shorter than the width is padded with its own first token."""

    def __init__(self):
        self.ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.ids is None else self.ids.shape[0]

    def covering(self, replies: list[list[int]], device: torch.device) -> torch.Tensor:
        """The tensor for these rows' replies (the batch's order, each non-empty)."""
        have = len(self)
        if have < len(replies):
            new = replies[have:]
            width = max([0 if self.ids is None else self.ids.shape[1]] + [len(r) for r in new])
            rows = torch.tensor([r + r[:1] * (width - len(r)) for r in new], device=device)
            if self.ids is None:
                self.ids = rows
            else:
                self.ids = torch.cat([_widen(self.ids, width), rows])
        return self.ids

    def append(self, tokens: torch.Tensor) -> None:
        """Add this step's token of every covered row (`tokens` [rows] may cover more)."""
        if self.ids is not None:
            self.ids = torch.cat([self.ids, tokens[: len(self), None]], dim=1)

    def keep(self, indices: list[int]) -> None:
        """Keep the rows at `indices` of the batch (rows not covered yet are ignored)."""
        if self.ids is not None:
            covered = [index for index in indices if index < len(self)]
            self.ids = self.ids[covered] if covered else None

    def clear(self) -> None:
        """Forget every row (no row asks for a penalty any more)."""
        self.ids = None


def _widen(ids: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - ids.shape[1]
    return torch.cat([ids, ids[:, :1].expand(-1, missing)], dim=1) if missing > 0 else ids


def pick(
    logits: torch.Tensor,
    params: list,
    generators: list[torch.Generator | None],
    shared: torch.Generator,
) -> torch.Tensor:
    """The next token of every row ([rows] ids) from `logits` [rows, vocab].

    `params[i]` is row i's resolved SamplingParams; `generators[i]` its own
    generator (it asked for a seed), else None: such rows draw together from
    `shared`. A seeded row's draw depends only on its own logits and
    generator, so it samples the same tokens whatever else is in the batch."""
    rows = [i for i, p in enumerate(params) if p.temperature > 0]
    if len(rows) < len(params):
        tokens = torch.argmax(logits, dim=-1)
        if not rows:
            return tokens
    else:  # every row samples: no argmax to pay for
        tokens = torch.empty(len(params), dtype=torch.long, device=logits.device)
    device = logits.device
    chosen = [params[i] for i in rows]
    temperature = torch.tensor([p.temperature for p in chosen], device=device)[:, None]
    picked = logits if len(rows) == len(params) else logits[torch.tensor(rows, device=device)]
    scaled = picked.float() / temperature
    weights, columns, whole = _candidate_weights(scaled, chosen)
    together = [j for j, i in enumerate(rows) if not whole[j] and generators[i] is None]
    if together:
        at = torch.tensor(together, device=device)
        drawn = torch.multinomial(weights[at], 1, generator=shared)
        tokens[torch.tensor([rows[j] for j in together], device=device)] = columns[at].gather(1, drawn)[:, 0]
    for j, i in enumerate(rows):
        if whole[j]:
            row_weights, row_columns = _whole_vocabulary(scaled[j], chosen[j])
        elif generators[i] is not None:
            row_weights, row_columns = weights[j], columns[j]
        else:
            continue
        draw = torch.multinomial(row_weights, 1, generator=generators[i] or shared)[0]
        tokens[i] = draw if row_columns is None else row_columns[draw]
    return tokens


def _candidate_weights(scaled: torch.Tensor, params: list) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """Weights over each row's CANDIDATES most likely tokens (and those
    tokens' ids), after top-k and top-p, for all rows in one go; and which
    rows need the whole vocabulary instead (no top-k nor top-p, or candidates
    that hold no more than top_p of the probability)."""
    device = scaled.device
    width = min(scaled.shape[1], max([CANDIDATES] + [p.top_k for p in params]))
    values, columns = torch.topk(scaled, width, dim=-1)
    top_k = torch.tensor([p.top_k or width for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device)[:, None]
    has_k = torch.tensor([p.top_k > 0 for p in params], device=device)[:, None]
    beyond_k = torch.arange(width, device=device)[None, :] >= top_k[:, None]
    # With top-k: renormalised over the k kept; without: shares of the whole vocabulary.
    within_k = torch.softmax(values.masked_fill(beyond_k, float("-inf")), dim=-1)
    of_all = torch.exp(values - _log_total(scaled))
    probs = torch.where(has_k, within_k, of_all)
    # The nucleus: the smallest prefix whose mass reaches top_p (at least one token).
    weights = probs.masked_fill(torch.cumsum(probs, dim=-1) - probs > top_p, 0)
    short = (~has_k[:, 0]) & (of_all.sum(dim=-1) <= top_p[:, 0])
    whole = [not (p.top_k > 0 or p.top_p < 1) for p in params]
    whole = [plain or bool(lacking) for plain, lacking in zip(whole, short.tolist(), strict=True)]
    return weights, columns, whole


def _log_total(scaled: torch.Tensor) -> torch.Tensor:
    """Each row's logsumexp ([rows, 1]), the softmax's normaliser. torch's own
    spends most of its time on the CPU's slow path for subnormal numbers:
    at temperature 0.2 most terms exp(x - max) underflow past 1e-38. Terms
    below exp(-80) (1.8e-35) are raised to it, which moves a total of at
    least 1 by under 1e-30: the same float32 result, 7 times faster."""
    top = scaled.amax(dim=-1, keepdim=True)
    return top + torch.log((scaled - top).clamp_(min=-80).exp_().sum(dim=-1, keepdim=True))


def _whole_vocabulary(scaled: torch.Tensor, params) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One row's weights over the whole vocabulary: its softmax for plain
    temperature sampling; sorted, with the nucleus kept, for top-p."""
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p >= 1:
        return probs, None
    ordered, order = torch.sort(probs, descending=True)
    return ordered.masked_fill(torch.cumsum(ordered, dim=-1) - ordered > params.top_p, 0), order
