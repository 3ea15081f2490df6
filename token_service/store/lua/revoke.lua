-- Check the buckets, then end the family the presented token belongs to (RFC 7009).
-- KEYS: buckets..., family hash, live set, used zset. ARGV: n, bucket pairs..., presented digest.
local refused, now, states = check_buckets()
if refused then
  return refused
end
local n = tonumber(ARGV[1])
local fam, live, used = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
local presented = ARGV[2 + 2 * n]
local fields = redis.call('HMGET', fam, 'meta', 'revoked')
local info = fields[1]
if not info then
  return {'unknown', 0, states}
end
if redis.call('SISMEMBER', live, presented) == 0 and not redis.call('ZSCORE', used, presented) then
  return {'unknown', 0, states}
end
local outcome = fields[2] == '1' and 'already' or 'revoked'
redis.call('HSET', fam, 'revoked', '1', 'revoked_reason', 'revoke')
redis.call('DEL', live)
return {outcome, 0, states, info}
