-- checkpoint: record the caller's progress in a shard, fenced by its token.
-- KEYS[1] lease
-- ARGV[1] worker id   ARGV[2] token   ARGV[3] sequence number (decimal digits, at most 40)
-- Returns {'ok', checkpoint} when it moved forward, {'same', checkpoint} when equal,
-- {'behind', checkpoint} when ARGV[3] is lower (nothing changes: a checkpoint never moves back),
-- or {'lost', reason} when the token is stale or the lease expired (nothing changes).
local now = now_ms()
if not string.match(ARGV[3], '^%d+$') or #ARGV[3] > 40 then
  return redis.error_reply('ERR checkpoint must be 1 to 40 decimal digits')
end
local why = fence(KEYS[1], ARGV[1], ARGV[2], now)
if why then return {'lost', why} end
local current = redis.call('HGET', KEYS[1], 'checkpoint')
if current ~= '' then
  local c = seq_cmp(ARGV[3], current)
  if c == 0 then return {'same', current} end
  if c < 0 then return {'behind', current} end
end
redis.call('HSET', KEYS[1], 'checkpoint', ARGV[3], 'checkpoint_ms', now, 'switches', 0)
return {'ok', ARGV[3]}
