-- wrk -s comments.lua http://127.0.0.1:<comments port> -- IDS_FILE
-- POSTs {"content":...} to /posts/<id>/comments, <id> picked at random
-- from IDS_FILE (one post id a line). Reported as BENCHJSON (see report.lua).
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
require("report")

local ids = {}
local n = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  -- one seed per wrk thread (each has its own Lua state, so its own table address)
  math.randomseed(os.time() + tonumber(tostring(ids):match("0x(%x+)") or "0", 16) % 100000)
end

function request()
  n = n + 1
  local body = string.format('{"content":"bench comment %d"}', n)
  return wrk.format("POST", "/posts/" .. ids[math.random(#ids)] .. "/comments",
    { ["Content-Type"] = "application/json" }, body)
end

done = bench_report
