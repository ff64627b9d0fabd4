"""Grouped-query attention without copying the KV cache.

SmolLM2 has 9 query heads sharing 3 KV heads. transformers' SDPA path copies
every cached key and value three times per layer per step (`repeat_kv`)
whenever an attention mask is given, which continuous batching always gives
(left padding). PyTorch's SDPA reads grouped heads directly with
`enable_gqa=True`, mask or not; this registers that variant as the attention
implementation "sdpa_gqa", with the same masks as "sdpa".
"""

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "sdpa_gqa"


def sdpa_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention for one layer: [batch, heads, q, dim] in, [batch, q, heads, dim] out."""
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    is_causal = query.shape[2] > 1 and attention_mask is None
    output = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        is_causal=is_causal,
        enable_gqa=getattr(module, "num_key_value_groups", 1) > 1,
    )
    return output.transpose(1, 2).contiguous(), None


def use_gqa_attention(model: torch.nn.Module) -> None:
    """Switch a loaded model to the copy-free attention (idempotent)."""
    AttentionInterface.register(NAME, sdpa_gqa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.config._attn_implementation = NAME
