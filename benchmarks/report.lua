-- Shared by the wrk scripts (loaded with dofile; wrk runs with benchmarks/ as its directory):
-- setup() gives each thread a `thread_id` (so scripts can keep device ids apart per thread),
-- done() prints one machine-readable line that `energy-engine bench` parses.
local next_id = 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end

-- The engine's API key, when the harness started it with one (ENERGY_API_KEY; see harness.py).
function authorize()
  local key = os.getenv("ENERGY_API_KEY")
  if key and key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
  end
end
