"""Group ``calibration``: the L0 weight fits (regional and national), each with a blocking check.

Artifacts (under the store root): ``calibration/regional/`` and ``calibration/national/``, each
with ``weights.npy``, ``diagnostics.csv``, ``epochs.csv``, ``fit_plot.png``, ``fit_summary.json``,
``timing.json`` and its own ``checkpoint.pt`` (never shared between the two fits).
``fit_summary.json`` is written last and lists the sha256 of the other outputs: a folder without
it, or whose files disagree with it, is an incomplete fit that nothing downstream uses
(``calibration_core.fit.read_fit_outputs``); the next materialization resumes and completes it.
The fits run through the ``fitter`` resource (in-process or Dagster Pipes; CPU or CUDA) in the
concurrency pool ``gpu`` (limit it to 1: see ``dagster.yaml.example``).
"""

import base64
from typing import Optional

import dagster as dg
import pandas as pd

from assets._code_version import code_version
from assets._metadata import measured
from calibration_core.fit import (DIAGNOSTICS_FILE, PLOT_FILE, WEIGHTS_FILE, FitError,
                                  read_fit_outputs)
from calibration_core.io_utils import stable_seed
from jobs.executors import gpu_step_tags
from resources.fitter import WeightFitter
from resources.settings import BuildSettings
from resources.store import ArtifactStore

PACKAGE = ("calibration", "package")
PACKAGE_KEY = dg.AssetKey("calibration_package")


class WeightFitConfig(dg.Config):
    """Run config of a weight fit; unset values come from the build preset and the fit preset."""

    epochs: Optional[int] = None  # default: BuildSettings' regional_epochs / national_epochs
    refit_epochs: Optional[int] = None  # default: the fit preset's (0 switches the refit off)
    resume: bool = True  # continue from this fit's checkpoint when it matches
    on_checkpoint_mismatch: str = "restart"  # "restart" (log and start afresh) or "error"
    checkpoint_every: int = 100
    log_every: int = 10
    lambda_l0: Optional[float] = None
    lambda_l2: Optional[float] = None
    learning_rate: Optional[float] = None
    seed: Optional[int] = None  # default: stable_seed("l0_fit", kind, build seed)


class FitQualityConfig(dg.Config):
    """Threshold of the blocking check on mean |relative error| of achievable in-sample targets.

    Unset: the build preset's ``max_mean_abs_rel_error`` (10% for demo and full; see
    :mod:`calibration_core.presets` for the tiny preset's and why).
    """

    max_mean_abs_rel_error: Optional[float] = None


def _fit_asset(kind: str, context: dg.AssetExecutionContext, config: WeightFitConfig,
               store: ArtifactStore, settings: BuildSettings,
               fitter: WeightFitter) -> dg.MaterializeResult:
    preset = settings.resolve()
    epochs = config.epochs or (preset.regional_epochs if kind == "regional"
                               else preset.national_epochs)
    seed = config.seed if config.seed is not None else stable_seed("l0_fit", kind, preset.seed)
    overrides = {"epochs": int(epochs), "seed": int(seed),
                 "checkpoint_every": config.checkpoint_every, "log_every": config.log_every,
                 "lambda_l0": config.lambda_l0, "lambda_l2": config.lambda_l2,
                 "learning_rate": config.learning_rate, "refit_epochs": config.refit_epochs}
    package_dir = store.path(*PACKAGE)
    out_dir = store.folder("calibration", kind)
    store.sweep_temporaries(context, f"calibration/{kind}")
    outcome = fitter.fit(context, package_dir, out_dir, kind, overrides, resume=config.resume,
                         on_checkpoint_mismatch=config.on_checkpoint_mismatch)
    summary, timing, hp = outcome["summary"], outcome["timing"], outcome["hp"]
    try:
        summary = read_fit_outputs(out_dir)  # every output present and as the summary lists
    except FitError as exc:
        raise dg.Failure(f"the fit's outputs are inconsistent: {exc}") from exc
    weights_sha = summary["weights_sha256"]
    diagnostics = pd.read_csv(out_dir / DIAGNOSTICS_FILE)
    worst = (diagnostics[diagnostics["in_fit"]]
             .sort_values("abs_rel_error", ascending=False, kind="stable").head(15)
             [["target", "value", "estimate", "rel_error"]])
    plot = base64.b64encode((out_dir / PLOT_FILE).read_bytes()).decode("ascii")
    context.log.info(
        f"{kind} weights: mean |rel err| {summary['mean_abs_rel_error']:.4%} over "
        f"{summary['n_fit_targets']} targets, {summary['active_records']} active records")
    holdout = summary.get("holdout_mean_abs_rel_error")
    return dg.MaterializeResult(
        metadata={
            "mean_abs_rel_error": dg.MetadataValue.float(summary["mean_abs_rel_error"]),
            "median_abs_rel_error": dg.MetadataValue.float(summary["median_abs_rel_error"]),
            "max_abs_rel_error": dg.MetadataValue.float(summary["max_abs_rel_error"]),
            "worst_target": summary["worst_target"],
            "holdout_mean_abs_rel_error": dg.MetadataValue.float(
                holdout if holdout is not None else float("nan")),
            "active_records": dg.MetadataValue.int(summary["active_records"]),
            "sparsity": dg.MetadataValue.float(summary["sparsity"]),
            "n_columns": summary["n_columns"],
            "n_fit_targets": summary["n_fit_targets"],
            "final_loss": dg.MetadataValue.float(summary["final_loss"]),
            "loss_weights": summary.get("loss_weights", "uniform"),
            "refit_epochs": (summary.get("refit") or {}).get("epochs", 0),
            "mean_abs_rel_error_before_refit": dg.MetadataValue.float(
                (summary.get("refit") or {}).get("before", {}).get(
                    "mean_abs_rel_error", summary["mean_abs_rel_error"])),
            "group_mean_abs_rel_error": dg.MetadataValue.json(
                summary.get("group_mean_abs_rel_error", {})),
            "epochs": summary["epochs"],
            "epochs_per_second": dg.MetadataValue.float(timing["epochs_per_second"] or 0.0),
            "train_seconds": dg.MetadataValue.float(timing["train_seconds"]),
            "resumed_from_epoch": timing["resumed_from_epoch"],
            "device": timing["device"],
            "mode": outcome["mode"],
            "lambda_l0": hp.lambda_l0, "lambda_l2": hp.lambda_l2, "beta": hp.beta,
            "learning_rate": hp.learning_rate, "seed": str(hp.seed),
            "plot": dg.MetadataValue.md(f"![error and active records by epoch]"
                                        f"(data:image/png;base64,{plot})"),
            "worst_targets": dg.MetadataValue.md(worst.to_markdown(index=False)),
            "weights": dg.MetadataValue.path(str(out_dir / WEIGHTS_FILE)),
            "weights_sha256": weights_sha,
            "package_fingerprint": summary["package_fingerprint"],
            "dagster/row_count": summary["n_columns"],
        },
        data_version=dg.DataVersion(weights_sha[:32]),
    )


