"""Asset jobs: what a user launches from the UI, the CLI or CI."""
import dagster as dg

build_all = dg.define_asset_job(
    "build_all",
    selection=dg.AssetSelection.all(),
    description="Every asset of the graph, from raw public inputs to the area datasets.",
)

ALL_JOBS = [build_all]
