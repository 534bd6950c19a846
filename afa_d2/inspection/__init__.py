"""Looking inside models: predictions, attention maps and pyramid energy as PNG files, FLOPs per pyramid level,
and the paper's tables from runs."""
