-- Check the buckets, then end the family a token of any of its generations belongs to (RFC 7009).
-- KEYS: buckets..., identity record. ARGV: n, bucket pairs..., family id, generation, idle s, absolute s.
-- Reply: {'revoked' | 'already' | 'unknown', retry, states, identity, role, "issuer<TAB>sub"}
local refused, now_ms, states = check_buckets()
if refused then
  return refused
end
local n = tonumber(ARGV[1])
local o = 2 + 2 * n
local record = KEYS[n + 1]
local family_id, presented = ARGV[o], tonumber(ARGV[o + 1])
local idle, absolute = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
local now = math.floor(now_ms / 1000)
local got = redis.call('HMGET', record, family_id, 'i')
if not got[1] then
  return {'unknown', 0, states}
end
local fields = split(got[1])
if fields[1] == 'x' then
  return {'already', 0, states, got[2], fields[4], principal_of(record, fields[5])}
end
local ends = family_end(fields, idle, absolute)
if ends <= now then
  redis.call('HDEL', record, family_id)
  return {'unknown', 0, states}
end
if presented > tonumber(fields[1]) then
  return {'unknown', 0, states}
end
tombstone(record, family_id, ends, 'revoke', fields[4], fields[5])
return {'revoked', 0, states, got[2], fields[4], principal_of(record, fields[5])}
