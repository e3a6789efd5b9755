-- snapshot_renew: renew a worker's segment leases (and the expiry of their pages in flight).
-- KEYS: as in snapshot_start.lua
-- ARGV[1] worker id   ARGV[2] lease ttl (ms)   ARGV[3..] segment, token, segment, token, ...
-- Returns the segments no longer held (expired, taken, finished or restarted): their scanners stop.
local now = now_ms()
local lost = {}
local expires = now + tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local seg, token = ARGV[i], ARGV[i + 1]
  local exp = redis.call('ZSCORE', KEYS[5], seg)
  if redis.call('HGET', KEYS[6], seg) ~= ARGV[1] .. '|' .. token or not exp or tonumber(exp) <= now then
    lost[#lost + 1] = seg
  else
    redis.call('ZADD', KEYS[5], expires, seg)
    if redis.call('ZSCORE', KEYS[9], seg) then redis.call('ZADD', KEYS[9], expires, seg) end
  end
end
return lost
