"""Data lifecycle: the maintenance loop (partitions ahead, retention) and its record."""
