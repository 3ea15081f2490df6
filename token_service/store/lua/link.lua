-- Add a member to an index set and keep the set at least ttl seconds. KEYS: set. ARGV: member, ttl s.
keep_member(KEYS[1], ARGV[1], tonumber(ARGV[2]) * 1000)
return 1
