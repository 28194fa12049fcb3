"""Group ``targets``: the SQLite database of administrative calibration targets, and its checks."""

import dagster as dg

from assets._metadata import markdown_table as _md, measured
from assets._code_version import code_version
from calibration_core import targets_db as tdb
from resources.store import ArtifactStore

DB_PARTS = ("targets", "targets.db")


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="targets",
    deps=["raw_public_inputs"],
    kinds={"python", "sqlite"},
    code_version=code_version("assets.targets_db", "calibration_core.targets_db"),
    description=(
        "`targets/targets.db`: administrative calibration targets from real public statistics "
        "(Census ACS S0101/S2201, USDA FNS SNAP, CMS Medicaid, IRS SOI) on the nation, 51 "
        "states and 436 districts; strata / stratum_constraints / targets / sources tables, "
        "uprating to 2024 recorded per target. Built in a temporary file, validated, then "
        "renamed: a failed build leaves the previous database untouched."
    ),
)
@measured
def targets_db(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
    db_path = store.path(*DB_PARTS)
    summary = tdb.build_targets_db(store.raw_dir, db_path)
    table = summary["by_source_level"].pivot_table(
        index="source", columns="geo_level", values="targets", aggfunc="sum", fill_value=0)
    table["total"] = table.sum(axis=1)
    recon = summary["reconciliation"]
    factors = (recon[recon["applied"]].groupby(["rule", "parent"])["factor"]
               .agg(["size", "min", "median", "max"]).round(4)
               .rename(columns={"size": "families"}).reset_index())
    gaps = _unreconciled_gaps(db_path)
    context.log.info(f"{summary['targets']} targets in {summary['strata']} strata -> {db_path} "
                     f"({summary['seconds']:.1f} s)")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(db_path)),
            "total_targets": summary["targets"],
            "strata": summary["strata"],
            "modelled_targets": summary["modelled"],
            "targets_by_source": dg.MetadataValue.json(summary["by_source"]),
            "targets_by_level": dg.MetadataValue.json(summary["by_level"]),
            "targets_by_source_and_level": dg.MetadataValue.md(table.reset_index().to_markdown(
                index=False)),
            "reconciled_targets": int(recon.loc[recon["applied"], "children"].sum()),
            "reconciliation_not_applied": _md(
                recon.loc[~recon["applied"], ["rule", "family", "parent", "reason"]]),
            "reconciliation_factors": _md(factors),
            "unreconciled_source_gaps": _md(gaps),
            "build_seconds": round(summary["seconds"], 2),
            "sha256": summary["sha256"],
        },
        data_version=dg.DataVersion(summary["sha256"][:32]),
    )


def _unreconciled_gaps(db_path) -> "pd.DataFrame":
    """Families whose calibration values do not add up from one level to the next (sources or
    periods that disagree and that no reconciliation rule scales), largest gap first."""
    gaps = tdb.hierarchy_gaps(db_path)
    gaps = gaps[gaps["max_abs_rel_gap"] > 1e-9]
    return gaps.sort_values("max_abs_rel_gap", ascending=False, kind="stable").head(30)


@dg.asset_check(asset=targets_db, blocking=True,
                description="Exactly 1 nation, 51 states (incl. DC) and 436 districts.")
def targets_db_geographies(store: ArtifactStore) -> dg.AssetCheckResult:
    counts = tdb.geography_counts(store.path(*DB_PARTS))
    return dg.AssetCheckResult(
        passed=counts == tdb.EXPECTED_GEOGRAPHIES,
        metadata={level: counts.get(level, 0) for level in tdb.EXPECTED_GEOGRAPHIES},
    )


@dg.asset_check(asset=targets_db,
                description="District sums equal state totals and state sums equal the national "
                            "total where the source promises it; other gaps are reported.")
def targets_db_additivity(store: ArtifactStore) -> dg.AssetCheckResult:
    report = tdb.additivity_report(store.path(*DB_PARTS))
    summary = (report.groupby(["source", "relation", "promised"], as_index=False)
               .agg(families=("family", "size"), failing=("ok", lambda s: int((~s).sum())),
                    max_rel_gap=("max_rel_gap", "max")))
    return dg.AssetCheckResult(
        passed=bool(report["ok"].all()) and not report.empty,
        metadata={
            "families_checked": len(report),
            "promised_failing": int((report["promised"] & ~report["ok"]).sum()),
            "summary": _md(summary),
            "unpromised_gaps": _md(report[~report["promised"]][
                ["source", "variable", "period", "family", "relation", "sum_children",
                 "sum_parents", "max_rel_gap"]]),
        },
    )


@dg.asset_check(asset=targets_db, description="No duplicate (stratum, variable, period).")
def targets_db_no_duplicates(store: ArtifactStore) -> dg.AssetCheckResult:
    dup = tdb.duplicate_targets(store.path(*DB_PARTS))
    return dg.AssetCheckResult(passed=dup.empty, metadata={"duplicates": len(dup)})


@dg.asset_check(asset=targets_db,
                description="Every target variable and constraint variable is a policyengine-us "
                            "variable (read from the installed package's source tree).")
def targets_db_variables_exist(store: ArtifactStore) -> dg.AssetCheckResult:
    known = tdb.policyengine_variable_names()
    unknown = tdb.unknown_variables(store.path(*DB_PARTS), known)
    return dg.AssetCheckResult(
        passed=not any(unknown.values()),
        metadata={"policyengine_variables": len(known),
                  "unknown": dg.MetadataValue.json(unknown)},
    )
