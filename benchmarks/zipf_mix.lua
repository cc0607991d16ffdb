-- A Zipf-popular mix of full and range GETs for wrk (used by benchmarks/zipfmix.py).
--   wrk -t2 -c32 -d30s -s zipf_mix.lua URL -- OBJECTS_FILE [S] [RANGE_FRACTION] [RANGE_BYTES]
-- OBJECTS_FILE holds "<path> <size>" lines, most popular first. Prints one JSON line at the end
-- with wrk's totals, latency percentiles and a tally of X-Cache answers.

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
  table.insert(threads, thread)
end

local paths, lengths, cumulative = {}, {}, {}
local range_fraction, range_bytes = 0.3, 65536
tally = {}

function init(args)
  local s = tonumber(args[2] or "1.0")
  range_fraction = tonumber(args[3] or "0.3")
  range_bytes = tonumber(args[4] or "65536")
  math.randomseed(1000 + seed)
  local total = 0
  for line in io.lines(args[1]) do
    local path, size = line:match("^(%S+)%s+(%d+)")
    if path then
      table.insert(paths, path)
      table.insert(lengths, tonumber(size))
      total = total + 1 / ((#paths) ^ s)  -- unary # binds looser than ^
      table.insert(cumulative, total)
    end
  end
  for _, key in ipairs({"HIT", "MISS", "MISS/HIT", "MISS/MISS", "OTHER", "s2xx", "sother"}) do
    tally[key] = 0
  end
end

local function pick()
  local u = math.random() * cumulative[#cumulative]
  local lo, hi = 1, #cumulative
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cumulative[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function request()
  local i = pick()
  if math.random() < range_fraction then
    local len = lengths[i]
    local first = math.random(0, len - 1)
    local last = math.min(len - 1, first + math.random(1, range_bytes) - 1)
    return wrk.format("GET", paths[i], {["Range"] = "bytes=" .. first .. "-" .. last})
  end
  return wrk.format("GET", paths[i])
end

function response(status, headers, body)
  if status >= 200 and status < 300 then
    tally.s2xx = tally.s2xx + 1
  else
    tally.sother = tally.sother + 1
  end
  local xc = headers["x-cache"] or headers["X-Cache"] or ""
  local first, second = xc:match("^(%u+) from [%w-]+,%s*(%u+) from")
  local key
  if first then
    key = first .. "/" .. second
  else
    key = xc:match("^(%u+) from") or "OTHER"
  end
  if tally[key] == nil then key = "OTHER" end
  tally[key] = tally[key] + 1
end

function done(summary, latency, requests)
  local sums = {}
  for _, thread in ipairs(threads) do
    local t = thread:get("tally")
    for k, v in pairs(t) do sums[k] = (sums[k] or 0) + v end
  end
  local e = summary.errors
  io.write(string.format(
    'ZIPF_JSON {"requests":%d,"bytes":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"errors":%d,"hit":%d,"miss":%d,"miss_hit":%d,"miss_miss":%d,"other":%d,' ..
    '"s2xx":%d,"sother":%d}\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50),
    latency:percentile(99), e.connect + e.read + e.write + e.status + e.timeout,
    sums["HIT"] or 0, sums["MISS"] or 0, sums["MISS/HIT"] or 0, sums["MISS/MISS"] or 0,
    sums["OTHER"] or 0, sums.s2xx or 0, sums.sother or 0))
end
