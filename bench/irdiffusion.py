"""IR-Diffusion benchmark: cost of the attention processors at Stable Diffusion resolutions.

The issue's target is a generation overhead of the processors below 1.5x the vanilla pass at the
same resolution. The app's evaluation measures it with its 32 x 32 pixel base model, where attention
is a small part of the UNet. Here one UNet forward of the final pass's batch (`[ref_1 .. ref_S,
target]` per scene, doubled for classifier-free guidance) is timed with the processors installed but
inactive (`plain`: the same batch, ordinary attention) and with each IR variant active, on:

- ``base``: the app's base model UNet (`conf/app/irdiffusion.yaml`, 32 x 32 pixels, no latents);
- ``sd15_w<k>``: a UNet with Stable Diffusion 1.5's layout (three cross-attention down blocks, a
  plain one, the cross-attention mid block, the mirrored up blocks, 768-wide text states, 8 heads)
  with every channel width divided by ``k`` (``--width-divisor``, default 4; 1 is SD 1.5 itself,
  860 M parameters), at 32 x 32 and 64 x 64 latents (256 and 512 pixels).

Weights are random (timing does not depend on them). The layout is two subjects side by side:
reference masks are centred discs, target regions the left and right halves' central boxes. IR is
applied at every attention layer (`all`) or only at the low-resolution ones the SD command uses by
default (`low`: `up_blocks.0`, `up_blocks.1`, `mid_block`). Variants are interleaved over
``--repeats`` rounds so that a shared machine's load hits all of them alike; the ratio of each
variant to `plain` uses the best round's medians.

``python -m bench.irdiffusion --out bench/results`` (``make bench APP=irdiffusion``) writes
``irdiffusion_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from apps.irdiffusion.processors import IRSettings, install
from bench.common import machine, sync

log = logging.getLogger("bench.irdiffusion")

VARIANTS = ("plain", "mutual", "isolation", "reposition", "both")
LOW_RES_LAYERS = ("up_blocks.0", "up_blocks.1", "mid_block")


def sd15_unet(width_divisor: int, sample_size: int) -> Any:
    """A UNet with SD 1.5's block layout, channel widths divided by `width_divisor`."""
    from diffusers import UNet2DConditionModel

    widths = tuple(max(8, c // width_divisor) for c in (320, 640, 1280, 1280))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=widths,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,  # SD 1.5's config: 8 heads
        norm_num_groups=next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in widths)),
    )


def base_unet() -> Any:
    """The app's default base model UNet (random weights)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["app=irdiffusion"])
    model_cfg = dict(cfg.app.model)
    model_cfg.update({"vocab_size": 16, "max_length": 11, "num_identities": 36, "num_patterns": 4})
    return instantiate(model_cfg).unet


def layout(p: int, s: int, size: int) -> dict[str, torch.Tensor]:
    """Two (or more) subjects side by side: reference discs and target boxes in equal columns."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = (((xs - 0.5) ** 2 + (ys - 0.5) ** 2) <= 0.3**2).float()
    ref_masks = disc.expand(p, s, size, size).clone()
    ref_boxes = torch.tensor([0.2, 0.2, 0.8, 0.8]).expand(p, s, 4).clone()
    target_boxes = torch.stack(
        [torch.tensor([i / s + 0.05, 0.25, (i + 1) / s - 0.05, 0.75]) for i in range(s)]
    ).expand(p, s, 4)
    labels = torch.zeros(p, size, size, dtype=torch.long)
    for i in range(s):
        x0, y0, x1, y1 = (target_boxes[0, i] * size).round().long().tolist()
        labels[:, y0:y1, x0:x1] = i + 1
    return {
        "ref_masks": ref_masks,
        "ref_boxes": ref_boxes,
        "target_labels": labels,
        "target_boxes": target_boxes.clone(),
    }


def make_forward(
    unet: Any,
    channels: int,
    size: int,
    context_dim: int,
    subjects: int,
    layers: str | tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype,
    generation_steps: int,
) -> tuple[Callable[[str], None], dict[str, Any]]:
    """Install the processors on `unet` and return `forward(variant)`, one generation of
    `generation_steps` UNet forwards of the final pass's batch (state reset and layout set once, so
    the masks are built in the first forward and served from the cache after), and a description."""
    state = install(unet, layers=layers if layers == "all" else list(layers))
    p = 1
    batch = 2 * p * (subjects + 1)  # classifier-free guidance doubles the [refs, target] groups
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen).to(device, dtype)
    context = torch.randn(batch, 77 if context_dim == 768 else 11, context_dim, generator=gen).to(
        device, dtype
    )
    t = torch.tensor(500, device=device)
    plan = layout(2 * p, subjects, size)  # the CFG halves are separate groups with the same layout
    plan = {k: v.to(device) for k, v in plan.items()}

    def forward(variant: str) -> None:
        state.reset()
        state.latent_hw = (size, size)
        if variant != "plain":
            state.configure(IRSettings.variant(variant, cross_blend=0.3), **plan)
        with torch.no_grad():
            for _ in range(generation_steps):
                unet(x, t, context, return_dict=False)

    info = {
        "size": size,
        "tokens_at_full_resolution": size * size,
        "subjects": subjects,
        "batch": batch,
        "generation_steps": generation_steps,
        "ir_layers": layers if layers == "all" else list(layers),
        "ir_layers_enabled": sum(proc.enabled for proc in unet.attn_processors.values()),
        "attention_layers": len(unet.attn_processors),
    }
    return forward, info


