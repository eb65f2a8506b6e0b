-- GET of the URL's own path (the harness gives /health/live: the HTTP layer with no database
-- work), with the Authorization header the report requests carry.
dofile("report.lua")

function init(args)
  authorize()
end