def _quality_check(kind: str, config: FitQualityConfig, store: ArtifactStore,
                   settings: BuildSettings) -> dg.AssetCheckResult:
    out_dir = store.path("calibration", kind)
    threshold = (config.max_mean_abs_rel_error if config.max_mean_abs_rel_error is not None
                 else settings.resolve().max_mean_abs_rel_error)
    try:
        summary = read_fit_outputs(out_dir)
    except FitError as exc:  # incomplete or inconsistent folder: the check fails, naming why
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR, description=str(exc),
            metadata={"threshold": dg.MetadataValue.float(threshold),
                      "weights_match_summary": False})
    mean = float(summary["mean_abs_rel_error"])
    return dg.AssetCheckResult(
        passed=bool(mean < threshold),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"mean_abs_rel_error": dg.MetadataValue.float(mean),
                  "threshold": dg.MetadataValue.float(threshold),
                  "n_fit_targets": summary["n_fit_targets"],
                  "weights_match_summary": True},
    )


_COMMON = dict(
    group_name="calibration",
    deps=[PACKAGE_KEY],
    pool="gpu",
    op_tags=gpu_step_tags(),
    kinds={"pytorch"},
    code_version=code_version("assets.fit", "calibration_core.fit", "resources.fitter"),
)


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    **_COMMON,
    description=(
        "`calibration/regional/`: L0-sparse clone-household weights fitted to every achievable "
        "in-sample target of the package (preset `regional`: λ_L0 1e-7, λ_L2 1e-8, β 0.65, "
        "lr 0.15), with diagnostics, a per-epoch log, a plot and its own checkpoint."),
)
@measured
def regional_weights(context: dg.AssetExecutionContext, config: WeightFitConfig,
                     store: ArtifactStore, settings: BuildSettings,
                     fitter: WeightFitter) -> dg.MaterializeResult:
    return _fit_asset("regional", context, config, store, settings, fitter)


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    **_COMMON,
    description=(
        "`calibration/national/`: the national fit (preset `national`: λ_L0 2e-2, λ_L2 1e-12, "
        "β 0.65, lr 0.15): far fewer active records, for the national file; its own checkpoint."),
)
@measured
def national_weights(context: dg.AssetExecutionContext, config: WeightFitConfig,
                     store: ArtifactStore, settings: BuildSettings,
                     fitter: WeightFitter) -> dg.MaterializeResult:
    return _fit_asset("national", context, config, store, settings, fitter)


@dg.asset_check(asset=regional_weights, name="fit_quality", blocking=True,
                description="Mean |relative error| of achievable in-sample targets is below the "
                            "preset's threshold (10%; tiny: 70%); a failure stops area assembly.")
def regional_weights_fit_quality(config: FitQualityConfig, store: ArtifactStore,
                                 settings: BuildSettings) -> dg.AssetCheckResult:
    return _quality_check("regional", config, store, settings)


@dg.asset_check(asset=national_weights, name="fit_quality", blocking=True,
                description="Mean |relative error| of achievable in-sample targets is below the "
                            "preset's threshold (10%; tiny: 70%); a failure stops the national "
                            "file.")
def national_weights_fit_quality(config: FitQualityConfig, store: ArtifactStore,
                                 settings: BuildSettings) -> dg.AssetCheckResult:
    return _quality_check("national", config, store, settings)
