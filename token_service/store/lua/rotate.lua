-- Check the buckets, then spend the presented refresh token and make the new one live.
-- A spent token presented again outside the grace window revokes the whole family.
-- KEYS: buckets..., family hash, live set, used zset (digest -> ms when spent),
--       [active-identities HyperLogLog].
-- ARGV: n, bucket pairs..., presented digest, new digest, idle s, grace s, max used digests,
--       identity tag.
local refused, now, states = check_buckets()
if refused then
  return refused
end
local n = tonumber(ARGV[1])
local fam, live, used = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
local o = 2 + 2 * n
local presented, new_digest = ARGV[o], ARGV[o + 1]
local idle, grace, max_used = tonumber(ARGV[o + 2]) * 1000, tonumber(ARGV[o + 3]) * 1000, tonumber(ARGV[o + 4])
local fields = redis.call('HMGET', fam, 'meta', 'revoked', 'abs_exp')
local info = fields[1]
if not info then
  return {'unknown', 0, states}
end
if fields[2] == '1' then
  return {'revoked', 0, states, info}
end
local outcome = 'rotated'
if redis.call('SREM', live, presented) == 1 then
  redis.call('ZADD', used, now, presented)
  local extra = redis.call('ZCARD', used) - max_used
  if extra > 0 then
    redis.call('ZREMRANGEBYRANK', used, 0, extra - 1)
  end
else
  local spent = redis.call('ZSCORE', used, presented)
  if not spent then
    return {'unknown', 0, states}
  end
  if grace == 0 or now - tonumber(spent) >= grace then
    redis.call('HSET', fam, 'revoked', '1', 'revoked_reason', 'reuse')
    redis.call('DEL', live)
    return {'reused', 0, states, info}
  end
  outcome = 'grace'
end
redis.call('SADD', live, new_digest)
local expires = math.min(tonumber(fields[3]), now + idle)
redis.call('PEXPIREAT', fam, expires)
redis.call('PEXPIREAT', live, expires)
redis.call('PEXPIREAT', used, expires)
count_active(KEYS[n + 4], ARGV[o + 5])
return {outcome, 0, states, info, math.floor(expires / 1000)}
