"""Dagster resources: artifact store, raw-input provider, build settings, weight fitter, publisher."""
