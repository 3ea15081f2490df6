-- Add a member to an index set and keep the set at least ttl seconds. KEYS: set. ARGV: member, ttl s.
local ttl_ms = tonumber(ARGV[2]) * 1000
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl_ms then
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
end
return 1
