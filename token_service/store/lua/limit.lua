-- Count one request against the buckets. Returns {outcome, retry_after, states}.
local n = tonumber(ARGV[1])
local allowed, retry, states = limit(n, now_ms())
return {allowed and 'ok' or 'limited', retry, states}
