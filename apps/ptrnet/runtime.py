"""Decoding with the exported graphs: ONNX Runtime sessions of `encoder.onnx` and
`decoder_step.onnx` driven by the same constrained loop as the eager model (`decoding.rollout`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from apps.ptrnet.decoding import DecodeStart, State, decoding_task, greedy_from

ENCODER_OUTPUTS = ("h", "c", "keys", "pointer_keys", "glimpse_keys", "valid")


class OnnxPointerRunner:
    """Greedy decoding with exported Pointer Network graphs (either decoder).

    The step graph's inputs are matched by name: `previous`, the decoder state (`h, c` for the LSTM
    decoder, `first, visited` for the attention decoder; outputs `<name>_next`), and the encoder
    outputs. `points (B, N, 2)` float32, `lengths (B,)` int64.
    """

    def __init__(self, encoder_path: str | Path, step_path: str | Path) -> None:
        import onnxruntime as ort

        for path in (encoder_path, step_path):
            if not Path(path).is_file():
                raise FileNotFoundError(f"exported graph not found: {path}")
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(encoder_path), providers=providers)
        self.step = ort.InferenceSession(str(step_path), providers=providers)
        self.step_inputs = [node.name for node in self.step.get_inputs()]
        outputs = [node.name for node in self.step.get_outputs()]
        self.state_names = [name[: -len("_next")] for name in outputs[1:]]
        unknown = set(self.state_names) - set(ENCODER_OUTPUTS) - {"first", "visited"}
        if outputs[0] != "logits" or unknown:
            raise ValueError(f"{step_path}: not a Pointer Network decoder step (outputs {outputs})")

    def start(self, points: Tensor, lengths: Tensor) -> DecodeStart:
        """Run the encoder graph and wrap the step graph as a :class:`DecodeStart`."""
        feed = {"points": points.float().numpy(), "lengths": lengths.long().numpy()}
        feed = {node.name: feed[node.name] for node in self.encoder.get_inputs()}
        encoded = dict(zip(ENCODER_OUTPUTS, self.encoder.run(None, feed)))
        batch, width = encoded["valid"].shape
        initial = {"h": encoded["h"], "c": encoded["c"]}
        initial["first"] = np.zeros(batch, dtype=np.int64)
        initial["visited"] = np.zeros((batch, width), dtype=np.bool_)
        state = tuple(torch.from_numpy(initial[name]) for name in self.state_names)
        fixed = {"points": feed.get("points", points.float().numpy()), **encoded}

        def step(previous: Tensor, state: State) -> tuple[Tensor, State]:
            inputs = {**fixed, "previous": previous.numpy()}
            inputs.update({name: value.numpy() for name, value in zip(self.state_names, state)})
            logits, *next_state = self.step.run(None, {name: inputs[name] for name in self.step_inputs})
            return torch.from_numpy(logits), tuple(torch.from_numpy(value) for value in next_state)

        return DecodeStart(step, state, torch.from_numpy(encoded["valid"]), lengths.long())

    def greedy(self, points: Tensor, lengths: Tensor, task: str, max_steps: int | None = None) -> Tensor:
        """Greedy constrained decoding → `(B, T)` positions, as `decoding.greedy_decode`."""
        return greedy_from(self.start(points, lengths), decoding_task(task), max_steps)
