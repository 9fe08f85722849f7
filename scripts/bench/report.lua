-- Shared by the bench's wrk scripts: done() prints one line
-- `BENCHJSON {...}` with the run's totals and latency percentiles (ms),
-- which scripts/bench.py parses instead of wrk's human output.
function bench_report(summary, latency, requests)
  local e = summary.errors
  local p = {}
  for _, q in ipairs({50, 90, 99, 99.9}) do
    p[#p + 1] = string.format('"p%s":%.3f', tostring(q):gsub("%.", "_"), latency:percentile(q) / 1000)
  end
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_s":%.3f,"bytes":%d,"non_2xx_3xx":%d,' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_ms":{%s,"mean":%.3f,"max":%.3f}}\n',
    summary.requests, summary.duration / 1e6, summary.bytes, e.status,
    e.connect, e.read, e.write, e.timeout,
    table.concat(p, ","), latency.mean / 1000, latency.max / 1000))
end
