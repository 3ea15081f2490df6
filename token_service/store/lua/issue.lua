-- Check the buckets, then store a new refresh-token family (design 2.4).
-- KEYS: buckets..., family hash, live set, identity index, [active-identities HyperLogLog],
--       logout indexes (IdP session, subject, browser session)...
-- ARGV: n, bucket pairs..., family id, token digest, idle s, absolute s, identity tag, identity,
--       family metadata (JSON), 1 when the HyperLogLog key is given else 0, family reference.
local refused, now, states = check_buckets()
if refused then
  return refused
end
local n = tonumber(ARGV[1])
local fam, live, idx = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
local o = 2 + 2 * n
local family_id, digest = ARGV[o], ARGV[o + 1]
local idle, absolute = tonumber(ARGV[o + 2]) * 1000, tonumber(ARGV[o + 3]) * 1000
local abs_exp = now + absolute
local expires = math.min(abs_exp, now + idle)
redis.call('HSET', fam, 'abs_exp', abs_exp, 'revoked', '0', 'identity', ARGV[o + 5], 'meta', ARGV[o + 6])
redis.call('SADD', live, digest)
redis.call('PEXPIREAT', fam, expires)
redis.call('PEXPIREAT', live, expires)
keep_member(idx, family_id, absolute)
local has_hll = tonumber(ARGV[o + 7])
if has_hll == 1 then
  count_active(KEYS[n + 4], ARGV[o + 4])
end
for i = n + 4 + has_hll, #KEYS do
  keep_member(KEYS[i], ARGV[o + 8], absolute)
end
return {'ok', 0, states, {}, math.floor(expires / 1000)}
