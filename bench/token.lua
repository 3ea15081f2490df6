-- wrk script for POST /v1/token (run by bench/run.py).
--
-- Usage: wrk ... -s bench/token.lua URL -- POOL_FILE NTHREADS
-- POOL_FILE holds one pre-minted ID token per line, each for a distinct user. Every wrk thread
-- cycles the whole pool from its own starting point, so no single identity is hot and the
-- identity rate-limit buckets spread over the pool. The requests are built once in init(), so
-- the client spends its CPU on sending, not on formatting.

local counter = 0

function setup(thread)
  -- runs in the main Lua state once per thread, before that thread's init()
  thread:set("id", counter)
  counter = counter + 1
end

local requests = {}
local index = 1

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  assert(path and nthreads, "usage: -- POOL_FILE NTHREADS")
  local file = assert(io.open(path, "r"))
  for line in file:lines() do
    if #line > 0 then
      -- the empty body still sends Content-Length: 0, as a real client's POST would
      requests[#requests + 1] = wrk.format("POST", "/v1/token", { ["Authorization"] = "Bearer " .. line }, "")
    end
  end
  file:close()
  assert(#requests > 0, "the token pool " .. path .. " is empty")
  index = (id * math.floor(#requests / nthreads)) % #requests + 1
end

function request()
  local req = requests[index]
  index = index % #requests + 1
  return req
end
