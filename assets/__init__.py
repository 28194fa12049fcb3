"""Thin Dagster assets: read inputs, call calibration_core, write artifacts, report metadata."""
