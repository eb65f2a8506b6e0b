"""Energy Ingestion Engine: smart-meter and EV telemetry into live status and efficiency analytics."""

__version__ = "0.1.0"
