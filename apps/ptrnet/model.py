"""Pointer Networks (Vinyals et al., 2015) and the attention model of Kool et al. (2019).

Encoders: the paper's LSTM or a Transformer encoder. Decoders: the paper's LSTM decoder with an
additive pointer (optionally a glimpse and logit clipping), or Kool et al.'s attention decoder
(`decoder="attention"`): a context of graph, first and last node embeddings, a multi-head glimpse
and a single-head pointer with clipped logits, no recurrence.

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
from shared_attention import AdditiveAttention, MultiHeadAttention, PointerHead, attention

EOS = 0
DECODERS = ("lstm", "attention")


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

    def repeat(self, times: int) -> EncodedInput:
        """Each row repeated `times` times in a row (`(B, ·)` → `(B · times, ·)`), for beams and samples."""
        if times == 1:
            return self
        return EncodedInput(
            *(t.repeat_interleave(times, dim=0) for t in (self.keys, self.pointer_keys, self.glimpse_keys)),
            *(t.repeat_interleave(times, dim=0) for t in (self.h, self.c, self.valid)),
        )


class PointerNet(nn.Module):
    """Encoder (LSTM or Transformer) + a pointer decoder over the input positions.

    Decoders (`decoder=`):

    - `"lstm"` (Vinyals et al., 2015): an LSTM fed with the previously chosen point, an optional
      additive glimpse (Bello et al., 2016) and the additive pointer `u_j = v^T tanh(W1 e_j + W2 d)`.
      Decoder state: `(h, c)`, each `(B, H)`.
    - `"attention"` (Kool et al., 2019, Sec. 3.2): context `h_c = [h̄; h_first; h_last]` (learned
      placeholders before the first choice), query `W_c h_c`; an `M`-head glimpse
      `g = W_O MHA(q, W_K h_j, W_V h_j)` over the allowed positions; a single-head pointer
      `u_j = C tanh(g^T (W_P h_j) / sqrt(H))` (Kool et al.'s Eq. 6, `C = clip`, default 10).
      Decoder state: `first (B,)` position of the first choice (0 = none yet) and
      `visited (B, L + 1)`; with `mask_visited` visited points are hidden from the glimpse and get
      no probability (Kool et al. mask infeasible nodes; hull, TSP), in training too.

    Args:
        encoder: `LSTMEncoder` or `TransformerEncoder` (anything returning outputs, h0, c0).
        embed_dim: size of the LSTM decoder's input embedding of the previously chosen point.
        glimpse: LSTM decoder: add one additive-attention glimpse before pointing.
        clip: logit clipping `C · tanh(u)`; None disables (the attention decoder defaults to 10).
        decoder: `"lstm"` or `"attention"`.
        decoder_heads: heads `M` of the attention decoder's glimpse (divides the encoder width).
        mask_visited: attention decoder: hide visited points from the glimpse (off for Delaunay,
            whose triangles reuse points).
    """

    def __init__(
        self,
        encoder: nn.Module,
        embed_dim: int = 128,
        input_dim: int = 2,
        glimpse: bool = False,
        clip: float | None = None,
        decoder: str = "lstm",
        decoder_heads: int = 8,
        mask_visited: bool = True,
    ) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"app.model.decoder: unknown decoder {decoder!r}; expected one of {DECODERS}")
        hidden = encoder.hidden_dim
        self.encoder = encoder
        self.input_dim = input_dim
        self.decoder_kind = decoder
        self.eos_key = nn.Parameter(torch.empty(hidden).uniform_(-0.1, 0.1))
        if decoder == "lstm":
            self.point_embed = nn.Linear(input_dim, embed_dim)
            self.start = nn.Parameter(torch.empty(embed_dim).uniform_(-0.1, 0.1))
            self.decoder = nn.LSTM(embed_dim, hidden, batch_first=True)
            self.glimpse = AdditiveAttention(hidden, hidden, hidden) if glimpse else None
            self.pointer = PointerHead(hidden, hidden, hidden, clip=clip)
        else:
            if hidden % decoder_heads:
                raise ValueError(
                    f"app.model.decoder_heads: {decoder_heads} does not divide the encoder width {hidden}"
                )
            if clip is not None and clip <= 0:
                raise ValueError(f"app.model.clip must be positive, got {clip}")
            self.heads = decoder_heads
            self.clip = 10.0 if clip is None else float(clip)
            self.mask_visited = mask_visited
            self.placeholders = nn.Parameter(torch.empty(2, hidden).uniform_(-1.0, 1.0))
            self.context_proj = nn.Linear(3 * hidden, hidden, bias=False)
            self.glimpse_kv = nn.Linear(hidden, 2 * hidden, bias=False)
            self.glimpse_out = nn.Linear(hidden, hidden, bias=False)
            self.pointer_key = nn.Linear(hidden, hidden, bias=False)

    def encode(self, points: Tensor, lengths: Tensor) -> EncodedInput:
        """`points (B, L, 2)`, `lengths (B,)` → the encoder state, with the EOS slot at position 0.

        For the attention decoder `h` is the graph embedding `h̄` (masked mean of the point
        embeddings), `glimpse_keys` the glimpse keys and values side by side `(B, L + 1, 2H)`.
        """
        batch, max_len, _ = points.shape
        valid_points = valid_positions(lengths, max_len)
        outputs, h0, c0 = self.encoder(points, valid_points)
        keys = torch.cat([self.eos_key.view(1, 1, -1).expand(batch, 1, -1), outputs], dim=1)
        valid = torch.cat([torch.ones_like(valid_points[:, :1]), valid_points], dim=1)
        if self.decoder_kind == "attention":
            weights = valid_points.unsqueeze(-1).to(outputs.dtype)
            graph = (outputs * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            return EncodedInput(
                keys, self.pointer_key(keys), self.glimpse_kv(keys), graph, torch.zeros_like(graph), valid
            )
        pointer_keys = self.pointer.project_keys(keys)
        glimpse_keys = self.glimpse.project_keys(keys) if self.glimpse is not None else pointer_keys
        return EncodedInput(keys, pointer_keys, glimpse_keys, h0, c0, valid)

    def init_state(self, enc: EncodedInput) -> tuple[Tensor, ...]:
        """The decoder state before the first step: `(h, c)` (LSTM) or `(first, visited)` (attention)."""
        if self.decoder_kind == "attention":
            batch, width = enc.valid.shape
            first = torch.zeros(batch, dtype=torch.long, device=enc.valid.device)
            return first, torch.zeros(batch, width, dtype=torch.bool, device=enc.valid.device)
        return enc.h, enc.c

    def decode_step(
        self, points: Tensor, previous: Tensor, state: tuple[Tensor, ...], enc: EncodedInput
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One step of either decoder: `previous (B,)` → `logits (B, L + 1)` and the next state."""
        if self.decoder_kind == "attention":
            first, visited = state
            logits, first_next, visited_next = self.attention_step(previous, first, visited, enc)
            return logits, (first_next, visited_next)
        h, c = state
        logits, h_next, c_next = self.step(points, previous, h, c, enc)
        return logits, (h_next, c_next)

    def _attention_logits(
        self, previous: Tensor, first: Tensor, visited: Tensor, enc: EncodedInput
    ) -> Tensor:
        """Kool et al.'s decoder for `T` steps at once.

        `previous, first (B, T)` positions (0 = placeholder), `visited (B, T, L + 1)` → `(B, T, L + 1)`.
        """
        batch, steps = previous.shape
        hidden = enc.keys.shape[-1]

        def embedding(positions: Tensor, placeholder: Tensor) -> Tensor:
            chosen = enc.keys.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden))
            return torch.where((positions == EOS).unsqueeze(-1), placeholder, chosen)

        first_emb = embedding(first, self.placeholders[0])
        last_emb = embedding(previous, self.placeholders[1])
        graph = enc.h.unsqueeze(1).expand(-1, steps, -1)
        query = self.context_proj(torch.cat([graph, first_emb, last_emb], dim=-1))
        allowed = enc.valid.unsqueeze(1)
        if self.mask_visited:
            allowed = allowed & ~visited
            allowed = allowed | (torch.arange(allowed.shape[-1], device=allowed.device) == EOS)
        glimpse_k, glimpse_v = enc.glimpse_keys.chunk(2, dim=-1)
        head_dim = hidden // self.heads

        def split(x: Tensor) -> Tensor:
            return x.unflatten(-1, (self.heads, head_dim)).transpose(1, 2)

        glimpse = attention(
            split(query), split(glimpse_k), split(glimpse_v), mask=allowed.unsqueeze(1), backend="math"
        )
        glimpse = self.glimpse_out(glimpse.transpose(1, 2).flatten(-2))
        scores = torch.einsum("bth,blh->btl", glimpse, enc.pointer_keys) / hidden**0.5
        logits = self.clip * torch.tanh(scores)
        return logits.masked_fill(~allowed.expand_as(logits), torch.finfo(logits.dtype).min)

    def attention_step(
        self, previous: Tensor, first: Tensor, visited: Tensor, enc: EncodedInput
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Attention-decoder step: `previous, first (B,)`, `visited (B, L + 1)` → logits and next state."""
        first_next = torch.where(first == EOS, previous, first)
        positions = torch.arange(visited.shape[-1], device=visited.device)
        visited_next = visited | ((positions == previous.unsqueeze(-1)) & (previous.unsqueeze(-1) != EOS))
        logits = self._attention_logits(
            previous.unsqueeze(1), first_next.unsqueeze(1), visited_next.unsqueeze(1), enc
        )
        return logits.squeeze(1), first_next, visited_next

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
        if self.decoder_kind == "attention":
            positions = torch.arange(enc.valid.shape[1], device=points.device)
            chosen = (previous.unsqueeze(-1) == positions) & (previous.unsqueeze(-1) != EOS)
            visited = chosen.cumsum(dim=1) > 0
            first = torch.where(
                torch.arange(previous.shape[1], device=points.device) == 0,
                torch.zeros_like(previous),
                previous[:, 1:2].expand_as(previous) if previous.shape[1] > 1 else previous,
            )
            return self._attention_logits(previous, first, visited, enc)
        decoded, _ = self.decoder(
            self.decoder_inputs(points, previous), (enc.h.unsqueeze(0), enc.c.unsqueeze(0))
        )
        return self.point(decoded, enc)

    def step(
        self, points: Tensor, previous: Tensor, h: Tensor, c: Tensor, enc: EncodedInput
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One LSTM-decoder step: `previous (B,)` position chosen last → `logits (B, L + 1)`, new `h, c (B, H)`."""
        if self.decoder_kind != "lstm":
            raise TypeError(
                "PointerNet.step drives the LSTM decoder; use decode_step for the attention decoder"
            )
        inputs = self.decoder_inputs(points, previous.unsqueeze(1))
        decoded, (h_next, c_next) = self.decoder(inputs, (h.unsqueeze(0), c.unsqueeze(0)))
        return self.point(decoded, enc).squeeze(1), h_next.squeeze(0), c_next.squeeze(0)

    def export_graphs(self, batch: dict[str, Tensor]) -> list[ExportGraph]:
        """The encoder and one decoder step as two graphs with dynamic batch and length.

        The greedy/beam loop stays outside the graphs (its length depends on the data); a runtime
        drives `decoder_step` exactly as `decoding.greedy_decode` drives `PointerNet.decode_step`
        (see `apps/ptrnet/runtime.py`). Step inputs are the previous choice, the decoder state
        (`h, c` for the LSTM decoder; `first, visited` for the attention decoder) and the encoder
        outputs. Checked on `batch` and on a smaller batch padded to a longer length.
        """
        points, lengths = batch["points"].float(), batch["lengths"]
        small_points = torch.nn.functional.pad(points[: max(1, len(points) // 2)], (0, 0, 0, 3))
        small_lengths = lengths[: len(small_points)]
        encoder = _EncoderGraph(self).eval()
        with torch.no_grad():
            encoded, previous = encoder(points, lengths), batch["target"][:, 0].clamp(min=0)
            encoded_small = encoder(small_points, small_lengths)
        batch_dim, length_dim, width_dim = (
            {0: "batch"},
            {0: "batch", 1: "length"},
            {0: "batch", 1: "positions"},
        )
        graphs = [
            ExportGraph(
                "encoder",
                encoder,
                (points, lengths),
                ("points", "lengths"),
                _EncoderGraph.outputs,
                (length_dim, batch_dim),
                check_inputs=[(small_points, small_lengths)],
            )
        ]
        if self.decoder_kind == "attention":
            h, _, keys, pointer_keys, glimpse_keys, valid = encoded
            h_s, _, keys_s, pointer_keys_s, glimpse_keys_s, valid_s = encoded_small
            first = previous
            second = batch["target"][:, 1].clamp(min=0) if batch["target"].shape[1] > 1 else previous
            visited = (torch.arange(valid.shape[1]) == first.unsqueeze(-1)) & (first.unsqueeze(-1) != EOS)
            small_first = torch.zeros_like(small_lengths)
            graphs.append(
                ExportGraph(
                    "decoder_step",
                    _AttentionStepGraph(self).eval(),
                    (second, first, visited, h, keys, pointer_keys, glimpse_keys, valid),
                    _AttentionStepGraph.inputs,
                    ("logits", "first_next", "visited_next"),
                    (batch_dim, batch_dim, width_dim, batch_dim, width_dim, width_dim, width_dim, width_dim),
                    check_inputs=[
                        (
                            small_first,
                            small_first,
                            torch.zeros_like(valid_s),
                            h_s,
                            keys_s,
                            pointer_keys_s,
                            glimpse_keys_s,
                            valid_s,
                        )
                    ],
                )
            )
            return graphs
        graphs.append(
            ExportGraph(
                "decoder_step",
                _StepGraph(self).eval(),
                (points, previous, *encoded),
                ("points", "previous", "h", "c", "keys", "pointer_keys", "glimpse_keys", "valid"),
                ("logits", "h_next", "c_next"),
                (length_dim, batch_dim, batch_dim, batch_dim, width_dim, width_dim, width_dim, width_dim),
                check_inputs=[(small_points, torch.zeros_like(small_lengths), *encoded_small)],
            )
        )
        return graphs


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


class _AttentionStepGraph(nn.Module):
    inputs = ("previous", "first", "visited", "h", "keys", "pointer_keys", "glimpse_keys", "valid")

    def __init__(self, net: PointerNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        previous: Tensor,
        first: Tensor,
        visited: Tensor,
        h: Tensor,
        keys: Tensor,
        pointer_keys: Tensor,
        glimpse_keys: Tensor,
        valid: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        enc = EncodedInput(keys, pointer_keys, glimpse_keys, h, torch.zeros_like(h), valid)
        return self.net.attention_step(previous, first, visited, enc)
