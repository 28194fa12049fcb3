"""Group ``raw``: the real public input files, hashed."""

import dagster as dg
import pandas as pd

from assets._code_version import code_version
from assets._metadata import measured
from calibration_core.raw_inputs import manifest_fingerprint
from resources.raw_inputs import RawInputProvider
from resources.store import ArtifactStore


@dg.asset(
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="raw",
    kinds={"python", "file"},
    code_version=code_version("assets.raw_inputs", "calibration_core.raw_inputs",
                              "resources.raw_inputs"),
    description=(
        "Real public inputs (Census ACS, IRS SOI, USDA FNS, CMS, Tax-Calculator's CPS file) "
        "in `raw/`, with `raw/manifest.json` giving every file's size and sha256. The default "
        "provider takes them from pinned PyPI packages and caches the archives. New files are "
        "staged and validated (format, required columns, ranges, codes) by the readers the "
        "later stages use before they replace anything in `raw/`: a bad file fails here, "
        "naming the file and the row or key, and leaves `raw/` and its manifest unchanged."
    ),
)
@measured
def raw_public_inputs(
    context: dg.AssetExecutionContext, store: ArtifactStore, raw_inputs: RawInputProvider
) -> dg.MaterializeResult:
    # a killed collect leaves its staging folder beside raw/ (".raw.staging.p<pid>.<random>")
    store.sweep_temporaries(context, ".", "raw")
    manifest = raw_inputs.collect(store.raw_dir)
    table = pd.DataFrame(
        [{"file": name, "bytes": entry["size"], "sha256": entry["sha256"][:16],
          "origin": entry["origin"].split(":")[0] + ":" + entry["origin"].split(":")[1]}
         for name, entry in sorted(manifest["files"].items())]
    )
    fingerprint = manifest_fingerprint(manifest)
    context.log.info(f"{len(table)} raw files in {store.raw_dir}, fingerprint {fingerprint[:16]}")
    return dg.MaterializeResult(
        metadata={
            "provider": manifest["provider"],
            "files": dg.MetadataValue.md(table.to_markdown(index=False)),
            "file_count": len(table),
            "total_bytes": int(table["bytes"].sum()),
            "manifest": dg.MetadataValue.path(str(store.raw_dir / "manifest.json")),
            "fingerprint": fingerprint,
        },
        data_version=dg.DataVersion(fingerprint[:32]),
    )
