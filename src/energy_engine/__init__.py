"""Energy Ingestion Engine: smart-meter and EV telemetry in, live status and efficiency out."""

__version__ = "0.1.0"
