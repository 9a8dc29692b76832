"""Layers several apps share: a bidirectional LSTM that is exact on right-padded batches and exports
to ONNX without packed sequences."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def reverse_padded(x: Tensor, mask: Tensor) -> Tensor:
    """Reverse each sequence within its length: `x (N, L, F)`, `mask (N, L)` bool (a valid prefix).

    Position t of row n goes to position `len_n − 1 − t`; padding stays in place. Built from a
    gather, so it exports without packed sequences.
    """
    lengths = mask.sum(dim=1, keepdim=True)
    positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def same_length(y: Tensor, x: Tensor) -> Tensor:
    """`y (N, L, F)` re-indexed along L by the positions of `x (N, L, ·)`: an identity gather.

    `torch.onnx.export(dynamo=True)` gives `nn.LSTM` outputs a fixed length (the example's); a
    gather whose index is built from the input's symbolic length restores a dynamic one.
    """
    index = torch.arange(x.shape[1], device=y.device).view(1, -1, 1).expand(x.shape[0], -1, y.shape[-1])
    return y.gather(1, index)


class MaskedBiLSTM(nn.Module):
    """Bidirectional LSTM that is exact on right-padded batches: `(N, L, E)`, `(N, L)` → `(N, L, 2H)`.

    The backward direction runs a forward LSTM over each sequence reversed within its own length
    (`reverse_padded`), so it starts at the last real token rather than at the padding. Outputs at
    padded positions are zero.
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for layer in range(num_layers):
            size = input_dim if layer == 0 else 2 * hidden_dim
            self.forward_layers.append(nn.LSTM(size, hidden_dim, batch_first=True))
            self.backward_layers.append(nn.LSTM(size, hidden_dim, batch_first=True))
        self.dropout = nn.Dropout(dropout)
        self.output_dim = 2 * hidden_dim

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        keep = mask.unsqueeze(-1).to(x.dtype)
        for index, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if index:
                x = self.dropout(x)
            x = x * keep
            forward_out, _ = fwd(x)
            backward_out, _ = bwd(reverse_padded(x, mask))
            forward_out, backward_out = same_length(forward_out, x), same_length(backward_out, x)
            x = torch.cat([forward_out, reverse_padded(backward_out, mask)], dim=-1) * keep
        return x
