"""CPU speed of the base CineMA models: ConvUNetR-SAX and ConvViT-SAX inference, one MAE 4-view training step, and
one training step of the shipped default segmentation U-Net (2.5-D, batch 8 of 3 x 128 x 128, Dice + CE, AdamW).

    python benchmarks/models.py                  # all cases, fp32 and bf16 autocast
    python benchmarks/models.py --repeats 5 --threads 2 --cases convunetr_sax --precisions bf16

Each case runs in its own subprocess so its peak RSS is its own. Reported: median wall time of ``--repeats`` runs
after one warm-up, process CPU time of the timed runs, peak RSS. Random weights (speed does not depend on them).
Reference implementation on the project's 2-core CPU, fp32 (docs/cinema-reference.md §7): ConvUNetR SAX inference
B=1 ≈ 6.1 s (peak RSS 1.9 GB); MAE training step B=1 ≈ 9.8 s (peak RSS 3.7 GB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from machine import cpu_name

CASES = ("convunetr_sax", "convvit_sax", "mae_train", "unet2d_train")
# the reference's timings; cases without one are compared with their own fp32 run
REFERENCE_S = {"convunetr_sax": 6.1, "mae_train": 9.8}


def _run_case(case: str, precision: str, repeats: int, threads: int, channels_last: bool, grad_ckpt: bool) -> dict:
    import torch

    from cinema.models.convunetr import ConvUNetR
    from cinema.models.convvit import ConvViT
    from cinema.models.mae import CineMA
    from cinema.models.unet import UNet
    from cinema.tasks.segmentation import segmentation_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    if case == "convunetr_sax":
        model = ConvUNetR({"sax": (192, 192, 16)}, out_chans=4, size="base").eval()
        image = torch.rand(1, 1, 192, 192, 16)
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
            image = image.to(memory_format=torch.channels_last_3d)

        def step() -> None:
            with torch.inference_mode(), autocast():
                model({"sax": image})

    elif case == "convvit_sax":
        # the released SAX classification / regression layout: ED and ES frames as two input channels
        model = ConvViT({"sax": (192, 192, 16)}, out_chans=2, in_chans=2, size="base").eval()
        image = torch.rand(1, 2, 192, 192, 16)

        def step() -> None:
            with torch.inference_mode(), autocast():
                model({"sax": image})

    elif case == "unet2d_train":
        # the shipped default's architecture and batch (configs/default_sax_segmentation.yaml, context_slices 1)
        model = UNet(2, in_chans=3, out_chans=4, chans=(16, 32, 64, 128, 256), patch_size=(2, 2), scale_factor=(2, 2))
        model.train()
        image = torch.rand(8, 3, 128, 128)
        labels = torch.randint(0, 4, (8, 1, 128, 128))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            image = image.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

        def step() -> None:
            with autocast():
                loss = segmentation_loss(model(image), labels)[0]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    else:
        views = {"sax": (192, 192, 16), "lax_2c": (256, 256), "lax_3c": (256, 256), "lax_4c": (256, 256)}
        model = CineMA(views, size="base", grad_ckpt=grad_ckpt).train()
        images = {v: torch.rand(1, 1, *s) for v, s in views.items()}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)

        def step() -> None:
            with autocast():
                loss = model(images, mask_ratio=0.75)[0]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: one-off kernel selection and allocations
    walls, cpu0 = [], time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        walls.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu0) / repeats
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "case": case,
        "precision": precision,
        "channels_last": channels_last,
        "grad_ckpt": grad_ckpt,
        "median_s": statistics.median(walls),
        "min_s": min(walls),
        "cpu_s_per_run": cpu,
        "peak_rss_mb": peak_mb,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--channels-last", action="store_true", help="ConvUNetR / U-Net in channels_last memory format")
    parser.add_argument("--grad-ckpt", action="store_true", help="MAE training with per-block checkpointing")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # child process: one case, result as JSON on the last line
        print(
            json.dumps(
                _run_case(args.one[0], args.one[1], args.repeats, args.threads, args.channels_last, args.grad_ckpt)
            )
        )
        return 0

    import torch

    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs), torch threads: {args.threads}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'case':15s} {'precision':9s} {'median s':>9s} {'min s':>7s} {'cpu s':>7s} {'peak RSS':>9s} {'vs ref':>7s}")
    print("(vs ref: the reference's time, or this case's fp32 run where the reference has none)")
    for case in args.cases:
        fp32_s = None
        for precision in args.precisions:
            cmd = [sys.executable, __file__, "--one", case, precision, "--repeats", str(args.repeats)]
            cmd += ["--threads", str(args.threads)] + (["--channels-last"] if args.channels_last else [])
            cmd += ["--grad-ckpt"] if args.grad_ckpt else []
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{case} {precision}: failed\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            fp32_s = r["median_s"] if precision == "fp32" else fp32_s
            baseline = REFERENCE_S.get(case, fp32_s)
            ratio = f"{baseline / r['median_s']:6.2f}x" if baseline else "     -"
            print(
                f"{case:15s} {precision:9s} {r['median_s']:9.2f} {r['min_s']:7.2f} {r['cpu_s_per_run']:7.2f} "
                f"{r['peak_rss_mb']:7.0f}MB {ratio}"
            )
    print(f"load average after: {os.getloadavg()[0]:.1f} (others' work on a shared machine inflates wall times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
