"""`energy-engine bench`: the reproducible benchmark behind benchmarks/RESULTS.md."""
