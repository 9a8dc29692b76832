"""Batched decoding of pointer sequences with task constraints, all on tensors: greedy, beam
search and sampling.

Constraints (`task`):
- `hull`: no point twice; the end symbol is allowed after three points (or all points when n < 3).
- `tsp`: no point twice; the end symbol only once every point is in the tour.
- `delaunay`: triangles as consecutive triplets with three distinct points; the end symbol only
  between triangles, and forced after `2n - 5` triangles (the most a triangulation can have).
- `none`: any real position, the end symbol after the first step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from apps.ptrnet.model import EOS, PointerNet

TASKS = ("hull", "tsp", "delaunay", "none")
STRATEGIES = ("greedy", "beam", "sample")

State = tuple[Tensor, ...]
Stepper = Callable[[Tensor, State], tuple[Tensor, State]]
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
        else:  # a triangulation of n points has at most 2n - 5 triangles (n >= 3)
            allowed &= (step // 3 < (2 * lengths - 5).clamp(min=1)).unsqueeze(1)
    elif task == "none":
        allowed = valid.clone()
        allowed[:, EOS] = False
        may_end = torch.full_like(count, step > 0, dtype=torch.bool)
    else:
        raise ValueError(f"unknown decoding task {task!r}; expected one of {TASKS}")
    allowed[:, EOS] = may_end
    return allowed


class ConstraintTracker:
    """What has been chosen so far for a batch of partial sequences, and what may come next.

    `valid (B, L + 1)` real positions (EOS slot first), `lengths (B,)`. Rows can be reordered
    (beam search) with :meth:`reorder`.
    """

    def __init__(self, task: str, valid: Tensor, lengths: Tensor) -> None:
        self.task = decoding_task(task)
        self.valid = valid
        self.lengths = lengths
        self.visited = torch.zeros_like(valid)
        self.triplet = torch.zeros_like(valid)
        self.finished = torch.zeros(valid.shape[0], dtype=torch.bool, device=valid.device)
        self.step = 0

    def allowed(self) -> Tensor:
        """`(B, L + 1)` bool; never empty (the end symbol is the fallback)."""
        allowed = allowed_positions(
            self.task, self.valid, self.visited, self.triplet, self.step, self.lengths
        )
        allowed[~allowed.any(dim=1), EOS] = True
        return allowed

    def advance(self, choice: Tensor) -> None:
        """Record `choice (B,)` (-1 for rows that had already finished)."""
        picked = torch.zeros_like(self.visited).scatter_(1, choice.clamp(min=0).unsqueeze(1), True)
        picked[:, EOS] = False
        picked &= ~self.finished.unsqueeze(1)
        self.visited = self.visited | picked
        self.triplet = self.triplet | picked
        self.finished = self.finished | (choice == EOS)
        self.step += 1
        if self.task == "delaunay" and self.step % 3 == 0:
            self.triplet = torch.zeros_like(self.triplet)

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index (B',)` (beam search: the parents of the surviving hypotheses)."""
        self.valid, self.lengths = self.valid[index], self.lengths[index]
        self.visited, self.triplet, self.finished = (
            self.visited[index],
            self.triplet[index],
            self.finished[index],
        )


@dataclass
class DecodeStart:
    """A decoding problem: a step function, its initial state, and the rows' valid positions.

    `step(previous (B,), state) -> (logits (B, L + 1), state)`; every state tensor has the batch
    first, so beam search can reorder it. Built from a `PointerNet` by :func:`model_start` or from
    an exported graph by `apps.ptrnet.runtime`.
    """

    step: Stepper
    state: State
    valid: Tensor
    lengths: Tensor


def model_start(model: PointerNet, points: Tensor, lengths: Tensor, repeat: int = 1) -> DecodeStart:
    """Encode once, then repeat every row `repeat` times (beams, samples) → `(B · repeat)` rows."""
    enc = model.encode(points, lengths).repeat(repeat)
    if repeat > 1:
        points, lengths = points.repeat_interleave(repeat, dim=0), lengths.repeat_interleave(repeat, dim=0)

    def step(previous: Tensor, state: State) -> tuple[Tensor, State]:
        return model.decode_step(points, previous, state, enc)

    return DecodeStart(step, model.init_state(enc), enc.valid, lengths)


def _steps(task: str, valid: Tensor, max_steps: int | None) -> int:
    return max_steps if max_steps is not None else max_decode_steps(task, valid.shape[1] - 1)


