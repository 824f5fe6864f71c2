-- wrk script for the full-pipeline row (bench/run.sh): requests alternate
-- between the API-key route and the JWT route, with the credentials
-- bench/run.sh created (read from the environment, never printed).
local key = os.getenv("BENCH_API_KEY")
local token = os.getenv("BENCH_JWT")
if not key or not token then
  error("BENCH_API_KEY and BENCH_JWT must be set")
end

local requests = {}
local n = 0

-- wrk has set wrk.headers.Host by the time init runs; a request with its
-- own header table must carry it too.
local function with(name, value)
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h[name] = value
  return h
end

function init(args)
  requests[1] = wrk.format("GET", "/full/key/", with("x-api-key", key))
  requests[2] = wrk.format("GET", "/full/jwt/", with("Authorization", "Bearer " .. token))
end

function request()
  n = n + 1
  return requests[(n % 2) + 1]
end
