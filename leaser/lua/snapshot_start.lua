-- snapshot_start: start the group's snapshot unless one runs or finished (ARGV[2] = '1' restarts it).
-- KEYS (every snapshot_* script): 1 state 2 token 3 clock 4 free 5 leases 6 owners 7 checkpoints
--   8 pages 9 page_expiry 10 bucket
-- ARGV[1] segments (1..1000000)   ARGV[2] '1' to restart   ARGV[3] view facts for status (free text)
-- Returns {'started', segments} | {'running', segments} | {'done', segments}.
local now = now_ms()
local status = redis.call('HGET', KEYS[1], 'status')
if status and ARGV[2] ~= '1' then
  return {status, tonumber(redis.call('HGET', KEYS[1], 'segments'))}
end
local n = tonumber(ARGV[1])
local run = redis.call('HINCRBY', KEYS[1], 'run', 1)
-- The clock is never reset (tickets stay comparable with the tags of records read before); the token
-- counter is never reset (tokens of the previous run stay stale).  Pages of the previous run still in
-- flight keep holding the stream until their expiry (their scanners may be inside a handler call): they
-- are kept under a member name the new run's segments cannot take.
local old = redis.call('ZRANGE', KEYS[8], 0, -1, 'WITHSCORES')
for i = 1, #old, 2 do
  local member = old[i]
  if string.sub(member, 1, 4) ~= 'old:' then
    local expiry = redis.call('ZSCORE', KEYS[9], member)
    redis.call('ZREM', KEYS[8], member)
    redis.call('ZREM', KEYS[9], member)
    if expiry then
      redis.call('ZADD', KEYS[8], old[i + 1], 'old:' .. run .. ':' .. member)
      redis.call('ZADD', KEYS[9], expiry, 'old:' .. run .. ':' .. member)
    end
  end
end
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[10])
redis.call('HSET', KEYS[1], 'status', 'running', 'segments', n, 'started_ms', now, 'done_ms', 0,
  'items', 0, 'bytes', 0, 'segments_done', 0, 'pages', 0, 'note', ARGV[3])
local batch = {}
for i = 0, n - 1 do
  batch[#batch + 1] = i
  batch[#batch + 1] = i
  if #batch >= 2000 then
    redis.call('ZADD', KEYS[4], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('ZADD', KEYS[4], unpack(batch)) end
return {'started', n}