def rollout(
    start: DecodeStart,
    task: str,
    select: Callable[[Tensor, Tensor, int], Tensor],
    max_steps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Run the constrained decoding loop, choosing with `select(logits, allowed, step) -> (B,)`.

    Returns `positions (B, T)` (0 = end symbol, -1 once finished) and the sum over the steps of
    `log p(choice)` under the constrained (renormalised) distribution `(B,)`, differentiable when the
    step function is (REINFORCE).
    """
    tracker = ConstraintTracker(task, start.valid, start.lengths)
    previous = torch.zeros(start.valid.shape[0], dtype=torch.long, device=start.valid.device)
    state = start.state
    log_likelihood = torch.zeros(start.valid.shape[0], device=start.valid.device)
    chosen: list[Tensor] = []
    for step in range(_steps(task, start.valid, max_steps)):
        logits, state = start.step(previous, state)
        allowed = tracker.allowed()
        choice = select(logits, allowed, step)
        log_probs = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)
        step_log_prob = log_probs.gather(1, choice.clamp(min=0).unsqueeze(1)).squeeze(1)
        log_likelihood = log_likelihood + torch.where(tracker.finished, 0.0, step_log_prob)
        choice = torch.where(tracker.finished, torch.full_like(choice, -1), choice)
        chosen.append(choice)
        tracker.advance(choice)
        previous = choice.clamp(min=0)
        if bool(tracker.finished.all()):
            break
    return torch.stack(chosen, dim=1), log_likelihood


def _argmax(logits: Tensor, allowed: Tensor, step: int) -> Tensor:
    return logits.masked_fill(~allowed, float("-inf")).argmax(dim=-1)


@torch.no_grad()
def greedy_from(start: DecodeStart, task: str, max_steps: int | None = None) -> Tensor:
    """Greedy decoding of any :class:`DecodeStart` (a model, an ONNX session) → `(B, T)` positions."""
    return rollout(start, task, _argmax, max_steps)[0]


@torch.no_grad()
def greedy_decode(
    model: PointerNet, points: Tensor, lengths: Tensor, task: str, max_steps: int | None = None
) -> Tensor:
    """Greedy decoding. Returns `(B, T)` positions (0 = end symbol), `-1` after a sequence has ended."""
    return greedy_from(model_start(model, points, lengths), decoding_task(task), max_steps)


def sample_rollout(
    model: PointerNet,
    points: Tensor,
    lengths: Tensor,
    task: str,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One sample per row, with gradients: `(B, T)` positions and their log-likelihood `(B,)`."""
    if temperature <= 0:
        raise ValueError(f"sampling temperature must be positive, got {temperature}")

    def draw(logits: Tensor, allowed: Tensor, step: int) -> Tensor:
        scaled = (logits.detach().float() / temperature).masked_fill(~allowed, float("-inf"))
        return torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator).squeeze(1)

    return rollout(model_start(model, points, lengths), decoding_task(task), draw)


def tour_lengths(points: Tensor, positions: Tensor) -> Tensor:
    """Closed-tour length of decoded TSP positions.

    `points (B, N, 2)`, `positions (B, T)` (point i at i + 1; 0 and -1 end the tour) → `(B,)`.
    """
    chosen = positions > EOS
    running = chosen.long().cumprod(dim=1).bool()
    index = (positions.clamp(min=1) - 1).unsqueeze(-1).expand(-1, -1, 2)
    route = points.gather(1, index)
    step = (route[:, 1:] - route[:, :-1]).norm(dim=-1) * (running[:, 1:]).to(points.dtype)
    last = (running.sum(dim=1) - 1).clamp(min=0)
    closing = (route.gather(1, last.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1) - route[:, 0]).norm(dim=-1)
    return step.sum(dim=1) + closing


