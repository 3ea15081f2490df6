-- Count one request against the buckets. Returns {outcome, retry_after, states}.
local refused, _, states = check_buckets()
return refused or {'ok', 0, states}
