-- wrk script for POST /v1/token/refresh (run by bench/run.py).
--
-- Usage: wrk ... -s bench/refresh.lua URL -- TOKENS_FILE NTHREADS
-- TOKENS_FILE holds one live refresh token per line (each from its own /v1/token call). A
-- refresh token may be presented exactly once: presenting a spent one revokes its whole family.
-- So each wrk thread keeps a queue of live tokens (its share of the file: line i goes to thread
-- i % NTHREADS): request() pops one and response() pushes the new token the service answered
-- with. The file must hold at least as many tokens as there are connections, or requests starve.
-- A starved request is sent with a dummy token so that it fails visibly (non-2xx).

local counter = 0
local threads = {}

function setup(thread)
  -- runs in the main Lua state once per thread, before that thread's init()
  thread:set("id", counter)
  counter = counter + 1
  threads[#threads + 1] = thread
end

-- per-thread globals (each thread has its own Lua state); done() reads them with thread:get()
failures = 0   -- responses that were not 200 or carried no refresh_token
starved = 0    -- request() found the queue empty
loaded = 0     -- tokens this thread started with

local queue, head, tail = {}, 1, 0
local headers = { ["Content-Type"] = "application/json" }
local TOKEN_CHARS = 84  -- "rt2." and 80 base64url characters
-- Every token has the same length, so every request the same bytes around it: built once in
-- init() (wrk.format on each request would spend the client's CPU, which shares the cores).
local before, after

local function push(token)
  tail = tail + 1
  queue[tail] = token
end

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  assert(path and nthreads, "usage: -- TOKENS_FILE NTHREADS")
  local file = assert(io.open(path, "r"))
  local line_no = 0
  for line in file:lines() do
    if #line > 0 then
      if line_no % nthreads == id then
        push(line)
      end
      line_no = line_no + 1
    end
  end
  file:close()
  loaded = tail
  local placeholder = string.rep("x", TOKEN_CHARS)
  local template = wrk.format("POST", "/v1/token/refresh", headers, '{"refresh_token":"' .. placeholder .. '"}')
  local at = string.find(template, placeholder, 1, true)
  before, after = string.sub(template, 1, at - 1), string.sub(template, at + TOKEN_CHARS)
end

function request()
  if head > tail then
    starved = starved + 1
    return wrk.format("POST", "/v1/token/refresh", headers, '{"refresh_token":"starved"}')
  end
  local token = queue[head]
  queue[head] = nil
  head = head + 1
  return before .. token .. after
end

-- The service writes compact JSON, so the token follows this literal; a plain find (memchr, no
-- pattern) keeps the client's CPU per response low: wrk shares the cores with the servers.
local FIELD = '"refresh_token":"'

local QUOTE = string.byte('"')

function response(status, _, body)
  local last = status == 200 and body and select(2, string.find(body, FIELD, 1, true))
  -- a whole token is followed by the closing quote (a cut-short body has none there)
  local token = last and string.byte(body, last + TOKEN_CHARS + 1) == QUOTE
    and string.sub(body, last + 1, last + TOKEN_CHARS)
  if token then
    push(token)
  else
    failures = failures + 1
  end
end

function done()
  local failed, starving, start = 0, 0, 0
  for _, thread in ipairs(threads) do
    failed = failed + thread:get("failures")
    starving = starving + thread:get("starved")
    start = start + thread:get("loaded")
  end
  -- one machine-readable line for bench/run.py
  io.write(string.format("bench-refresh: loaded=%d failures=%d starved=%d\n", start, failed, starving))
end
