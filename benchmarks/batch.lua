-- Batches of BENCH_BATCH readings per request to POST /v1/ingest, half meter and half vehicle
-- readings (a gateway's view); no (device, minute) pair is sent twice. Each request covers the
-- next block of devices; once all devices are covered, the next minute starts. Time starts at
-- the top of the current UTC hour, as live devices report (see single.lua).
-- Environment: BENCH_PREFIX (device-id prefix, unique per run), BENCH_DEVICES (per thread),
-- BENCH_BATCH (readings per request).
dofile("report.lua")  -- done(), and setup() numbering the threads (thread_id)

function init(args)
  prefix = (os.getenv("BENCH_PREFIX") or "bench") .. "-" .. thread_id .. "-"
  devices = tonumber(os.getenv("BENCH_DEVICES") or "200000")
  batch = tonumber(os.getenv("BENCH_BATCH") or "1000")
  start = math.floor(os.time() / 3600) * 3600
  counter = 0
  wrk.method = "POST"
  wrk.path = "/v1/ingest"
  wrk.headers["Content-Type"] = "application/json"
  authorize()
end

function request()
  local items = {}
  for i = 1, batch do
    local device = counter % devices
    local minute = math.floor(counter / devices)
    local at = os.date("!%Y-%m-%dT%H:%M:%SZ", start + minute * 60)
    counter = counter + 1
    if i % 2 == 0 then
      items[i] = string.format(
        '{"meterId":"%sm%d","kwhConsumedAc":%.3f,"voltage":%.1f,"timestamp":"%s"}',
        prefix, device, minute * 0.17, 228 + device % 5, at)
    else
      items[i] = string.format(
        '{"vehicleId":"%sv%d","soc":%.1f,"kwhDeliveredDc":%.3f,"batteryTemp":%.1f,"timestamp":"%s"}',
        prefix, device, 20 + minute % 80, minute * 0.15, 25 + device % 10, at)
    end
  end
  return wrk.format(nil, nil, nil, "[" .. table.concat(items, ",") .. "]")
end
