-- End one family by id (logout). KEYS: family hash, live set. ARGV: reason.
-- Returns 1 when the family was live, 0 when it was unknown or already revoked.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local was_live = redis.call('HGET', KEYS[1], 'revoked') ~= '1'
redis.call('HSET', KEYS[1], 'revoked', '1', 'revoked_reason', ARGV[1])
redis.call('DEL', KEYS[2])
return was_live and 1 or 0
