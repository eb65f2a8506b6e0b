"""MQTT ingestion: the engine subscribes to devices' topics on a broker (docs/mqtt.md)."""
