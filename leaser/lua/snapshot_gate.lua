-- snapshot_gate: a stream consumer's read of the snapshot clock (after a GetRecords call), with the
-- smallest ticket still in flight (pages whose segment lease expired are dropped first).
-- KEYS: as in snapshot_start.lua
-- Returns {clock, smallest ticket in flight or 0, 1 if a snapshot runs else 0}.  Records tagged v may be
-- handed over once no page with a ticket <= v is in flight.
local now = now_ms()
local dead = redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', now)
for _, seg in ipairs(dead) do
  redis.call('ZREM', KEYS[9], seg)
  redis.call('ZREM', KEYS[8], seg)
end
local clock = tonumber(redis.call('HGET', KEYS[3], 't') or '0')
local running = 0
if redis.call('HGET', KEYS[1], 'status') == 'running' then running = 1 end
local first = redis.call('ZRANGE', KEYS[8], 0, 0, 'WITHSCORES')
if #first == 0 then return {clock, 0, running} end
return {clock, tonumber(first[2]), running}
