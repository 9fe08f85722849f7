-- wrk -s get.lua URL: plain GETs, reported as BENCHJSON (see report.lua).
package.path = debug.getinfo(1, "S").source:match("^@(.*/)") .. "?.lua;" .. package.path
require("report")
done = bench_report
