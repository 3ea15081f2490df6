-- Shared prelude, part 2: an identity's record (design 2.4; store/base.py says what it holds).
-- One hash per identity: 'i' identity, 'r' current role, 'rc' when a sign-in last confirmed it,
-- 'p:<digest>' = "issuer<TAB>sub", 's' its size after the last cleanup scan (issue.lua), and one field
-- per family (its base64url id) holding
--   "<generation> <created s> <last rotation s> <role> <principal> <IdP session> <browser session>"
-- or, once ended, the tombstone "x <until s> <reason> <role> <principal>". Values stay under Redis's
-- 64-byte listpack limit, so a small identity costs one compact key.

local function is_family(field)
  return field ~= 'i' and field ~= 'r' and field ~= 'rc' and field ~= 's' and string.sub(field, 1, 2) ~= 'p:'
end

local function split(value)
  local fields = {}
  for part in string.gmatch(value, '[^ ]+') do
    fields[#fields + 1] = part
  end
  return fields
end

local function family_value(generation, created, last, role, principal, session, browser)
  return table.concat({generation, created, last, role, principal, session, browser}, ' ')
end

local function tombstone(record, family_id, until_s, reason, role, principal)
  redis.call('HSET', record, family_id, table.concat({'x', until_s, reason, role, principal}, ' '))
end

-- When a live family's record ends: its absolute lifetime, or idle time since the last rotation.
local function family_end(fields, idle, absolute)
  if fields[1] == 'x' then
    return tonumber(fields[2])
  end
  return math.min(tonumber(fields[2]) + absolute, tonumber(fields[3]) + idle)
end

-- The record key lives as long as its longest-lived family.
local function keep_until(record, until_s)
  if redis.call('PEXPIRETIME', record) < until_s * 1000 then
    redis.call('PEXPIREAT', record, until_s * 1000)
  end
end

-- "issuer<TAB>sub" of a principal digest ('' when unknown).
local function principal_of(record, principal)
  return redis.call('HGET', record, 'p:' .. principal) or ''
end

-- Billing: count the identity tag as active this month (a HyperLogLog: 12 KB for any number).
local function count_active(key, tag)
  if key and redis.call('PFADD', key, tag) == 1 then
    redis.call('EXPIRE', key, 3456000)
  end
end

-- Back-channel logout finds identities through these maps: "tag tag ..." of the newest few identities a
-- sub or sid reached (usually one), kept as long as a family can live.
local function add_tag(key, tag, ttl_ms)
  local tags = redis.call('GET', key) or ''
  if string.find(' ' .. tags .. ' ', ' ' .. tag .. ' ', 1, true) then
    redis.call('PEXPIRE', key, ttl_ms)
    return
  end
  local kept = split(tags)
  kept[#kept + 1] = tag
  while #kept > 4 do
    table.remove(kept, 1)
  end
  redis.call('SET', key, table.concat(kept, ' '), 'PX', ttl_ms)
end
