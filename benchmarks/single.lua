-- One vehicle reading per request; no two requests share a (device, minute) pair, so every
-- request is a new reading, as in the peers' benchmark. Per-device time moves forward (so
-- the hot row is updated as in production), starting BENCH_DAYS_BACK days ago.
-- Environment: BENCH_PREFIX (device-id prefix, unique per run), BENCH_DEVICES (per thread).
dofile("report.lua")

local next_id = 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

function init(args)
  prefix = (os.getenv("BENCH_PREFIX") or "bench") .. "-" .. thread_id .. "-"
  devices = tonumber(os.getenv("BENCH_DEVICES") or "10000")
  start = math.floor(os.time() / 60) * 60 - 86400 * tonumber(os.getenv("BENCH_DAYS_BACK") or "10")
  counter = 0
  wrk.method = "POST"
  wrk.path = "/v1/ingest/vehicle"
  wrk.headers["Content-Type"] = "application/json"
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
