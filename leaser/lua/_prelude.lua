-- Shared by every script (prepended when the script is loaded).
-- now_ms(): Redis server time in milliseconds; no worker clock is ever trusted.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- next_token(counter): draw a fencing token from the group's counter key: max(counter + 1, Redis server
-- time in microseconds), which becomes the counter's value.  Tokens grow by at least 1 per draw; after a
-- failover to a replica that missed the last draws, or a restart that lost the counter, they jump to the
-- server clock, above every token issued before (this assumes the new server's clock is not behind the old
-- one's by more than the failover or restart took; see docs/lease-protocol.md).  Draws faster than one per
-- microsecond only push the counter ahead of the clock, and it keeps counting up from there.  Only INCR and
-- INCRBY (a positive step, formatted with %.0f, never tostring's 1.8e+15) touch the counter, so it never
-- decreases.  Microseconds since the epoch (~1.8e15) are exact in Lua's doubles (below 2^53, until 2255);
-- the token is a Lua integer value, so a script returning it gives an integer reply.
local function next_token(counter)
  local token = redis.call('INCR', counter)
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if now_us > token then
    token = redis.call('INCRBY', counter, string.format('%.0f', now_us - token))
  end
  return token
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
