"""Queue mode: readings published to a NATS JetStream stream, written by `energy-engine worker`."""
