-- wrk script for the cross-check of bench/load.py: every request posts one
-- observation to the URL given on wrk's command line (a closed loop: wrk sends
-- the next request when the previous answer arrives, so it measures capacity,
-- not latency at a rate). Non-2xx answers are counted by wrk itself
-- ("Non-2xx or 3xx responses"); the 201 means the observation is durable.
--   wrk -t1 -c16 -d10s --latency -s bench/wrk/observations.lua \
--       http://127.0.0.1:PORT/api/v1/observations
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"event_type":"bench.tick","value":{"n":1},"sector":"generic","metadata":{}}'

local created, other = 0, 0

function response(status, headers, body)
  if status == 201 then created = created + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  -- per-thread tallies are not shared back; wrk's own report has the totals
  io.write(string.format("lua: %d requests, %d errors (connect %d read %d write %d timeout %d)\n",
    summary.requests, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
end
