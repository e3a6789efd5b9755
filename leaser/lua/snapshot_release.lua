-- snapshot_release: give a segment back (shutdown, or its page abandoned): the page in flight, if any,
-- leaves the flight set; the segment is free again from its checkpoint.
-- KEYS: as in snapshot_start.lua
-- ARGV[1] segment   ARGV[2] worker id   ARGV[3] token   ARGV[4] '1' to keep the lease (abandon the page only)
-- Returns 'ok' or 'lost'.
local seg = ARGV[1]
if redis.call('HGET', KEYS[6], seg) ~= ARGV[2] .. '|' .. ARGV[3] then return 'lost' end
redis.call('ZREM', KEYS[8], seg)
redis.call('ZREM', KEYS[9], seg)
if ARGV[4] ~= '1' then
  redis.call('ZREM', KEYS[5], seg)
  redis.call('HDEL', KEYS[6], seg)
  redis.call('ZADD', KEYS[4], seg, seg)
end
return 'ok'
