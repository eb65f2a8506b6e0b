"""The reproducible benchmark behind benchmarks/RESULTS.md, run from a checkout (`make bench`).

Not part of the installed engine: it drives `energy-engine serve` from outside, with wrk
(a prerequisite) and PostgreSQL, and the engine never imports it.
"""
