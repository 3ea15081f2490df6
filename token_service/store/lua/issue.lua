-- Check the buckets, then start a refresh-token family at generation 0 (design 2.4).
-- KEYS: buckets..., identity record, [active-identities HyperLogLog], logout maps (sub, sid)...
-- ARGV: n, bucket pairs..., family id, identity, role, issuer, sub, principal digest, IdP session
--       digest, browser session digest, idle s, absolute s, confirmed at (0: now, a sign-in),
--       identity tag, 1 when the HyperLogLog key is given else 0.
-- A sign-in makes its role the identity's current role; a browser session's later token (confirmed
-- at its sign-in) takes the current role when there is one.
local refused, now_ms, states = check_buckets()
if refused then
  return refused
end
local n = tonumber(ARGV[1])
local o = 2 + 2 * n
local record = KEYS[n + 1]
local family_id, identity, role = ARGV[o], ARGV[o + 1], ARGV[o + 2]
local issuer, subject, principal = ARGV[o + 3], ARGV[o + 4], ARGV[o + 5]
local session, browser = ARGV[o + 6], ARGV[o + 7]
local idle, absolute = tonumber(ARGV[o + 8]), tonumber(ARGV[o + 9])
local confirmed_at, tag, has_hll = tonumber(ARGV[o + 10]), ARGV[o + 11], tonumber(ARGV[o + 12])
local now = math.floor(now_ms / 1000)

local current = redis.call('HMGET', record, 'i', 'r', 's')
if current[1] and current[1] ~= identity then
  return redis.error_reply('identity tag collision')
end
local previous = current[2]
local role_now = role
if confirmed_at == 0 then
  redis.call('HSET', record, 'i', identity, 'r', role, 'rc', now)
elseif previous then
  role_now = previous
else
  redis.call('HSET', record, 'i', identity, 'r', role, 'rc', confirmed_at)
end

-- Once the record holds more than a few fields: forget ended families (and subjects no family names),
-- and keep at most MAX_FAMILIES live ones, ending the least recently used (a device that has not
-- refreshed the longest signs in again). The cap bounds this scan and the record, whoever signs in.
-- The scan is amortized: it runs when the record has grown by SCAN_EVERY fields since the last one
-- ('s' holds the size it left), or when the record is large enough to hold MAX_FAMILIES live ones.
local MAX_FAMILIES, SCAN_EVERY = 64, 8
local size = redis.call('HLEN', record)
local scanned_size = tonumber(current[3] or '0')
if size > 12 and (size >= scanned_size + SCAN_EVERY or size >= MAX_FAMILIES + 4) then
  local all = redis.call('HGETALL', record)
  local gone, named, live = {}, {}, {}
  for i = 1, #all, 2 do
    if is_family(all[i]) then
      local fields = split(all[i + 1])
      if family_end(fields, idle, absolute) <= now then
        gone[#gone + 1] = all[i]
      else
        named['p:' .. fields[5]] = true  -- live or tombstone: the principal is the 5th field
        if fields[1] ~= 'x' then
          live[#live + 1] = {all[i], tonumber(fields[3])}
        end
      end
    end
  end
  if #live >= MAX_FAMILIES then
    table.sort(live, function(a, b) return a[2] < b[2] end)
    for k = 1, #live - MAX_FAMILIES + 1 do
      gone[#gone + 1] = live[k][1]
    end
  end
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'p:' and not named[all[i]] then
      gone[#gone + 1] = all[i]
    end
  end
  if #gone > 0 then
    redis.call('HDEL', record, unpack(gone))
  end
  redis.call('HSET', record, 's', size - #gone + (current[3] and 0 or 1))  -- counting 's' itself
end

redis.call('HSET', record, 'p:' .. principal, issuer .. '\t' .. subject,
  family_id, family_value(0, now, now, role_now, principal, session, browser))
local expires = now + math.min(idle, absolute)
keep_until(record, expires)
if has_hll == 1 then
  count_active(KEYS[n + 2], tag)
end
for i = n + 2 + has_hll, #KEYS do
  add_tag(KEYS[i], tag, absolute * 1000)
end
local changed = ''
if previous and previous ~= role_now then
  changed = previous
end
return {'ok', 0, states, role_now, expires, changed}
