-- end_shard: checkpoint SHARD_END, fenced by the token; children whose parents have all ended
-- become acquirable at once.
-- KEYS[1] lease   KEYS[2] free zset   KEYS[3] owned zset   KEYS[4] ended zset   KEYS[5] held set
-- KEYS[6..] for each child, in the order of ARGV[4]: the child's lease key, then the lease keys of
--           its other parents (ARGV[6..] says how many each child has)
-- ARGV[1] worker id   ARGV[2] token   ARGV[3] shard id
-- ARGV[4] the children the caller read, comma-separated   ARGV[5] wake-up channel
-- ARGV[6..] other-parent count per child
-- Returns {'ok', children made ready (comma-separated)}, {'lost', reason}, or {'retry', why} when
-- the children changed since the caller read them (read again and call again).
-- Idempotent: a second call with the same owner and token (a retry after a lost reply) answers
-- {'ok', ''} and changes nothing.
local now = now_ms()
local done = redis.call('HMGET', KEYS[1], 'state', 'last_owner', 'token')
if done[1] == 'ended' and done[2] == ARGV[1] and done[3] == ARGV[2] then return {'ok', ''} end
local why = fence(KEYS[1], ARGV[1], ARGV[2], now)
if why then return {'lost', why} end
if redis.call('HGET', KEYS[1], 'children') ~= ARGV[4] then return {'retry', 'children changed'} end
redis.call('HSET', KEYS[1], 'state', 'ended', 'checkpoint', 'SHARD_END', 'checkpoint_ms', now,
           'ended_ms', now, 'owner', '', 'expires_ms', 0, 'switches', 0, 'offered_to', '', 'offered_ms', 0)
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], now, ARGV[3])
redis.call('SREM', KEYS[5], ARGV[3])
local ready = {}
local k = 6
for i, child in ipairs(split(ARGV[4])) do
  local others = tonumber(ARGV[5 + i])
  local f = redis.call('HMGET', KEYS[k], 'state', 'order')
  local blocked = false
  for j = 1, others do
    local pstate = redis.call('HGET', KEYS[k + j], 'state')
    if pstate and pstate ~= 'ended' then blocked = true end
  end
  if f[1] == 'blocked' and not blocked then
    redis.call('HSET', KEYS[k], 'state', 'ready')
    redis.call('ZADD', KEYS[2], f[2], child)
    ready[#ready + 1] = child
  end
  k = k + 1 + others
end
if #ready > 0 then redis.call('PUBLISH', ARGV[5], table.concat(ready, ',')) end
return {'ok', table.concat(ready, ',')}