@torch.no_grad()
def sample_decode(
    model: PointerNet,
    points: Tensor,
    lengths: Tensor,
    task: str,
    num_samples: int = 16,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw `num_samples` sequences per instance and keep the best one.

    The best is the shortest tour for TSP (best-of-k, Kool et al. 2019, Sec. 5) and the most likely
    sequence otherwise. Returns the best `positions (B, T)`, all samples `(B, S, T)` and their
    log-likelihoods `(B, S)`.
    """
    if num_samples < 1:
        raise ValueError(f"app.module.decode.num_samples must be >= 1, got {num_samples}")
    task = decoding_task(task)
    if temperature <= 0:
        raise ValueError(f"app.module.decode.temperature must be positive, got {temperature}")

    def draw(logits: Tensor, allowed: Tensor, step: int) -> Tensor:
        scaled = (logits.float() / temperature).masked_fill(~allowed, float("-inf"))
        return torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=generator).squeeze(1)

    batch = points.shape[0]
    positions, log_likelihood = rollout(model_start(model, points, lengths, repeat=num_samples), task, draw)
    log_likelihood = log_likelihood.view(batch, num_samples)
    if task == "tsp":
        costs = tour_lengths(points.repeat_interleave(num_samples, dim=0), positions).view(batch, num_samples)
        best = costs.argmin(dim=1)
    else:
        best = log_likelihood.argmax(dim=1)
    rows = torch.arange(batch, device=points.device) * num_samples + best
    return positions[rows], positions.view(batch, num_samples, -1), log_likelihood


@torch.no_grad()
def beam_search(
    model: PointerNet,
    points: Tensor,
    lengths: Tensor,
    task: str,
    beam_width: int = 5,
    length_penalty: float = 0.0,
    max_steps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Batched beam search under the task's constraints.

    Keeps the `K = beam_width` most likely partial sequences of every instance (scores are sums of
    constrained log-probabilities); a finished hypothesis carries its score unchanged. The result is
    the hypothesis with the best `score / length^alpha` (`alpha = length_penalty`, 0 = raw
    log-likelihood; Wu et al. 2016 use a similar normalisation). `K = 1` is greedy decoding.

    Returns `positions (B, T)` of the best hypothesis and its log-likelihood `(B,)`.
    """
    if beam_width < 1:
        raise ValueError(f"app.module.decode.beam_width must be >= 1, got {beam_width}")
    task = decoding_task(task)
    batch, width = points.shape[0], points.shape[1] + 1
    start = model_start(model, points, lengths, repeat=beam_width)
    tracker = ConstraintTracker(task, start.valid, start.lengths)
    scores = torch.full((batch, beam_width), float("-inf"), device=points.device)
    scores[:, 0] = 0.0
    history = torch.zeros(batch * beam_width, 0, dtype=torch.long, device=points.device)
    previous = torch.zeros(batch * beam_width, dtype=torch.long, device=points.device)
    state = start.state
    ended = torch.zeros(batch * beam_width, dtype=torch.bool, device=points.device)
    only_end = torch.full((width,), float("-inf"), device=points.device)
    only_end[EOS] = 0.0
    for _ in range(_steps(task, start.valid, max_steps)):
        logits, state = start.step(previous, state)
        allowed = tracker.allowed()
        log_probs = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)
        log_probs = torch.where(ended.unsqueeze(1), only_end, log_probs)
        candidates = (scores.view(-1, 1) + log_probs).view(batch, beam_width * width)
        scores, best = candidates.topk(beam_width, dim=1)
        parents = (torch.arange(batch, device=points.device).unsqueeze(1) * beam_width + best // width).view(
            -1
        )
        tokens = (best % width).view(-1)
        state = tuple(s.index_select(0, parents) for s in state)
        tracker.reorder(parents)
        ended = tracker.finished
        choice = torch.where(ended, torch.full_like(tokens, -1), tokens)
        history = torch.cat([history.index_select(0, parents), choice.unsqueeze(1)], dim=1)
        tracker.advance(choice)
        ended = tracker.finished
        previous = choice.clamp(min=0)
        if bool(ended.all()):
            break
    final = scores
    if length_penalty:
        steps_taken = (history >= 0).sum(dim=1).view(batch, beam_width).clamp(min=1).to(scores.dtype)
        final = scores / steps_taken.pow(length_penalty)
    pick = final.argmax(dim=1)
    rows = torch.arange(batch, device=points.device) * beam_width + pick
    return history[rows], scores.gather(1, pick.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def sequence_log_likelihood(
    model: PointerNet, points: Tensor, lengths: Tensor, positions: Tensor, task: str
) -> Tensor:
    """Log-likelihood `(B,)` of decoded `positions (B, T)` under the model's constrained distribution.

    The same quantity beam search maximises, so decoders can be compared on it.
    """

    def forced(logits: Tensor, allowed: Tensor, step: int) -> Tensor:
        if step < positions.shape[1]:
            return positions[:, step].clamp(min=0)
        return torch.zeros_like(positions[:, 0])

    return rollout(model_start(model, points, lengths), decoding_task(task), forced, positions.shape[1])[1]


def decode(
    model: PointerNet,
    points: Tensor,
    lengths: Tensor,
    task: str,
    strategy: str = "greedy",
    beam_width: int = 5,
    length_penalty: float = 0.0,
    num_samples: int = 16,
    temperature: float = 1.0,
    seed: int | None = None,
) -> Tensor:
    """Decode with the strategy named in config (`app.module.decode.*`) → `(B, T)` positions."""
    if strategy == "greedy":
        return greedy_decode(model, points, lengths, task)
    if strategy == "beam":
        return beam_search(model, points, lengths, task, beam_width, length_penalty)[0]
    if strategy == "sample":
        generator = None
        if seed is not None:
            generator = torch.Generator(device=points.device).manual_seed(int(seed))
        return sample_decode(model, points, lengths, task, num_samples, temperature, generator)[0]
    raise ValueError(
        f"app.module.decode.strategy: unknown strategy {strategy!r}; expected one of {STRATEGIES}"
    )


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
