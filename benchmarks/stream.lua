-- Batches of BENCH_BATCH vehicle readings per request to POST /v1/ingest/vehicle, one stream
-- only, from BENCH_DEVICES vehicles per wrk thread (100,000 in all with 2 threads at 50,000):
-- each request covers the next block of a thread's vehicles, so a batch touches as many
-- different hot rows as it has readings. Once all the thread's vehicles are covered, the next
-- pass starts one second later: every reading is new (its vehicle's time only moves forward)
-- and no duplicate is ever sent. Time starts at the clock when the run starts, so readings
-- are live (never older than the current hour, never late data); a second per pass keeps them
-- behind the clock up to 50,000 readings/s per thread and within the allowed 5 minutes ahead
-- at any rate this machine reaches in a run.
-- Environment: BENCH_PREFIX (device-id prefix, unique per run), BENCH_DEVICES (per thread),
-- BENCH_BATCH (readings per request).
dofile("report.lua")  -- done(), and setup() numbering the threads (thread_id)

function init(args)
  prefix = (os.getenv("BENCH_PREFIX") or "bench") .. "-" .. thread_id .. "-v"
  devices = tonumber(os.getenv("BENCH_DEVICES") or "50000")
  batch = tonumber(os.getenv("BENCH_BATCH") or "1000")
  start = os.time()
  counter = 0
  at = nil  -- the timestamp of the current pass
  wrk.method = "POST"
  wrk.path = "/v1/ingest/vehicle"
  wrk.headers["Content-Type"] = "application/json"
  authorize()
end

function request()
  local items = {}
  for i = 1, batch do
    local device = counter % devices
    if device == 0 or not at then  -- a new pass: its timestamp, formatted once
      pass = math.floor(counter / devices)
      at = os.date("!%Y-%m-%dT%H:%M:%SZ", start + pass)
    end
    counter = counter + 1
    items[i] = string.format(
      '{"vehicleId":"%s%d","soc":%.1f,"kwhDeliveredDc":%.4f,"batteryTemp":%.1f,"timestamp":"%s"}',
      prefix, device, 20 + pass % 80, pass * 0.0025, 25 + device % 10, at)
  end
  return wrk.format(nil, nil, nil, "[" .. table.concat(items, ",") .. "]")
end
