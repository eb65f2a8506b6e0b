"""What an operator watches: Prometheus metrics (`metrics`, `routes`), log lines (`logs`) and
the one line per request with its id (`requests`)."""
