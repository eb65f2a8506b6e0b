-- One vehicle reading per request; no two requests share a (device, minute) pair, so every
-- request is a new reading, as in the peers' benchmark. Time starts at the top of the current
-- UTC hour and moves a minute forward per pass over the devices, as live devices report (so
-- the hot row moves forward too). Readings days old would all be late data, which marks their
-- rollup hours dirty and measures that path instead. With 200,000 devices per thread a run
-- stays within the first minutes of the hour, never more than the allowed 5 minutes ahead of
-- the clock (a run right at the top of the hour has just those 5 minutes).
-- Environment: BENCH_PREFIX (device-id prefix, unique per run), BENCH_DEVICES (per thread).
dofile("report.lua")  -- done(), and setup() numbering the threads (thread_id)

function init(args)
  prefix = (os.getenv("BENCH_PREFIX") or "bench") .. "-" .. thread_id .. "-"
  devices = tonumber(os.getenv("BENCH_DEVICES") or "200000")
  start = math.floor(os.time() / 3600) * 3600
  counter = 0
  wrk.method = "POST"
  wrk.path = "/v1/ingest/vehicle"
  wrk.headers["Content-Type"] = "application/json"
  authorize()
end

function request()
  local device = counter % devices
  local minute = math.floor(counter / devices)
  counter = counter + 1
  local body = string.format(
    '{"vehicleId":"%s%d","soc":%.1f,"kwhDeliveredDc":%.3f,"batteryTemp":%.1f,"timestamp":"%s"}',
    prefix, device, 20 + minute % 80, minute * 0.15, 25 + device % 10,
    os.date("!%Y-%m-%dT%H:%M:%SZ", start + minute * 60))
  return wrk.format(nil, nil, nil, body)
end
