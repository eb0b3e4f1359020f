"""Performance as the user means it, on the same task: quality (perplexity, bits per byte),
speed (prefill and decode tokens/s, latency percentiles), resources (parameters, bytes, peak RSS)
and cost ($ per million tokens)."""
