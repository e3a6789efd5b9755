-- Shared by every script (prepended when the script is loaded).
-- now_ms(): Redis server time in milliseconds; no worker clock is ever trusted.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- seq_cmp(a, b): compare two sequence numbers (decimal strings of up to 40 digits) as integers.
-- Returns -1, 0 or 1.  '' (no checkpoint) sorts before every number.
local function seq_cmp(a, b)
  a = string.gsub(a, '^0+', '')
  b = string.gsub(b, '^0+', '')
  if #a ~= #b then
    if #a < #b then return -1 else return 1 end
  end
  if a == b then return 0 end
  if a < b then return -1 else return 1 end
end

-- split(csv): 'a,b' -> {'a', 'b'}; '' -> {}
local function split(csv)
  local out = {}
  if csv == nil or csv == '' then return out end
  for part in string.gmatch(csv, '[^,]+') do out[#out + 1] = part end
  return out
end

-- fenced(lease, worker, token, now): why a fenced write by (worker, token) must be refused, or nil.
local function fence(lease, worker, token, now)
  local f = redis.call('HMGET', lease, 'owner', 'token', 'expires_ms', 'state')
  if f[4] == false then return 'unknown shard' end
  if f[4] == 'ended' then return 'shard already ended' end
  if f[1] ~= worker then return 'owned by ' .. (f[1] == '' and 'nobody' or f[1]) end
  if f[2] ~= token then return 'token ' .. token .. ' is stale; current token is ' .. f[2] end
  if tonumber(f[3]) <= now then return 'lease expired' end
  return nil
end
