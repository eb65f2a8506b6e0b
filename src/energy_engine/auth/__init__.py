"""API keys: storage, the per-worker key cache, and the middleware that checks every request."""
