"""The operator dashboard: one page at `/` that reads the engine's own API in the browser."""
