-- snapshot_claim: take one free segment (segments whose lease expired are freed first).
-- KEYS: as in snapshot_start.lua
-- ARGV[1] worker id   ARGV[2] lease ttl (ms)
-- Returns {segment, token, checkpoint ('' = from the start), the snapshot's segment count} or {} when none is
-- free (or no snapshot runs).  The count is the run's: a restart may have changed it since the worker joined.
local now = now_ms()
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return {} end
local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
for _, seg in ipairs(expired) do
  redis.call('ZREM', KEYS[5], seg)
  redis.call('HDEL', KEYS[6], seg)
  redis.call('ZREM', KEYS[8], seg)
  redis.call('ZREM', KEYS[9], seg)
  redis.call('ZADD', KEYS[4], seg, seg)
end
local first = redis.call('ZRANGE', KEYS[4], 0, 0)
if #first == 0 then return {} end
local seg = first[1]
redis.call('ZREM', KEYS[4], seg)
local token = next_token(KEYS[2])
redis.call('HSET', KEYS[6], seg, ARGV[1] .. '|' .. string.format('%.0f', token))
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), seg)
local checkpoint = redis.call('HGET', KEYS[7], seg) or ''
return {tonumber(seg), token, checkpoint, tonumber(redis.call('HGET', KEYS[1], 'segments'))}
