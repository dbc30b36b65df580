-- wrk script for the rlinks benchmarks: request paths read from a file, stop
-- after a number of responses, and print the run's figures as one JSON line
-- (latencies in microseconds).
--
--   wrk -t1 -c10 -d60s -s paths.lua http://127.0.0.1:PORT/ -- [PATHS_FILE [LIMIT]]
--
-- PATHS_FILE: one request path a line (e.g. /z00042), sent in order and cycled;
-- each thread starts at its own offset. Empty or absent: the URL's own path.
-- LIMIT: responses per thread after which the thread stops and prints
-- "wrk-thread-done"; 0 or absent: run for the whole -d duration.
--
-- wrk's main thread sleeps for all of -d even when every thread has stopped,
-- and its own duration then covers that sleep: the caller sends SIGINT on
-- "wrk-thread-done" (wrk then reports at once), and the rate is taken from
-- "span_us", the time from the first request sent to the last response read
-- (CLOCK_MONOTONIC through LuaJIT's FFI, as Debian's wrk embeds LuaJIT).
--
-- The client shares the machine with the server under test, so per request it
-- does as little as it can: every request is formatted once in init, and
-- without LIMIT the script drops its `response` hook, so wrk hands no response
-- to Lua (span_us is then 0 and the duration gives the rate). Against nginx
-- that took wrk from 7.8-9.9 to 7.0-8.3 us of CPU per request (3 pairs of
-- runs, 0.8-1.9 us less in each).

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } rlinks_timespec;
int clock_gettime(int clk_id, rlinks_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("rlinks_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000000 + math.floor(tonumber(timespec.tv_nsec) / 1000)
end

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

local paths = nil -- then the requests themselves, formatted once in init
local single = nil -- the request for the URL's own path, when there are no paths
local next_index = 1
local limit = 0
-- globals, read by done() from each thread
count = 0
first_us = 0
last_us = 0

function init(args)
  local file = args[1]
  limit = tonumber(args[2] or "0") or 0
  if file ~= nil and file ~= "" then
    paths = {}
    for line in io.lines(file) do
      if line ~= "" then
        paths[#paths + 1] = line
      end
    end
    if #paths == 0 then
      error("no paths in " .. file)
    end
    next_index = (id * 7919) % #paths + 1
    -- each request formatted once, here, not on every send
    for i, path in ipairs(paths) do
      paths[i] = wrk.format("GET", path)
    end
  end
  single = wrk.format("GET")
  if limit == 0 then
    -- nothing to count: wrk then hands no response to Lua
    response = nil
  end
end

function request()
  if first_us == 0 then
    first_us = now_us()
  end
  if paths == nil then
    return single
  end
  local req = paths[next_index]
  next_index = next_index % #paths + 1
  return req
end

function response(status, headers, body)
  count = count + 1
  last_us = now_us()
  if limit > 0 and count == limit then
    io.write("wrk-thread-done\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  local responses, first, last = 0, nil, 0
  for _, thread in ipairs(threads) do
    responses = responses + (thread:get("count") or 0)
    local f = thread:get("first_us") or 0
    if f > 0 and (first == nil or f < first) then
      first = f
    end
    last = math.max(last, thread:get("last_us") or 0)
  end
  local span = 0
  if first ~= nil and last > first then
    span = last - first
  end
  io.write(string.format(
    '{"requests": %d, "responses": %d, "duration_us": %d, "span_us": %d, "errors": %d, '
      .. '"errors_connect": %d, "errors_read": %d, "errors_write": %d, '
      .. '"errors_status": %d, "errors_timeout": %d, '
      .. '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, responses, summary.duration, span,
    e.connect + e.read + e.write + e.status + e.timeout,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
