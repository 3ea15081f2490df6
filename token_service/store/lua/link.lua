-- Add a member to an index set and keep the set at least ttl seconds. KEYS: set. ARGV: member, ttl s.
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
