"""Batched decoding of pointer sequences with task constraints, all on tensors.

Constraints (`task`):
- `hull`: no point twice; the end symbol is allowed after three points (or all points when n < 3).
- `tsp`: no point twice; the end symbol only once every point is in the tour.
- `delaunay`: triangles as consecutive triplets with three distinct points; the end symbol only
  between triangles.
- `none`: any real position, the end symbol after the first step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from apps.ptrnet.model import EOS, PointerNet

TASKS = ("hull", "tsp", "delaunay", "none")
_ALIASES = {"convex_hull": "hull"}


def decoding_task(task: str) -> str:
    """Map a data task name (`convex_hull`, `tsp`, `delaunay`) to its decoding constraint."""
    name = _ALIASES.get(task, task)
    if name not in TASKS:
        raise ValueError(f"unknown decoding task {task!r}; expected one of {TASKS} or 'convex_hull'")
    return name


def max_decode_steps(task: str, max_points: int) -> int:
    """Upper bound on output length (end symbol included) for inputs of `max_points` points."""
    task = decoding_task(task)
    if task in ("hull", "tsp"):
        return max_points + 1
    if task == "delaunay":
        return 3 * max(2 * max_points - 5, 1) + 1
    if task == "none":
        return 2 * max_points + 1
    raise ValueError(f"unknown decoding task {task!r}; expected one of {TASKS}")


def allowed_positions(
    task: str, valid: Tensor, visited: Tensor, triplet: Tensor, step: int, lengths: Tensor
) -> Tensor:
    """`(B, L + 1)` bool: positions that may be chosen at `step` given what was chosen so far."""
    task = decoding_task(task)
    points_left = valid & ~visited
    points_left[:, EOS] = False
    count = visited[:, 1:].sum(dim=1)
    if task == "hull":
        allowed = points_left
        may_end = (count >= lengths.clamp(max=3)) | ~points_left.any(dim=1)
    elif task == "tsp":
        allowed = points_left
        may_end = count >= lengths
    elif task == "delaunay":
        allowed = valid & ~triplet
        allowed[:, EOS] = False
        may_end = torch.full_like(count, step > 0 and step % 3 == 0, dtype=torch.bool)
        if step % 3 != 0:
            may_end = torch.zeros_like(may_end)
    elif task == "none":
        allowed = valid.clone()
        allowed[:, EOS] = False
        may_end = torch.full_like(count, step > 0, dtype=torch.bool)
    else:
        raise ValueError(f"unknown decoding task {task!r}; expected one of {TASKS}")
    allowed[:, EOS] = may_end
    return allowed


@torch.no_grad()
def greedy_decode(
    model: PointerNet, points: Tensor, lengths: Tensor, task: str, max_steps: int | None = None
) -> Tensor:
    """Greedy decoding. Returns `(B, T)` positions (0 = end symbol), `-1` after a sequence has ended."""
    task = decoding_task(task)
    enc = model.encode(points, lengths)
    batch, width = enc.valid.shape
    steps = max_steps if max_steps is not None else max_decode_steps(task, points.shape[1])
    visited = torch.zeros(batch, width, dtype=torch.bool, device=points.device)
    triplet = torch.zeros_like(visited)
    finished = torch.zeros(batch, dtype=torch.bool, device=points.device)
    previous = torch.zeros(batch, dtype=torch.long, device=points.device)
    h, c = enc.h, enc.c
    chosen: list[Tensor] = []
    for step in range(steps):
        logits, h, c = model.step(points, previous, h, c, enc)
        if task == "delaunay" and step % 3 == 0:
            triplet.zero_()
        allowed = allowed_positions(task, enc.valid, visited, triplet, step, lengths)
        no_choice = ~allowed.any(dim=1)
        allowed[no_choice, EOS] = True
        choice = logits.masked_fill(~allowed, float("-inf")).argmax(dim=-1)
        choice = torch.where(finished, torch.full_like(choice, -1), choice)
        chosen.append(choice)
        picked = torch.zeros_like(visited).scatter_(1, choice.clamp(min=0).unsqueeze(1), True)
        picked[:, EOS] = False
        picked &= ~finished.unsqueeze(1)
        visited |= picked
        triplet |= picked
        finished |= choice == EOS
        previous = choice.clamp(min=0)
        if bool(finished.all()):
            break
    return torch.stack(chosen, dim=1)


def positions_to_indices(positions: Tensor) -> list[list[int]]:
    """`(B, T)` pointer positions → per example the 0-based point indices before the end symbol."""
    sequences = []
    for row in positions.tolist():
        indices = []
        for position in row:
            if position <= EOS:
                break
            indices.append(position - 1)
        sequences.append(indices)
    return sequences


def targets_to_positions(targets: list[list[int]], pad: int = -100) -> Tensor:
    """0-based index sequences → `(B, T)` pointer positions with the end symbol appended, padded with `pad`."""
    width = max(len(t) for t in targets) + 1
    out = torch.full((len(targets), width), pad, dtype=torch.long)
    for row, target in enumerate(targets):
        out[row, : len(target)] = torch.as_tensor(target, dtype=torch.long) + 1
        out[row, len(target)] = EOS
    return out
