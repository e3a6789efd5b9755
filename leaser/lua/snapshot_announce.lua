-- snapshot_announce: a scanner is about to read a page of its segment: draw the page's ticket from the
-- clock and put the page in flight (it expires with the segment's lease).  Stream records whose clock
-- tag is >= this ticket wait until the page leaves (see docs/snapshot.md).
-- KEYS: as in snapshot_start.lua
-- ARGV[1] segment   ARGV[2] worker id   ARGV[3] token   ARGV[4] notice (ms)
-- Returns {'ok', ticket}, {'wait', ms} (the snapshot started less than the notice ago: consumers may still
-- hand over records without asking the gate, see SnapshotStore) or {'lost', reason}.
local now = now_ms()
local seg = ARGV[1]
local exp = redis.call('ZSCORE', KEYS[5], seg)
if redis.call('HGET', KEYS[6], seg) ~= ARGV[2] .. '|' .. ARGV[3] then return {'lost', 'segment not held'} end
if not exp or tonumber(exp) <= now then return {'lost', 'lease expired'} end
local notice_ends = tonumber(redis.call('HGET', KEYS[1], 'started_ms') or '0') + tonumber(ARGV[4])
if now < notice_ends then return {'wait', notice_ends - now} end
local ticket = redis.call('HINCRBY', KEYS[3], 't', 1)
redis.call('ZADD', KEYS[8], ticket, seg)
redis.call('ZADD', KEYS[9], exp, seg)
return {'ok', ticket}