def run_case(
    forward: Callable[[str], None], info: dict[str, Any], repeats: int, steps: int, device: torch.device
) -> dict[str, Any]:
    """Median time per UNet forward of `plain` and each IR variant, over generations run by
    `forward` (see `make_forward`), `steps` generations per variant and round."""
    generation_steps = info["generation_steps"]
    rounds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for variant in VARIANTS:  # warm-up
        forward(variant)
    for _ in range(repeats):
        for variant in VARIANTS:
            samples = []
            for _ in range(steps):
                sync(device)
                start = time.perf_counter()
                forward(variant)
                sync(device)
                samples.append((time.perf_counter() - start) / generation_steps)
            rounds[variant].append(statistics.median(samples))
    best = {v: min(r) for v, r in rounds.items()}
    return {
        **info,
        "seconds": best,
        "round_medians": rounds,
        "overhead_vs_plain": {v: best[v] / best["plain"] for v in VARIANTS},
    }


def profile_case(
    forward: Callable[[str], None], variants: tuple[str, ...], device: torch.device, top: int = 25
) -> dict[str, Any]:
    """Where the time of one generation goes, per variant (torch.profiler): wall time, the time the
    device was busy with kernels, kernel launches, and the operators with the most self device time
    (self CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    on_device = device.type == "cuda"

    def self_time(e: Any) -> float:
        return (e.self_device_time_total if on_device else e.self_cpu_time_total) / 1e6

    result: dict[str, Any] = {}
    for variant in variants:
        forward(variant)  # warm-up outside the profile
        sync(device)
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            forward(variant)
            sync(device)
            wall = time.perf_counter() - start
        events = prof.key_averages()
        kernels = [e for e in prof.events() if on_device and e.device_type.name == "CUDA"]
        rows = sorted(events, key=self_time, reverse=True)[:top]
        result[variant] = {
            "wall_seconds": wall,
            "device_busy_seconds": sum(e.device_time for e in kernels) / 1e6 if on_device else None,
            "kernel_launches": len(kernels) if on_device else None,
            "top_ops": [
                {
                    "op": e.key,
                    "calls": e.count,
                    "self_seconds": self_time(e),
                    "cpu_total_seconds": e.cpu_time_total / 1e6,
                }
                for e in rows
            ],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--width-divisor", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="latent sizes of the SD UNet")
    parser.add_argument("--subjects", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed forwards per variant and round")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--no-base", action="store_true", help="skip the app's base model (needs Hydra)")
    parser.add_argument("--name", default=None, help="output file stem (default irdiffusion_<device>)")
    parser.add_argument(
        "--generation-steps",
        type=int,
        default=1,
        help="UNet forwards per generation: masks are built in the first and cached for the rest",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile plain and both (IR at every layer, the largest size) into <name>_profile.json",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)

    def timed(unet: Any, channels: int, size: int, context_dim: int, layers: str | tuple[str, ...]) -> dict:
        forward, info = make_forward(
            unet, channels, size, context_dim, args.subjects, layers, device, dtype, args.generation_steps
        )
        return run_case(forward, info, args.repeats, args.steps, device)

    cases = []
    profiles: dict[str, Any] | None = None
    if not args.no_base:
        unet = base_unet().to(device, dtype).eval()
        text_dim = unet.config.cross_attention_dim
        log.info("base model UNet, 32 x 32 pixels")
        cases.append({"model": "base", **timed(unet, 3, 32, text_dim, "all")})
    name = f"sd15_w{args.width_divisor}"
    for size in args.sizes:
        unet = sd15_unet(args.width_divisor, size).to(device, dtype).eval()
        for layers in ("all", LOW_RES_LAYERS):
            log.info("%s, %d x %d latents, IR layers %s", name, size, size, layers)
            case = timed(unet, 4, size, 768, layers)
            cases.append({"model": name, **case})
            log.info("  %s", {k: round(v, 3) for k, v in case["overhead_vs_plain"].items()})
        if args.profile and size == max(args.sizes):
            forward, info = make_forward(
                unet, 4, size, 768, args.subjects, "all", device, dtype, args.generation_steps
            )
            profiles = {"model": name, **info, **profile_case(forward, ("plain", "both"), device)}
    result = {"benchmark": "irdiffusion_processors", "machine": machine(), "args": vars(args), "cases": cases}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (args.name or f"irdiffusion_{device.type}")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    if profiles is not None:
        stem.with_name(stem.name + "_profile.json").write_text(json.dumps(profiles, indent=2) + "\n")
        for variant in ("plain", "both"):
            p = profiles[variant]
            log.info(
                "profile %s: wall %.4f s, device busy %s s, %s kernel launches",
                variant,
                p["wall_seconds"],
                p["device_busy_seconds"],
                p["kernel_launches"],
            )
            for row in p["top_ops"][:15]:
                log.info("  %-60s %6d calls %.5f s", row["op"][:60], row["calls"], row["self_seconds"])
    lines = [
        "| model | latent size | IR layers (enabled / all) | forwards / generation | plain forward (s) | "
        + " | ".join(f"{v} / plain" for v in VARIANTS[1:])
        + " |",
        "|---|---|---|---|---|" + "---|" * (len(VARIANTS) - 1),
    ]
    for case in cases:
        layers = case["ir_layers"] if case["ir_layers"] == "all" else "low-res"
        lines.append(
            f"| {case['model']} ({args.dtype}) | {case['size']} | {layers} ({case['ir_layers_enabled']} / "
            f"{case['attention_layers']}) | {case['generation_steps']} | {case['seconds']['plain']:.3f} | "
            + " | ".join(f"{case['overhead_vs_plain'][v]:.2f}" for v in VARIANTS[1:])
            + " |"
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
