-- cleanup: delete one ended lease once it is safe, leaving a tombstone so a later listing that
-- still shows the shard cannot register it again (that would replay its records).
-- Safe means: ended at least ARGV[1] ms ago, and every child has progressed past its start
-- (checkpointed or ended, or itself already cleaned up).  A shard with no known children waits
-- ARGV[2] ms (past the stream's retention, after which no listing shows it).
-- KEYS[1] lease   KEYS[2] shards zset   KEYS[3] ended zset   KEYS[4] tombstones zset
-- KEYS[5..] the children's lease keys, in the order of ARGV[4]
-- ARGV[1] retention (ms)   ARGV[2] retention without children (ms)   ARGV[3] shard id
-- ARGV[4] children the caller read, comma-separated
-- Returns {'deleted'}, {'kept', why} or {'retry', why}.
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'state', 'ended_ms', 'children')
if not f[1] then return {'kept', 'unknown shard'} end
if f[1] ~= 'ended' then return {'kept', 'not ended'} end
if f[3] ~= ARGV[4] then return {'retry', 'children changed'} end
local wait = tonumber(ARGV[1])
if #KEYS == 4 then wait = tonumber(ARGV[2]) end
if tonumber(f[2]) + wait > now then return {'kept', 'retention not over'} end
for i = 5, #KEYS do
  local c = redis.call('HMGET', KEYS[i], 'state', 'checkpoint')
  if c[1] and c[2] == '' then return {'kept', 'a child has not started'} end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], now, ARGV[3])
return {'deleted'}
