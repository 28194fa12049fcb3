"""areacal's science: pure functions over arrays, tables and paths. Never imports dagster."""
