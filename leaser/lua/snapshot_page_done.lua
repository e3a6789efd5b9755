-- snapshot_page_done: a page was handed to the handler in full: move the segment's checkpoint, count it,
-- take the page out of flight; at the segment's end mark it done (and the snapshot, after its last).
-- KEYS: as in snapshot_start.lua
-- ARGV[1] segment   ARGV[2] worker id   ARGV[3] token   ARGV[4] ticket
-- ARGV[5] the next ExclusiveStartKey as JSON, or '' at the segment's end   ARGV[6] items   ARGV[7] bytes
-- Returns {'ok'} | {'segment_done'} | {'snapshot_done'} | {'lost', reason} (nothing changes).
local now = now_ms()
local seg = ARGV[1]
local exp = redis.call('ZSCORE', KEYS[5], seg)
if redis.call('HGET', KEYS[6], seg) ~= ARGV[2] .. '|' .. ARGV[3] then return {'lost', 'segment not held'} end
if not exp or tonumber(exp) <= now then return {'lost', 'lease expired'} end
if redis.call('ZSCORE', KEYS[8], seg) ~= ARGV[4] then return {'lost', 'page no longer in flight'} end
redis.call('ZREM', KEYS[8], seg)
redis.call('ZREM', KEYS[9], seg)
redis.call('HINCRBY', KEYS[1], 'items', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'bytes', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'pages', 1)
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[7], seg, ARGV[5])
  return {'ok'}
end
redis.call('HSET', KEYS[7], seg, 'END')
redis.call('ZREM', KEYS[5], seg)
redis.call('HDEL', KEYS[6], seg)
local done = redis.call('HINCRBY', KEYS[1], 'segments_done', 1)
if done >= tonumber(redis.call('HGET', KEYS[1], 'segments')) then
  redis.call('HSET', KEYS[1], 'status', 'done', 'done_ms', now)
  return {'snapshot_done'}
end
return {'segment_done'}
