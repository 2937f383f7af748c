"""``cinema finetune CONFIG [key=value ...] [--check] ...``: fine-tune a model on any task from one YAML config (the
overrides and the flags in any order)."""

from __future__ import annotations

import argparse

HELP = "fine-tune a model (segmentation, classification, regression, landmarks, survival) from a YAML config"


class _IntermixedParser(argparse.ArgumentParser):
    """Overrides may come before, between or after the flags (``CONFIG a=1 --check b=2``): a plain parse stops filling
    the ``key=value`` list at the first flag and refuses what follows it."""

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]  # argparse's signature
        if self._parsing:  # parse_known_intermixed_args parses the flags, then the positionals, through this method
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # cinema.cli builds every sub-command's parser; this one alone takes a free list of overrides among its flags
    parser.__class__ = _IntermixedParser
    parser.add_argument("config", help="YAML config file (see configs/ for examples)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides of config keys, e.g. train.lr=1e-4 data.max_subjects=10 model.views=[sax]",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from its checkpoint")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the config, read and check all data and build the model, then exit without training",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-evaluation messages")


def run(args: argparse.Namespace) -> int:
    import logging

    from cinema.cli import CinemaError
    from cinema.config import load_config
    from cinema.train.trainer import Trainer

    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("train.progress_bar=false")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    config = load_config(args.config, overrides)
    trainer = Trainer(config, resume=args.resume)
    trainer.setup()
    if args.check:
        print(
            f"config and data OK: {config.task}, {len(trainer.train_set)} training samples, "
            f"{len(trainer.val_set) if trainer.val_set else 0} validation samples, "
            f"{sum(p.numel() for p in trainer.model.parameters())} parameters"
        )
        return 0
    try:
        result = trainer.fit()
    except FloatingPointError as err:
        raise CinemaError(str(err)) from err
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.4f} (epoch {result.best_epoch})"
    stop = ", stopped early" if result.stopped_early else ""
    print(
        f"finished {result.epochs_completed} epochs ({result.global_step} steps{stop}); "
        f"best val {result.metric}: {best}; model in {result.output_dir / 'model'}"
    )
    return 0
