"""Pointer Networks (Vinyals et al., 2015) and a Transformer-encoder variant (Kool et al., 2019).

The model points at input positions. Position 0 of every pointer distribution is a learned
end-of-sequence slot (the paper's "⇒" symbol); input point `i` (0-based) sits at position `i + 1`.
A target sequence is therefore `[i1 + 1, ..., ik + 1, 0]`.

Shapes: `points (B, L, 2)`, `lengths (B,)`, encoder outputs `(B, L + 1, H)` (EOS slot first),
pointer logits `(B, T, L + 1)` when teacher-forced, `(B, L + 1)` per decoding step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from apps.common.export import ExportGraph
from shared_attention import AdditiveAttention, MultiHeadAttention, PointerHead

EOS = 0


def valid_positions(lengths: Tensor, max_len: int) -> Tensor:
    """`(B, max_len)` bool: True where a point is real (not padding)."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class LSTMEncoder(nn.Module):
    """The paper's encoder: a linear embedding of the coordinates and a single-layer LSTM.

    The decoder starts from the hidden state at the last real point (padding comes after it, so
    this is exact for padded batches); the cell state starts at zero, which keeps the encoder
    exportable without packed sequences.
    """

    def __init__(self, input_dim: int = 2, embed_dim: int = 128, hidden_dim: int = 128) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.embed = nn.Linear(input_dim, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)

    def forward(self, points: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`points (B, L, 2)`, `valid (B, L)` → `outputs (B, L, H)`, `h0 (B, H)`, `c0 (B, H)`."""
        outputs, _ = self.lstm(self.embed(points))
        last = (valid.sum(dim=1) - 1).clamp(min=0)
        h0 = outputs.gather(1, last.view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])).squeeze(1)
        return outputs, h0, torch.zeros_like(h0)


class TransformerEncoderLayer(nn.Module):
    """Pre-norm Transformer block whose token mixing is the swappable attention site."""

    def __init__(
        self, embed_dim: int, num_heads: int, ff_dim: int, dropout: float, attention: Callable[..., nn.Module]
    ) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(embed_dim)
        self.attn = attention(embed_dim=embed_dim, num_heads=num_heads, dropout=dropout)
        self.norm_ff = nn.LayerNorm(embed_dim)
        self.ff = nn.Sequential(
            nn.Linear(embed_dim, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, embed_dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        x = x + self.dropout(self.attn(self.norm_attn(x), mask=valid))
        return x + self.dropout(self.ff(self.norm_ff(x)))


class TransformerEncoder(nn.Module):
    """Kool et al.'s attention-model encoder (no positional encoding: a set of points).

    `attention` is a factory (a Hydra partial from `conf/attention/`) called as
    `attention(embed_dim=..., num_heads=..., dropout=...)`, so `attention=<mechanism>` swaps every layer.
    """

    def __init__(
        self,
        input_dim: int = 2,
        embed_dim: int = 128,
        num_layers: int = 3,
        num_heads: int = 8,
        ff_dim: int = 512,
        dropout: float = 0.0,
        attention: Callable[..., nn.Module] = MultiHeadAttention,
    ) -> None:
        super().__init__()
        self.hidden_dim = embed_dim
        self.embed = nn.Linear(input_dim, embed_dim)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(embed_dim, num_heads, ff_dim, dropout, attention)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, points: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`points (B, L, 2)`, `valid (B, L)` → `outputs (B, L, H)`, `h0` = masked mean `(B, H)`, `c0 = 0`."""
        x = self.embed(points)
        for layer in self.layers:
            x = layer(x, valid)
        x = self.norm(x)
        weights = valid.unsqueeze(-1).to(x.dtype)
        h0 = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return x, h0, torch.zeros_like(h0)


@dataclass
class EncodedInput:
    """What the decoder needs from the encoder; every tensor is `(B, L + 1, ·)` or `(B, H)`."""

    keys: Tensor
    pointer_keys: Tensor
    glimpse_keys: Tensor
    h: Tensor
    c: Tensor
    valid: Tensor


class PointerNet(nn.Module):
    """Encoder (LSTM or Transformer) + LSTM decoder + additive pointer over the input positions.

    Args:
        encoder: `LSTMEncoder` or `TransformerEncoder` (anything returning outputs, h0, c0).
        embed_dim: size of the decoder's input embedding of the previously chosen point.
        glimpse: add one additive-attention glimpse before pointing (Bello et al., 2016).
        clip: logit clipping `C · tanh(u)` (Bello et al.; Kool et al. use C = 10); None disables.
    """

    def __init__(
        self,
        encoder: nn.Module,
        embed_dim: int = 128,
        input_dim: int = 2,
        glimpse: bool = False,
        clip: float | None = None,
    ) -> None:
        super().__init__()
        hidden = encoder.hidden_dim
        self.encoder = encoder
        self.input_dim = input_dim
        self.point_embed = nn.Linear(input_dim, embed_dim)
        self.start = nn.Parameter(torch.empty(embed_dim).uniform_(-0.1, 0.1))
        self.eos_key = nn.Parameter(torch.empty(hidden).uniform_(-0.1, 0.1))
        self.decoder = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.glimpse = AdditiveAttention(hidden, hidden, hidden) if glimpse else None
        self.pointer = PointerHead(hidden, hidden, hidden, clip=clip)

    def encode(self, points: Tensor, lengths: Tensor) -> EncodedInput:
        """`points (B, L, 2)`, `lengths (B,)` → the encoder state, with the EOS slot at position 0."""
        batch, max_len, _ = points.shape
        valid_points = valid_positions(lengths, max_len)
        outputs, h0, c0 = self.encoder(points, valid_points)
        keys = torch.cat([self.eos_key.view(1, 1, -1).expand(batch, 1, -1), outputs], dim=1)
        valid = torch.cat([torch.ones_like(valid_points[:, :1]), valid_points], dim=1)
        pointer_keys = self.pointer.project_keys(keys)
        glimpse_keys = self.glimpse.project_keys(keys) if self.glimpse is not None else pointer_keys
        return EncodedInput(keys, pointer_keys, glimpse_keys, h0, c0, valid)

    def decoder_inputs(self, points: Tensor, positions: Tensor) -> Tensor:
        """Embed the points at pointer `positions (B, T)` (0 = start symbol) → `(B, T, E)`."""
        index = (positions - 1).clamp(min=0)
        chosen = points.gather(1, index.unsqueeze(-1).expand(-1, -1, self.input_dim))
        embedded = self.point_embed(chosen)
        return torch.where((positions == EOS).unsqueeze(-1), self.start.to(embedded.dtype), embedded)

    def point(self, decoded: Tensor, enc: EncodedInput) -> Tensor:
        """Decoder states `(B, T, H)` → pointer logits `(B, T, L + 1)`."""
        query = decoded
        if self.glimpse is not None:
            query, _ = self.glimpse(decoded, enc.keys, mask=enc.valid, projected_keys=enc.glimpse_keys)
        return self.pointer(query, enc.keys, mask=enc.valid, projected_keys=enc.pointer_keys)

    def forward(self, points: Tensor, lengths: Tensor, target: Tensor) -> Tensor:
        """Teacher-forced logits. `target (B, T)` positions, padded with any negative value → `(B, T, L + 1)`."""
        enc = self.encode(points, lengths)
        previous = torch.cat([torch.zeros_like(target[:, :1]), target[:, :-1]], dim=1).clamp(min=0)
        decoded, _ = self.decoder(
            self.decoder_inputs(points, previous), (enc.h.unsqueeze(0), enc.c.unsqueeze(0))
        )
        return self.point(decoded, enc)

    def step(
        self, points: Tensor, previous: Tensor, h: Tensor, c: Tensor, enc: EncodedInput
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One decoding step: `previous (B,)` position chosen last → `logits (B, L + 1)`, new `h, c (B, H)`."""
        inputs = self.decoder_inputs(points, previous.unsqueeze(1))
        decoded, (h_next, c_next) = self.decoder(inputs, (h.unsqueeze(0), c.unsqueeze(0)))
        return self.point(decoded, enc).squeeze(1), h_next.squeeze(0), c_next.squeeze(0)

    def export_graphs(self, batch: dict[str, Tensor]) -> list[ExportGraph]:
        """The encoder and one decoder step as two graphs with dynamic batch and length.

        The greedy/beam loop stays outside the graphs (its length depends on the data); a runtime
        drives `decoder_step` exactly as `decoding.greedy_decode` drives `PointerNet.step`.
        Checked on `batch` and on a smaller batch padded to a longer length.
        """
        points, lengths = batch["points"].float(), batch["lengths"]
        small_points = torch.nn.functional.pad(points[: max(1, len(points) // 2)], (0, 0, 0, 3))
        small_lengths = lengths[: len(small_points)]
        encoder = _EncoderGraph(self).eval()
        step = _StepGraph(self).eval()
        with torch.no_grad():
            first, previous = encoder(points, lengths), batch["target"][:, 0].clamp(min=0)
            second = encoder(small_points, small_lengths)
        batch_dim, length_dim, width_dim = (
            {0: "batch"},
            {0: "batch", 1: "length"},
            {0: "batch", 1: "positions"},
        )
        return [
            ExportGraph(
                "encoder",
                encoder,
                (points, lengths),
                ("points", "lengths"),
                _EncoderGraph.outputs,
                (length_dim, batch_dim),
                check_inputs=[(small_points, small_lengths)],
            ),
            ExportGraph(
                "decoder_step",
                step,
                (points, previous, *first),
                ("points", "previous", "h", "c", "keys", "pointer_keys", "glimpse_keys", "valid"),
                ("logits", "h_next", "c_next"),
                (length_dim, batch_dim, batch_dim, batch_dim, width_dim, width_dim, width_dim, width_dim),
                check_inputs=[(small_points, torch.zeros_like(small_lengths), *second)],
            ),
        ]


class _EncoderGraph(nn.Module):
    outputs = ("h", "c", "keys", "pointer_keys", "glimpse_keys", "valid")

    def __init__(self, net: PointerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, points: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        enc = self.net.encode(points, lengths)
        return enc.h, enc.c, enc.keys, enc.pointer_keys, enc.glimpse_keys, enc.valid


class _StepGraph(nn.Module):
    def __init__(self, net: PointerNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        points: Tensor,
        previous: Tensor,
        h: Tensor,
        c: Tensor,
        keys: Tensor,
        pointer_keys: Tensor,
        glimpse_keys: Tensor,
        valid: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        enc = EncodedInput(keys, pointer_keys, glimpse_keys, h, c, valid)
        return self.net.step(points, previous, h, c, enc)
