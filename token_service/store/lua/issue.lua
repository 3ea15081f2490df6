-- Check the buckets, then store a new refresh-token family (design 2.4).
-- KEYS: buckets..., family hash, live set, identity index, [active-identities HyperLogLog].
-- ARGV: n, bucket pairs..., family id, token digest, idle s, absolute s, identity tag,
--       field/value pairs...
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
local fields = {}
for i = o + 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', fam, 'abs_exp', fmt(abs_exp), 'revoked', '0', unpack(fields))
redis.call('SADD', live, digest)
redis.call('PEXPIREAT', fam, fmt(expires))
redis.call('PEXPIREAT', live, fmt(expires))
redis.call('SADD', idx, family_id)
if redis.call('PTTL', idx) < absolute then
  redis.call('PEXPIRE', idx, fmt(absolute))
end
count_active(KEYS[n + 4], ARGV[o + 4])
return {'ok', 0, states, {}, math.floor(expires / 1000)}
