-- Prints one JSON line with what the suite needs from a wrk run.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "lat_mean_us": %.2f, ' ..
    '"lat_p50_us": %d, "lat_p99_us": %d, "errors": %d, "non2xx": %d}\n',
    summary.requests, summary.duration, summary.bytes, latency.mean,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
