-- release: give a lease up (graceful shutdown or handoff), fenced by the token.  The caller has
-- already written its final checkpoint.  With a taker, the lease is reserved for that worker
-- for a short while so no third worker snatches it.
-- KEYS[1] lease   KEYS[2] free zset   KEYS[3] owned zset   KEYS[4] held set of the caller
-- KEYS[5] grants zset of the taker (any key of the group when there is none)   KEYS[6] asks of the caller
-- KEYS[7] load hash
-- ARGV[1] worker id   ARGV[2] token   ARGV[3] shard id   ARGV[4] taker ('' for anyone)
-- ARGV[5] reservation (ms)   ARGV[6] wake-up channel
-- Returns {'ok'} or {'lost', reason}.  A lease that expired but was not taken may be released.
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'owner', 'token', 'state', 'order')
if not f[3] then return {'lost', 'unknown shard'} end
if f[3] == 'ended' then return {'lost', 'shard already ended'} end
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return {'lost', 'token is stale'} end
redis.call('HSET', KEYS[1], 'owner', '', 'expires_ms', 0, 'offered_to', '', 'offered_ms', 0)
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[2], f[4], ARGV[3])
redis.call('SREM', KEYS[4], ARGV[3])
if redis.call('HEXISTS', KEYS[7], ARGV[1]) == 1 then redis.call('HINCRBY', KEYS[7], ARGV[1], -1) end
if ARGV[4] ~= '' then
  local until_ms = now + tonumber(ARGV[5])
  redis.call('HSET', KEYS[1], 'reserved_for', ARGV[4], 'reserved_until_ms', until_ms)
  redis.call('ZADD', KEYS[5], until_ms, ARGV[3])
  redis.call('PEXPIRE', KEYS[5], tonumber(ARGV[5]) * 2)
  if redis.call('HINCRBY', KEYS[6], ARGV[4], -1) <= 0 then redis.call('HDEL', KEYS[6], ARGV[4]) end
end
redis.call('PUBLISH', ARGV[6], ARGV[3])
return {'ok'}
