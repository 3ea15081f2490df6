-- End every family of one identity. KEYS: identity index. ARGV: family key prefix, identity.
-- Family keys share the index's hash tag, so this stays in one Redis Cluster slot.
local count = 0
for _, family_id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fam = ARGV[1] .. family_id
  local identity = redis.call('HGET', fam, 'identity')
  if not identity then
    redis.call('SREM', KEYS[1], family_id)
  elseif identity == ARGV[2] then
    if redis.call('HGET', fam, 'revoked') ~= '1' then
      count = count + 1
    end
    redis.call('HSET', fam, 'revoked', '1', 'revoked_reason', 'revoke_identity')
    redis.call('DEL', fam .. ':live')
  end
end
return count
