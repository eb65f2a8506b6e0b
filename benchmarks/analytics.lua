-- GET /v1/analytics/performance/{vehicleId} for a random vehicle of the simulated fleet
-- (vehicle-00001 … vehicle-<BENCH_VEHICLES>): the default 24 h window ending now, or the
-- query string in BENCH_WINDOW (e.g. from=…&to=…).
dofile("report.lua")

function init(args)
  authorize()
  vehicles = tonumber(os.getenv("BENCH_VEHICLES") or "1000")
  window = os.getenv("BENCH_WINDOW")
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8), 16) or 0))
end

function request()
  local path = string.format("/v1/analytics/performance/vehicle-%05d", math.random(1, vehicles))
  if window and window ~= "" then
    path = path .. "?" .. window
  end
  return wrk.format("GET", path)
end
