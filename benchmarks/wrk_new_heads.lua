-- wrk_report.lua's totals, with a request head of its own for every request: an
-- X-Request-Id that counts up per thread (as a client or a tracing proxy sends one), so no
-- head is ever sent twice and edgeproxy's replays of repeated heads never apply.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "wrk_report.lua")

local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local n = 0
request = function()
  n = n + 1
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["X-Request-Id"] = tid .. "-" .. n
  return wrk.format(nil, nil, headers)
end
