-- wrk script for the full-pipeline row (bench/run.sh): requests alternate
-- between the API-key route and the JWT route, with the credentials
-- bench/run.sh created (read from the environment, never printed).
local key = os.getenv("BENCH_API_KEY")
local token = os.getenv("BENCH_JWT")
if not key or not token then
  error("BENCH_API_KEY and BENCH_JWT must be set")
end
local requests = {
  wrk.format("GET", "/full/key/", { ["x-api-key"] = key }),
  wrk.format("GET", "/full/jwt/", { ["authorization"] = "Bearer " .. token }),
}
local n = 0
request = function()
  n = n + 1
  return requests[(n % 2) + 1]
end
