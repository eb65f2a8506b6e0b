-- GET /v1/analytics/performance/{vehicleId} for a random vehicle of the simulated fleet
-- (vehicle-00001 … vehicle-<BENCH_VEHICLES>), 24 h window ending now.
dofile("report.lua")

function init(args)
  vehicles = tonumber(os.getenv("BENCH_VEHICLES") or "1000")
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8), 16) or 0))
end

function request()
  return wrk.format("GET", string.format("/v1/analytics/performance/vehicle-%05d",
    math.random(1, vehicles)))
end
