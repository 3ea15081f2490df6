-- Shared prelude of every script: server time and GCRA buckets (twin of store/gcra.py).
-- Buckets are KEYS[1..n]; ARGV[1] = n, then (limit, window seconds) pairs in ARGV[2 .. 1+2n].
-- All buckets are checked first; they are written only when every one allows the request.

-- Numbers go to redis.call() as Lua numbers: Redis writes each one with 17 significant digits, which
-- round-trips the double exactly, and skips a string.format per argument. A bucket's value (its TAT,
-- in ms) is not rounded: a request spends window / limit, a fraction of a ms above 1,000 per second.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function limit(n, now)
  local allowed, retry, states, tats = true, 0, {}, {}
  if n == 0 then
    return allowed, retry, states
  end
  local stored = redis.call('MGET', unpack(KEYS, 1, n))  -- one call for every bucket
  for i = 1, n do
    local lim = tonumber(ARGV[2 * i])
    local window = tonumber(ARGV[2 * i + 1]) * 1000
    local interval = window / lim
    local base = math.max(stored[i] and tonumber(stored[i]) or now, now)
    local new_tat = base + interval
    local allow_at = new_tat - window
    if now < allow_at then
      allowed = false
      retry = math.max(retry, math.max(1, math.ceil((allow_at - now) / 1000)))
      states[#states + 1] = 0
      states[#states + 1] = math.ceil((base - now) / 1000)
    else
      states[#states + 1] = math.min(lim - 1, math.floor((now - allow_at) / interval))
      states[#states + 1] = math.ceil((new_tat - now) / 1000)
    end
    tats[i] = new_tat
  end
  if allowed then
    for i = 1, n do
      redis.call('SET', KEYS[i], tats[i], 'PX', math.ceil(tats[i] - now))
    end
  end
  return allowed, retry, states
end

-- Every request script starts here: returns the 'limited' reply when a bucket refuses, else nil
-- with the server time and the bucket states for the script's own reply.
local function check_buckets()
  local now = now_ms()
  local allowed, retry, states = limit(tonumber(ARGV[1]), now)
  if not allowed then
    return {'limited', retry, states}, now, states
  end
  return nil, now, states
end
