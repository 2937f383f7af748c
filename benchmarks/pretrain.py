"""Pre-training throughput: samples/s per device of the real optimiser step of `cinema pretrain`.

    python benchmarks/pretrain.py                                   # tiny and base, fp32 and bf16, this machine
    python benchmarks/pretrain.py --sizes base --precisions bf16 --batch 8 --device cuda --grad-ckpt

One step = `cinema.train.pretrain.train_step`: forward of all four views at the reference model space (SAX
192×192×16, LAX 256×256, mask ratio 0.75), the masked MSE, backward, clip 5, AdamW — exactly what a run does, on
random [0, 1] images (speed does not depend on the content). Each case runs in its own subprocess so its peak
memory is its own; reported are the median step time over ``--steps`` after ``--warmup`` steps and samples/s.
With ``--shards`` it also times reading samples (one random frame of every view) from a ``cinema shard`` folder.

Reference implementation on the project's 2-core CPU (docs/cinema-reference.md §7): base MAE 4-view training step,
B = 1, fp32, per-layer checkpointing: 9.8 s, i.e. 0.10 samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REFERENCE_BASE_STEP_S = 9.8


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _run_case(size: str, precision: str, batch: int, steps: int, warmup: int, device: str, grad_ckpt: bool) -> dict:
    import torch

    from cinema.models.mae import CineMA, random_token_mask
    from cinema.train.optim import param_groups
    from cinema.train.pretrain import Dist, train_step

    torch.manual_seed(0)
    views = {"sax": (192, 192, 16), "lax_2c": (256, 256), "lax_3c": (256, 256), "lax_4c": (256, 256)}
    dev = torch.device(device)
    model = CineMA(views, size=size, grad_ckpt=grad_ckpt).to(dev).train()
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    token_sizes = {v: model.enc_down_dict[v].token_size for v in views}
    n_tokens = {v: int(torch.tensor(model.enc_down_dict[v].grid_size).prod()) for v in views}
    batch_dict = {
        "image": {v: torch.rand(batch, 1, *shape) for v, shape in views.items()},
        "mask": {v: random_token_mask(batch, n_tokens[v], 0.75) for v in views},
        "present": torch.ones(batch, len(views), dtype=torch.bool),
    }
    info = Dist(device=dev)
    times = []
    for i in range(warmup + steps):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        train_step(
            model,
            optimizer,
            scaler,
            [batch_dict],
            views=list(views),
            token_sizes=token_sizes,
            lr=1e-4,
            clip_grad=5.0,
            precision=precision,
            strategy="single",
            info=info,
        )
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        memory = f"{peak:.2f} GiB GPU"
    else:
        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "size": size,
        "precision": precision,
        "batch": batch,
        "grad_ckpt": grad_ckpt,
        "params": n_params,
        "step_s": step_s,
        "samples_per_s": batch / step_s,
        "memory": memory,
        "device": _device_name(device),
        "steps": len(times),
    }


def _time_shards(folder: str, n: int) -> dict:
    import numpy as np

    from cinema.io.shards import ShardStore

    store = ShardStore(folder)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    n_bytes = 0
    for _ in range(n):
        i = int(rng.integers(len(store)))
        for view, frames in store.n_frames(i).items():
            n_bytes += store.frame(i, view, int(rng.integers(frames))).nbytes
    elapsed = time.perf_counter() - start
    return {"samples": n, "samples_per_s": n / elapsed, "mb_per_s": n_bytes / elapsed / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=("tiny", "base", "large", "huge"), default=["tiny", "base"])
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "fp16"), default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default: 4 tiny, 1 base on CPU)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu, cuda")
    parser.add_argument("--grad-ckpt", action="store_true", help="per-block gradient checkpointing")
    parser.add_argument("--shards", help="also time random sample reads from this `cinema shard` folder")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "PRECISION", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.one:
        size, precision, batch = args.one
        print(json.dumps(_run_case(size, precision, int(batch), args.steps, args.warmup, device, args.grad_ckpt)))
        return 0

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"torch {torch.__version__}, device {device}: {_device_name(device)}; load average {load[0]:.2f}")
    results = []
    for size in args.sizes:
        batch = args.batch or (4 if size == "tiny" or device != "cpu" else 1)
        for precision in args.precisions:
            command = [
                sys.executable,
                __file__,
                "--one",
                size,
                precision,
                str(batch),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--threads",
                str(args.threads),
                "--device",
                device,
            ]
            command += ["--grad-ckpt"] if args.grad_ckpt else []
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{size} {precision} B={batch}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(result)
            line = (
                f"MAE {size:5s} 4 views {precision} B={batch}{' ckpt' if args.grad_ckpt else ''}: "
                f"{result['step_s']:.3f} s/step, {result['samples_per_s']:.2f} samples/s per device, "
                f"peak {result['memory']}"
            )
            if size == "base" and device == "cpu":
                per_sample = result["step_s"] / batch
                line += f"; reference 9.8 s/sample fp32 → {REFERENCE_BASE_STEP_S / per_sample:.1f}x"
            print(line, flush=True)
    if args.shards:
        reads = _time_shards(args.shards, 200)
        print(
            f"shard reads: {reads['samples_per_s']:.0f} samples/s ({reads['mb_per_s']:.0f} MB/s), one random frame "
            f"of every view per sample, {args.shards}"
        )
        results.append({"shards": reads})
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"load average after: {load_after[0]:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "torch": torch.__version__,
                    "device": _device_name(device),
                    "load": [load, load_after],
                    "results": results,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
