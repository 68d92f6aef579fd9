"""User-facing tools over the API: the CLI, bench, diagnose, plot and viz."""
