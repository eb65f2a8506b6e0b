"""`energy-engine import`: bulk import of reading files through COPY and the ingest merge."""
