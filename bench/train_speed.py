"""Training throughput of each model preset: images/s for fp32, bf16 autocast, channels_last,
torch.compile and thread counts, printed as a markdown table with the machine named.

Usage:
    python -m bench.train_speed                          # CPU: every preset (big ones fp32 only)
    python -m bench.train_speed --device cuda            # GPU: fp32 eager vs bf16 vs bf16+channels_last(+compile)
    python -m bench.train_speed --presets cpu --steps 5
    python -m bench.train_speed --presets cpu cpu_pixel --variants fp32

Each row times full training steps (the same loss as train.py, backward, gradient
clipping, AdamW) on random images and label sets, after warm-up steps that are not counted.
"""
import argparse
import time

import torch

from bench.common import cpu_info, training_loss
from model import build_model, count_parameters, preset_config

# (name, autocast dtype, channels_last, compile, threads); threads None = torch's default
CPU_VARIANTS = [("fp32", None, False, False, None), ("fp32, 1 thread", None, False, False, 1),
                ("fp32 channels_last", None, True, False, None), ("bf16 autocast", torch.bfloat16, False, False, None),
                ("fp32 torch.compile", None, False, True, None)]
GPU_VARIANTS = [("fp32 eager", None, False, False, None), ("bf16 autocast", torch.bfloat16, False, False, None),
                ("bf16 + channels_last", torch.bfloat16, True, False, None),
                ("bf16 + channels_last + compile", torch.bfloat16, True, True, None)]
CPU_HEAVY = ("seed", "default")  # minutes per step on 2 cores: fp32 only, small batch


def machine(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu, info = cpu_info()
    bf16 = "with" if "avx512_bf16" in info or "amx_bf16" in info else "without"
    return f"{cpu}, {torch.get_num_threads()} threads, {bf16} AVX512-BF16/AMX, torch {torch.__version__}"


def time_steps(preset, batch, device, dtype, channels_last, compile_, warmup, steps, overrides=()):
    torch.manual_seed(0)
    config = preset_config(preset, overrides)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = build_model(config).to(device, memory_format=layout)
    model = torch.compile(net) if compile_ else net
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=1e-4)
    gen = torch.Generator(device).manual_seed(0)
    x0 = torch.rand(batch, *net.sample_shape, device=device, generator=gen) * 2 - 1  # images, or latents
    cond = (torch.rand(batch, 24, device=device, generator=gen) < 0.08).float()
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    loss_fn = training_loss(config, 0.1, autocast, channels_last)

    def step():
        loss = loss_fn(model, x0, cond, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, count_parameters(net)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda.")
    p.add_argument("--presets", nargs="+", default=["cpu", "seed", "default"], help="Presets to measure.")
    p.add_argument("--batch-size", type=int, default=None,
                   help="Batch size (default: the preset's; 16 for the big presets on CPU).")
    p.add_argument("--steps", type=int, default=None, help="Timed steps per row (default: 20 on GPU, 3 on CPU).")
    p.add_argument("--warmup", type=int, default=None, help="Untimed steps first (default: 5 on GPU, 1 on CPU).")
    p.add_argument("--no-compile", action="store_true", help="Skip the torch.compile rows.")
    p.add_argument("--variants", nargs="+", help="Only these rows by name, e.g. fp32 (default: all).")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Change the presets' configs as train.py --set does (e.g. schedule.kind=flow).")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    threads = torch.get_num_threads()
    print(f"machine: {machine(device)}\n")
    print("| preset | parameters | batch | variant | ms/step | images/s |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        heavy = not gpu and preset in CPU_HEAVY
        batch = args.batch_size or (16 if heavy else preset_config(preset)["train"]["batch_size"])
        for name, dtype, channels_last, compile_, n_threads in GPU_VARIANTS if gpu else CPU_VARIANTS:
            if (heavy and name != "fp32") or (compile_ and args.no_compile) or name not in (args.variants or [name]):
                continue
            torch.set_num_threads(n_threads or threads)
            warmup = args.warmup if args.warmup is not None else (5 if gpu else 1) + (2 if compile_ else 0)
            seconds, params = time_steps(preset, batch, device, dtype, channels_last, compile_, warmup,
                                         args.steps or (20 if gpu else 3), args.set)
            print(f"| {preset} | {params / 1e6:.2f} M | {batch} | {name} | {seconds * 1000:.0f} | "
                  f"{batch / seconds:.1f} |", flush=True)
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
