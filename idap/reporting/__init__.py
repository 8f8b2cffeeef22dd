"""Tables and plots from the metrics, latency and dynamics files the stages write."""
