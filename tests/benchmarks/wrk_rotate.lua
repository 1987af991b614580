-- wrk script for the kyc-host benchmarks (driven by bench_wrk.py).
--
-- Usage: wrk ... -s wrk_rotate.lua http://127.0.0.1:PORT -- SPEC.lua
-- SPEC.lua returns a table:
--   method, path, content_type (or nil)
--   items = { {host, authorization-or-""}, ... }   -- rotated over, one per request
--   body_file      : a fixed body for every request (or nil)
--   prefix_file, suffix_file, unique_offset
--                  : when set, each body is prefix .. SERIAL .. suffix, SERIAL being a
--                    number unique over the whole run (threads and requests), so every
--                    request can create a new record (e.g. a new memo).
-- done() prints one line "WRKJSON {...}" with the totals and latency percentiles (us).

local spec
local reqs = {}
local counter = 0
local nitems = 0
local threads = {}
local prefix, suffix

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local function headers(item)
  local h = { ["Host"] = item[1] }
  if item[2] ~= "" then h["Authorization"] = item[2] end
  if spec.content_type then h["Content-Type"] = spec.content_type end
  return h
end

function init(args)
  spec = dofile(args[1])
  nitems = #spec.items
  -- threads start at different places so they do not hit the same tenant in step
  counter = (tid - 1) * 7919
  if spec.prefix_file then
    prefix = read_file(spec.prefix_file)
    suffix = read_file(spec.suffix_file)
  else
    local body = spec.body_file and read_file(spec.body_file) or nil
    for i, item in ipairs(spec.items) do
      reqs[i] = wrk.format(spec.method, spec.path, headers(item), body)
    end
  end
end

function request()
  counter = counter + 1
  local i = counter % nitems + 1
  if prefix then
    local serial = string.format("%.0f", spec.unique_offset + tid * 1e9 + counter)
    return wrk.format(spec.method, spec.path, headers(spec.items[i]), prefix .. serial .. suffix)
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"bytes_read":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
