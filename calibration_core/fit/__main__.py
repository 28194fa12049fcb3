"""``python -m calibration_core.fit``: fit L0 weights to a calibration package from a terminal."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from . import FIT_PRESETS, fit_preset, format_progress, package_columns, run_fit

# ------------------------------------------------------------------------------------------------
# CLI


def _parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m calibration_core.fit",
        description="Fit L0-regularised calibration weights to a calibration package.")
    parser.add_argument("--package", required=True, help="calibration package folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--preset", default="regional", choices=sorted(FIT_PRESETS))
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file (default OUT/checkpoint.pt)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:n]")
    parser.add_argument("--threads", type=int, default=None)
    for name in ("epochs", "refit_epochs", "seed", "checkpoint_every", "log_every"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    for name in ("lambda_l0", "lambda_l2", "beta", "learning_rate", "init_keep_prob",
                 "refit_learning_rate", "refit_lambda_l2"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    overrides = {k: getattr(args, k) for k in (
        "epochs", "refit_epochs", "seed", "checkpoint_every", "log_every", "lambda_l0",
        "lambda_l2", "beta", "learning_rate", "init_keep_prob", "refit_learning_rate",
        "refit_lambda_l2")}
    hp = fit_preset(args.preset, n_columns=package_columns(args.package), **overrides)

    def report(event: dict) -> None:
        print(format_progress(event), file=sys.stderr, flush=True)

    result = run_fit(args.package, args.out, hp, checkpoint_path=args.checkpoint,
                     resume=not args.no_resume, device=args.device, threads=args.threads,
                     progress=report)
    print(json.dumps({"summary": result.summary, "timing": result.timing}, indent=2,
                     default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

