-- Check the buckets, then spend the presented generation of a family (design 2.4).
-- The current generation rotates; the one before it, within the retry window of that rotation, gets
-- the same successor again (a client whose answer was lost); any older one is reuse and ends the family.
-- The family mints with the identity's current role.
-- KEYS: buckets..., identity record, [active-identities HyperLogLog].
-- ARGV: n, bucket pairs..., family id, presented generation, idle s, absolute s, retry window s,
--       role max age s (0: none), 1 to end the family on a role change (else it follows), identity tag.
-- Reply: {outcome, retry, states, identity, role, "issuer<TAB>sub", generation to mint, ends at, learned}
local refused, now_ms, states = check_buckets()
if refused then
  return refused
end
local n = tonumber(ARGV[1])
local o = 2 + 2 * n
local record = KEYS[n + 1]
local family_id, presented = ARGV[o], tonumber(ARGV[o + 1])
local idle, absolute, retry_window = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4])
local role_max_age, end_on_change = tonumber(ARGV[o + 5]), ARGV[o + 6] == '1'
local now = math.floor(now_ms / 1000)

local got = redis.call('HMGET', record, family_id, 'i', 'r', 'rc')
if not got[1] then
  return {'unknown', 0, states}
end
local fields = split(got[1])
local identity = got[2]
if fields[1] == 'x' then
  return {'revoked', 0, states, identity, fields[4], principal_of(record, fields[5])}
end
local generation, created, last = tonumber(fields[1]), tonumber(fields[2]), tonumber(fields[3])
local role, principal, session, browser = fields[4], fields[5], fields[6], fields[7]
local ends = family_end(fields, idle, absolute)
if ends <= now then
  redis.call('HDEL', record, family_id)
  return {'unknown', 0, states}
end
local who = principal_of(record, principal)
local outcome
if presented == generation then
  outcome = 'rotated'
elseif presented == generation - 1 and now - last < retry_window then
  outcome = 'retried'
elseif presented < generation then
  tombstone(record, family_id, ends, 'reuse', role, principal)
  return {'reused', 0, states, identity, role, who}
else
  return {'unknown', 0, states}
end
if role_max_age > 0 and now - tonumber(got[4]) >= role_max_age then
  return {'login_required', 0, states, identity, role, who}
end
local learned = ''
if role ~= got[3] then
  if end_on_change then
    tombstone(record, family_id, ends, 'role_change', role, principal)
    return {'role_revoked', 0, states, identity, role, who}
  end
  learned, role = role, got[3]
end
if outcome == 'rotated' then
  generation, last = generation + 1, now
  ends = math.min(created + absolute, now + idle)
end
if outcome == 'rotated' or learned ~= '' then
  redis.call('HSET', record, family_id, family_value(generation, created, last, role, principal, session, browser))
  keep_until(record, ends)
end
count_active(KEYS[n + 2], ARGV[o + 7])
return {outcome, 0, states, identity, role, who, generation, ends, learned}
