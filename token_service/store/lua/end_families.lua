-- End an identity's live families that match every given digest ('' matches any): sign-out,
-- back-channel logout, revoke-all. KEYS: identity record.
-- ARGV: principal digest, IdP session digest, browser session digest, reason, tombstone until s,
--       idle s, absolute s. Reply: {identity, {family ids ended}}.
local record = KEYS[1]
local principal, session, browser, reason = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local until_s, idle, absolute = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now = math.floor(now_ms() / 1000)
local all = redis.call('HGETALL', record)
local identity, ended = '', {}
for i = 1, #all, 2 do
  local name = all[i]
  if name == 'i' then
    identity = all[i + 1]
  elseif is_family(name) then
    local fields = split(all[i + 1])
    if fields[1] ~= 'x' and family_end(fields, idle, absolute) > now
        and (principal == '' or fields[5] == principal)
        and (session == '' or fields[6] == session)
        and (browser == '' or fields[7] == browser) then
      tombstone(record, name, until_s, reason, fields[4], fields[5])
      ended[#ended + 1] = name
    end
  end
end
return {identity, ended}
