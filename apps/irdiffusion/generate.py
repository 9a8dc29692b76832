"""Generated multi-subject scenes for IR-Diffusion: sprites with identities, patterns and positions.

Each scene is a small RGB image (default 32 x 32) on a plain dark background holding 1 to
`max_subjects` non-overlapping sprites. A sprite's *identity* is its (colour, shape) pair and is
named in the caption ("a red square and a blue ring"); its *pattern* (solid, stripes, checker) is
not named, so only a reference image can tell a generator which pattern a subject has. That unnamed
attribute is what multi-subject consistency is about: the target must copy it from the reference.

Training-free consistency methods rely on a prior that large text-to-image models learn from natural
images: two things that look alike in one picture share their details, so self-attention learns to
copy appearance from similar tokens elsewhere in the image. With `repeat_prob > 0` a fraction of the
multi-subject training (and validation) scenes repeat their first subject: the second sprite has the
same identity *and* pattern (caption "a red square and a red square ..."), at its own size and
place, so a model can only denoise it well by reading the pattern of the other copy. The test split
never repeats subjects (its scenes are the same whatever `repeat_prob` is).

Stored per split in `<out>/<split>.pt` (a dict of tensors, loaded with `weights_only=True`):

    images    uint8 (N, 3, S, S)
    labels    uint8 (N, S, S)       0 background, i + 1 the pixels of subject i
    boxes     int16 (N, K, 4)       x0, y0, x1, y1 (exclusive) per subject, -1 padding
    identity  int16 (N, K)          colour * num_shapes + shape, -1 padding
    pattern   int16 (N, K)          index into PATTERNS, -1 padding
    order     int16 (N, K)          caption position of each subject (captions list them in this order)

`<out>/meta.json` records the generator version, the config and each file's sha256; a build is
reused only when all three still match.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from apps.common.io import atomic_write, sha256_file, write_json

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.16, 0.14),
    "green": (0.16, 0.80, 0.22),
    "blue": (0.20, 0.36, 0.96),
    "yellow": (0.96, 0.88, 0.18),
    "magenta": (0.90, 0.20, 0.86),
    "cyan": (0.18, 0.88, 0.90),
}
SHAPES = ("square", "circle", "triangle", "diamond", "cross", "ring")
PATTERNS = ("solid", "hstripes", "vstripes", "checker")
SPLITS = ("train", "val", "test")
KEYS = ("images", "labels", "boxes", "identity", "pattern", "order")


@dataclass
class GeneratorConfig:
    """Knobs of the default dataset (the app config overrides a few of them)."""

    n_train: int = 20000
    n_val: int = 512
    n_test: int = 256
    image_size: int = 32
    max_subjects: int = 3
    # probability of 1, 2, ... max_subjects subjects in a scene (single-subject scenes teach references)
    subject_probs: list[float] = field(default_factory=lambda: [0.35, 0.45, 0.2])
    min_size: int = 10
    max_size: int = 14
    num_colours: int = 6
    num_shapes: int = 6
    # probability that a training/validation scene with >= 2 subjects repeats its first subject
    # (same identity and pattern) as its second one; 0 draws no extra random numbers
    repeat_prob: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.subject_probs = [float(v) for v in self.subject_probs]
        if len(self.subject_probs) != self.max_subjects:
            raise ValueError(
                f"generator.subject_probs has {len(self.subject_probs)} entries, expected max_subjects={self.max_subjects}"
            )
        if not 1 <= self.num_colours <= len(COLOURS) or not 1 <= self.num_shapes <= len(SHAPES):
            raise ValueError(f"generator: at most {len(COLOURS)} colours and {len(SHAPES)} shapes")
        if self.max_size * 2 > self.image_size or self.min_size < 4 or self.min_size > self.max_size:
            raise ValueError("generator: need 4 <= min_size <= max_size <= image_size / 2")
        self.repeat_prob = float(self.repeat_prob)
        if not 0.0 <= self.repeat_prob <= 1.0:
            raise ValueError(f"generator.repeat_prob must lie in [0, 1], got {self.repeat_prob}")

    @property
    def num_identities(self) -> int:
        return self.num_colours * self.num_shapes


def identity_words(identity: int, num_shapes: int) -> tuple[str, str]:
    """(colour, shape) words of an identity index."""
    return list(COLOURS)[identity // num_shapes], SHAPES[identity % num_shapes]


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) silhouette of a shape filling its box."""
    r = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - r, xx - r
    if shape == "square":
        mask = np.ones((size, size), dtype=bool)
    elif shape == "circle":
        mask = dx**2 + dy**2 <= (r + 0.5) ** 2
    elif shape == "triangle":
        mask = np.abs(dx) <= (dy + r) / 2.0 + 0.5
    elif shape == "diamond":
        mask = np.abs(dx) + np.abs(dy) <= r + 0.5
    elif shape == "cross":
        arm = max(r / 3.0, 1.0)
        mask = (np.abs(dx) <= arm) | (np.abs(dy) <= arm)
    elif shape == "ring":
        dist = np.sqrt(dx**2 + dy**2)
        mask = (dist <= r + 0.5) & (dist >= r * 0.45)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def pattern_shade(pattern: str, size: int) -> np.ndarray:
    """Brightness factor (size, size) of a pattern: 1 on the colour, 0.4 on its dark stripes."""
    yy, xx = np.mgrid[0:size, 0:size]
    if pattern == "solid":
        dark = np.zeros((size, size), dtype=bool)
    elif pattern == "hstripes":
        dark = (yy // 2) % 2 == 1
    elif pattern == "vstripes":
        dark = (xx // 2) % 2 == 1
    elif pattern == "checker":
        dark = ((xx // 2) + (yy // 2)) % 2 == 1
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return np.where(dark, 0.4, 1.0).astype(np.float32)


def render_subject(
    canvas: np.ndarray,
    labels: np.ndarray,
    index: int,
    identity: int,
    pattern: int,
    box: tuple[int, int, int, int],
    num_shapes: int,
) -> None:
    """Draw one sprite into `canvas (3, S, S)` and `labels (S, S)` (in place) inside `box`."""
    colour_name, shape = identity_words(identity, num_shapes)
    x0, y0, x1, y1 = box
    size = x1 - x0
    silhouette = shape_mask(shape, size)
    shade = pattern_shade(PATTERNS[pattern], size)
    colour = np.asarray(COLOURS[colour_name], dtype=np.float32)[:, None, None]
    region = canvas[:, y0:y1, x0:x1]
    canvas[:, y0:y1, x0:x1] = np.where(silhouette[None], colour * shade[None], region)
    labels[y0:y1, x0:x1][silhouette] = index + 1


def _place_boxes(
    rng: np.random.Generator, config: GeneratorConfig, num_subjects: int
) -> list[tuple[int, int, int, int]]:
    """Non-overlapping square boxes; whole layouts are redrawn (with smaller sprites) until they fit."""
    size = config.image_size
    for layout_try in range(100):
        largest = max(config.min_size, config.max_size - layout_try // 10)
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(num_subjects):
            for _attempt in range(50):
                side = int(rng.integers(config.min_size, largest + 1))
                x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                box = (x0, y0, x0 + side, y0 + side)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == num_subjects:
            return boxes
    raise RuntimeError("generator: could not place non-overlapping subjects; lower max_size or max_subjects")


def sample_scene(
    rng: np.random.Generator,
    config: GeneratorConfig,
    num_subjects: int | None = None,
    repeat_prob: float = 0.0,
) -> dict[str, Any]:
    """One scene as numpy arrays (see the module docstring for the fields).

    `repeat_prob`: probability that a scene of two or more subjects repeats subject 0 (identity and
    pattern) as subject 1; no random number is drawn for it when it is 0.
    """
    size = config.image_size
    k = config.max_subjects
    if num_subjects is None:
        num_subjects = int(
            rng.choice(np.arange(1, k + 1), p=np.asarray(config.subject_probs) / sum(config.subject_probs))
        )
    identities = rng.choice(config.num_identities, size=num_subjects, replace=False)
    # distinct colours and shapes keep the caption unambiguous
    while (
        len({i // config.num_shapes for i in identities}) < num_subjects
        or len({i % config.num_shapes for i in identities}) < num_subjects
    ):
        identities = rng.choice(config.num_identities, size=num_subjects, replace=False)
    boxes = _place_boxes(rng, config, num_subjects)
    background = float(rng.uniform(0.08, 0.22))
    canvas = np.full((3, size, size), background, dtype=np.float32)
    labels = np.zeros((size, size), dtype=np.uint8)
    patterns = rng.integers(0, len(PATTERNS), size=num_subjects)
    if repeat_prob > 0 and num_subjects >= 2 and rng.random() < repeat_prob:
        identities[1], patterns[1] = identities[0], patterns[0]
    for i in range(num_subjects):
        render_subject(canvas, labels, i, int(identities[i]), int(patterns[i]), boxes[i], config.num_shapes)
    pad = k - num_subjects
    return {
        "images": np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8),
        "labels": labels,
        "boxes": np.asarray(boxes + [(-1, -1, -1, -1)] * pad, dtype=np.int16),
        "identity": np.asarray(list(identities) + [-1] * pad, dtype=np.int16),
        "pattern": np.asarray(list(patterns) + [-1] * pad, dtype=np.int16),
        "order": np.asarray(list(rng.permutation(num_subjects)) + [-1] * pad, dtype=np.int16),
    }


def render_references(
    rng: np.random.Generator,
    config: GeneratorConfig,
    identity: np.ndarray,
    pattern: np.ndarray,
) -> dict[str, np.ndarray]:
    """Single-subject reference images of a scene's subjects: same identity and pattern, own size,
    place and background (what a reference generation of "a <colour> <shape>" should show).

    `identity`, `pattern`: `(K,)` with -1 padding. Returns `ref_images (K, 3, S, S)` uint8,
    `ref_labels (K, S, S)` uint8 (1 on the subject) and `ref_boxes (K, 4)` int16 (-1 for padding).
    """
    size, k = config.image_size, len(identity)
    images = np.zeros((k, 3, size, size), dtype=np.uint8)
    labels = np.zeros((k, size, size), dtype=np.uint8)
    boxes = np.full((k, 4), -1, dtype=np.int16)
    for i in range(k):
        if identity[i] < 0:
            continue
        box = _place_boxes(rng, config, 1)[0]
        canvas = np.full((3, size, size), float(rng.uniform(0.08, 0.22)), dtype=np.float32)
        render_subject(canvas, labels[i], 0, int(identity[i]), int(pattern[i]), box, config.num_shapes)
        images[i] = np.clip(np.round(canvas * 255), 0, 255).astype(np.uint8)
        boxes[i] = box
    return {"ref_images": images, "ref_labels": labels, "ref_boxes": boxes}


def generate_split(
    config: GeneratorConfig, n: int, seed: int, desc: str = "", repeat_prob: float = 0.0
) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    scenes = [
        sample_scene(rng, config, repeat_prob=repeat_prob)
        for _ in tqdm(range(n), desc=desc or "scenes", leave=False, mininterval=2)
    ]
    return {key: torch.from_numpy(np.stack([scene[key] for scene in scenes])) for key in KEYS}


def validate_split(data: Any, path: Path | str, max_subjects: int | None = None) -> dict[str, torch.Tensor]:
    """Check a loaded split: every key present, dtypes and shapes consistent. Errors name file and key."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    for key in KEYS:
        if key not in data:
            raise ValueError(f"{path}: missing key '{key}' (expected {', '.join(KEYS)})")
        if not isinstance(data[key], torch.Tensor):
            raise ValueError(f"{path}: key '{key}' is {type(data[key]).__name__}, expected a tensor")
    images = data["images"]
    if (
        images.dtype != torch.uint8
        or images.dim() != 4
        or images.shape[1] != 3
        or images.shape[2] != images.shape[3]
    ):
        raise ValueError(
            f"{path}: key 'images' must be uint8 (N, 3, S, S), got {images.dtype} {tuple(images.shape)}"
        )
    n, _, s, _ = images.shape
    if tuple(data["labels"].shape) != (n, s, s):
        raise ValueError(
            f"{path}: key 'labels' must have shape {(n, s, s)}, got {tuple(data['labels'].shape)}"
        )
    k = data["identity"].shape[1] if data["identity"].dim() == 2 else -1
    expected = {"boxes": (n, k, 4), "identity": (n, k), "pattern": (n, k), "order": (n, k)}
    for key, shape in expected.items():
        if tuple(data[key].shape) != shape:
            raise ValueError(f"{path}: key '{key}' must have shape {shape}, got {tuple(data[key].shape)}")
    if max_subjects is not None and k != max_subjects:
        raise ValueError(
            f"{path}: key 'identity' holds {k} subject slots, config says max_subjects={max_subjects}"
        )
    present = data["identity"] >= 0
    if not bool(present[:, 0].all()):
        raise ValueError(f"{path}: key 'identity': every scene needs at least one subject")
    if int(data["labels"].max()) > k:
        raise ValueError(f"{path}: key 'labels' has label {int(data['labels'].max())} > {k} subjects")
    return {key: data[key] for key in KEYS}


def load_split(path: str | Path, max_subjects: int | None = None) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such split file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a malformed file
        raise ValueError(f"{path}: not a readable tensor file ({err})") from err
    return validate_split(data, path, max_subjects)


def build_dataset(out_dir: str | Path, config: GeneratorConfig) -> Path:
    """Build (or reuse) the three splits in `out_dir`; returns `out_dir`."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "meta.json"
    expected = {"generator_version": GENERATOR_VERSION, "config": asdict(config)}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            meta = {}
        same = all(meta.get(key) == value for key, value in expected.items())
        digests = meta.get("file_sha256", {})
        if same and all(
            (out_dir / f"{s}.pt").is_file() and sha256_file(out_dir / f"{s}.pt") == digests.get(f"{s}.pt")
            for s in SPLITS
        ):
            return out_dir
        log.info("%s: stale or changed; rebuilding", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {"train": config.n_train, "val": config.n_val, "test": config.n_test}
    digests = {}
    for offset, split in enumerate(SPLITS):
        data = generate_split(
            config,
            sizes[split],
            seed=config.seed * 1000 + offset,
            desc=f"irdiffusion {split}",
            repeat_prob=0.0 if split == "test" else config.repeat_prob,
        )
        atomic_write(out_dir / f"{split}.pt", lambda handle, data=data: torch.save(data, handle))
        digests[f"{split}.pt"] = sha256_file(out_dir / f"{split}.pt")
    write_json(meta_path, {**expected, "file_sha256": digests})
    log.info("built the IR-Diffusion scene set in %s", out_dir)
    return out_dir
