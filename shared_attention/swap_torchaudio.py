"""Replace the self-attention of torchaudio's wav2vec2 / HuBERT encoders by the core's layers.

torchaudio's `SelfAttention` (`torchaudio.models.wav2vec2.components`) is called by each
`EncoderLayer` as `attention(x, attention_mask=..., position_bias=..., key_padding_mask=...)` and
returns `(output, None)`. `TorchaudioAttentionAdapter` gives one of our layers (`layer(x, *,
mask=None) -> Tensor`) that calling convention. The weights carry over by name and shape
(`q_proj`, `k_proj`, `v_proj`, `out_proj` are the names of both sides); with the softmax layer the
swapped model computes what torchaudio's does.

torchaudio's encoders pass an additive mask `(B, 1, L, L)` holding 0 for valid keys and a large
negative number (-10000) for padded keys, identical for every query row; the adapter reads it as a
key-padding mask `(B, L)` (True = valid key), the form every mechanism accepts. WavLM's relative
position bias is not supported (its attention module is a different class and is not swapped).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class TorchaudioAttentionAdapter(nn.Module):
    """Wraps `layer` (one of ours) in torchaudio's self-attention calling convention.

    Shapes: `x (B, L, E)`, `attention_mask (B, 1, L, L)` additive or bool (True = keep) or None
    → `((B, L, E), None)`.
    """

    def __init__(self, layer: nn.Module, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.layer = layer
        self.embed_dim = embed_dim
        self.num_heads = num_heads

    def forward(
        self,
        x: Tensor,
        attention_mask: Tensor | None = None,
        position_bias: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        mask = None
        if attention_mask is not None:
            row = attention_mask[:, 0, 0, :]
            mask = row if row.dtype == torch.bool else row > -1.0
        return self.layer(x, mask=mask), None


def _carry_weights(source: nn.Module, target: nn.Module) -> list[str]:
    """Copy every parameter of `source` whose name and shape `target` shares; returns the names."""
    target_state = target.state_dict()
    carried = {
        name: value
        for name, value in source.state_dict().items()
        if name in target_state and target_state[name].shape == value.shape
    }
    target.load_state_dict(carried, strict=False)
    return sorted(carried)


def swap_torchaudio_attention(
    model: nn.Module, factory: Callable[..., nn.Module], *, dropout: float | None = None
) -> list[str]:
    """Replace every torchaudio wav2vec2/HuBERT `SelfAttention` inside `model` in place.

    `factory(embed_dim=E, num_heads=H, dropout=p)` builds our layer (a Hydra partial from
    `conf/attention/`); `p` is the replaced module's dropout unless `dropout` is given. Weights
    with the same name and shape are carried over; the replaced modules' names are returned.
    A mechanism that lacks one of the projections (e.g. no query/key) simply starts that part
    fresh, and the log of carried names says so.
    """
    from torchaudio.models.wav2vec2.components import SelfAttention

    replaced = []
    for name, module in list(model.named_modules()):
        if type(module) is not SelfAttention:
            continue
        p = module.dropout if dropout is None else dropout
        layer = factory(embed_dim=module.embed_dim, num_heads=module.num_heads, dropout=p)
        carried = _carry_weights(module, layer)
        missing = {"q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"} - set(carried)
        if missing and set(dict(layer.named_parameters())) & missing:
            raise ValueError(f"{name}: could not carry {sorted(missing)} into {type(layer).__name__}")
        adapter = TorchaudioAttentionAdapter(layer, module.embed_dim, module.num_heads)
        adapter.to(next(module.parameters()).device).train(module.training)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, adapter)
        replaced.append(name)
    return replaced
