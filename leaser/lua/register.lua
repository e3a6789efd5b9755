-- register: add one shard with its lineage.  Idempotent: a registered shard keeps its state.
-- KEYS[1] lease   KEYS[2] shards zset   KEYS[3] free zset   KEYS[4] tombstones zset   KEYS[5] meta
-- KEYS[6..] the lease keys of the shard's parents, in the order of ARGV[3]
-- ARGV[1] shard id   ARGV[2] order score   ARGV[3] parent ids, comma-separated ('' for none)
-- ARGV[4] where a shard without a checkpoint starts: 'beginning' (it was created after the group
--         started: read all of it), 'initial' (the group's initial position), or 'auto': 'initial'
--         until the group's first complete listing was marked (meta 'listed_ms'), 'beginning' after
-- Returns 'exists', 'tombstoned', 'ready' (acquirable now) or 'blocked' (a parent has not ended).
-- A parent that is not registered counts as ended: it was trimmed past the stream's retention.
local now = now_ms()
redis.call('HSETNX', KEYS[5], 'created_ms', now)
if redis.call('ZSCORE', KEYS[4], ARGV[1]) then return 'tombstoned' end
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
local start = ARGV[4]
if start == 'auto' then
  if redis.call('HEXISTS', KEYS[5], 'listed_ms') == 1 then start = 'beginning' else start = 'initial' end
end
local state = 'ready'
for i = 6, #KEYS do
  local pstate = redis.call('HGET', KEYS[i], 'state')
  if pstate then
    if pstate ~= 'ended' then state = 'blocked' end
    local children = redis.call('HGET', KEYS[i], 'children')
    if children == '' then children = ARGV[1] else children = children .. ',' .. ARGV[1] end
    redis.call('HSET', KEYS[i], 'children', children)
  end
end
redis.call('HSET', KEYS[1],
  'shard', ARGV[1], 'parents', ARGV[3], 'children', '', 'order', ARGV[2], 'state', state,
  'owner', '', 'last_owner', '', 'token', 0, 'expires_ms', 0, 'checkpoint', '', 'switches', 0,
  'reserved_for', '', 'reserved_until_ms', 0, 'offered_to', '', 'start', start,
  'created_ms', now, 'acquired_ms', 0, 'checkpoint_ms', 0, 'ended_ms', 0)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if state == 'ready' then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1]) end
return state
