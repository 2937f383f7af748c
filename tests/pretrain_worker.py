"""Subprocess entry of the pre-training tests: one torch thread, then the real command line.

    python tests/pretrain_worker.py [--stall-after STEP --ready FILE] pretrain CONFIG key=value ...

With ``--stall-after`` the run writes FILE once optimiser step STEP (and its checkpoint, if due) is done and then
waits, so the test can SIGKILL it at a known point in the middle of an epoch. Also the script torchrun starts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)


def main(argv: list[str]) -> int:
    stall_after, ready = None, None
    if argv[:1] == ["--stall-after"]:
        stall_after, ready, argv = int(argv[1]), Path(argv[3]), argv[4:]
    if stall_after is None:
        from cinema.cli import main as cli_main

        return cli_main(argv)

    from cinema.config import load_pretrain_config
    from cinema.train.pretrain import pretrain

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if step == stall_after:
            ready.write_text(str(step))
            while True:  # the test kills us here
                time.sleep(0.05)

    config = load_pretrain_config(argv[1], argv[2:])
    pretrain(config, on_step=on_step)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
