-- wrk script for every target of bench/run.py: the same request templates as bench/openloop.c.
--
-- Usage: wrk ... -s bench/load.lua URL -- ITEMS NTHREADS METHOD PATH BODY FIELD LEFTOVER [HEADER...]
-- "{}" in PATH, BODY or a HEADER ("Name: value") is replaced by an item, one a line of ITEMS ("-": no
-- items). BODY "-" sends no body. Thread t takes the lines i with i % NTHREADS == t.
--
-- FIELD "-": the items cycle (ID tokens, identities); the requests are built once, in init().
-- Otherwise each item is used once (a refresh token) and every 200 answer's JSON string member FIELD
-- is queued as a new item: the next token of the family. The token is read, never parsed. A request
-- that finds its thread's queue empty is sent with "starved" in place of the token, so it fails
-- visibly. done() writes the tokens left in the queues to LEFTOVER ("-": nowhere), to be used again.

local counter = 0
local threads = {}

function setup(thread)
  -- runs in the main Lua state once per thread, before that thread's init()
  thread:set("id", counter)
  counter = counter + 1
  threads[#threads + 1] = thread
end

-- per-thread globals (each thread has its own Lua state); done() reads them with thread:get()
failures = 0   -- 200 answers without FIELD, and non-200 answers in chain mode
starved = 0    -- request() found the queue empty
loaded = 0     -- items this thread started with
queue = {}
leftover = "-"  -- init() sets it from the arguments, which only the threads' states receive
local head, tail = 1, 0
local field_start  -- '"FIELD":"'
local requests, index = {}, 1
local head_parts, body_parts

local function split(text)
  local parts, from = {}, 1
  while true do
    local at = string.find(text, "{}", from, true)
    if not at then
      parts[#parts + 1] = string.sub(text, from)
      return parts
    end
    parts[#parts + 1] = string.sub(text, from, at - 1)
    from = at + 2
  end
end

-- Built by hand rather than by wrk.format on each request: wrk shares the cores with the servers.
local function build(item)
  local request = table.concat(head_parts, item)
  if body_parts then
    local body = table.concat(body_parts, item)
    return request .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
  end
  return request .. "\r\n"
end

function init(args)
  local path, nthreads, method, url_path, body, field
  path, nthreads, method, url_path, body, field, leftover = (table.unpack or unpack)(args, 1, 7)
  assert(leftover, "see the usage at the top of load.lua")
  nthreads = tonumber(nthreads)
  local headers = {}
  for i = 8, #args do
    local name, value = string.match(args[i], "^([^:]+):%s*(.*)$")
    headers[name] = value
  end
  -- wrk.format without a body ends the head with an empty line: drop it, build() adds it back
  local template = wrk.format(method, url_path, headers, nil)
  head_parts = split(string.sub(template, 1, #template - 2))
  if body ~= "-" then
    body_parts = split(body)
  elseif method ~= "GET" then
    body_parts = { "" }  -- a POST says its length, even 0
  end
  local items = {}
  if path ~= "-" then
    local file = assert(io.open(path, "r"))
    local line_no = 0
    for line in file:lines() do
      if #line > 0 then
        if line_no % nthreads == id then
          items[#items + 1] = line
        end
        line_no = line_no + 1
      end
    end
    file:close()
  end
  if field ~= "-" then
    field_start = '"' .. field .. '":"'
    for _, item in ipairs(items) do
      tail = tail + 1
      queue[tail] = item
    end
    loaded = tail
  else
    if #items == 0 then items = { "" } end
    for i, item in ipairs(items) do
      requests[i] = build(item)
    end
    index = (id * math.floor(#requests / nthreads)) % #requests + 1
  end
end

function request()
  if not field_start then
    local req = requests[index]
    index = index % #requests + 1
    return req
  end
  if head > tail then
    starved = starved + 1
    return build("starved")
  end
  local token = queue[head]
  queue[head] = nil
  head = head + 1
  return build(token)
end

local QUOTE = '"'

function response(status, _, body)
  if not field_start then
    return
  end
  local last = status == 200 and body and select(2, string.find(body, field_start, 1, true))
  local close = last and string.find(body, QUOTE, last + 1, true)
  if close then
    tail = tail + 1
    queue[tail] = string.sub(body, last + 1, close - 1)
  else
    failures = failures + 1
  end
end

function done()
  local failed, starving, start = 0, 0, 0
  local path = threads[1] and threads[1]:get("leftover")
  for _, thread in ipairs(threads) do
    failed = failed + thread:get("failures")
    starving = starving + thread:get("starved")
    start = start + thread:get("loaded")
  end
  -- one machine-readable line for bench/run.py
  io.write(string.format("bench-load: loaded=%d failures=%d starved=%d\n", start, failed, starving))
  if path and path ~= "-" then
    local out = assert(io.open(path, "w"))
    for _, thread in ipairs(threads) do
      for _, token in pairs(thread:get("queue")) do
        out:write(token, "\n")
      end
    end
    out:close()
  end
end
