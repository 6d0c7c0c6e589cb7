-- wrk script of `make bench`. With BENCH_ADDRS="host:port,host:port" the
-- threads are spread over those addresses (the "direct" runs drive both
-- backends). done() prints the summary as one JSON line, which the harness
-- reads.
local addrs = nil
local n = 0

function setup(thread)
  if addrs == nil then
    addrs = {}
    for a in string.gmatch(os.getenv("BENCH_ADDRS") or "", "[^,]+") do
      local host, port = string.match(a, "^(.+):(%d+)$")
      table.insert(addrs, wrk.lookup(host, port)[1])
    end
  end
  if #addrs > 0 then
    thread.addr = addrs[(n % #addrs) + 1]
  end
  n = n + 1
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH-RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
