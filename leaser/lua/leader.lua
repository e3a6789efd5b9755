-- leader: take or keep the group's leader lease (the one worker that lists shards).
-- KEYS[1] leader hash   KEYS[2] token counter
-- ARGV[1] worker id   ARGV[2] ttl (ms); 0 resigns if the caller leads
-- Returns {owner, token, expires_ms}; the caller leads when owner equals its id.
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'owner', 'token', 'expires_ms')
local ttl = tonumber(ARGV[2])
if ttl == 0 then
  if f[1] == ARGV[1] then redis.call('DEL', KEYS[1]) return {'', 0, 0} end
  return {f[1] or '', f[2] or 0, f[3] or 0}
end
if f[1] == ARGV[1] and tonumber(f[3]) > now then
  redis.call('HSET', KEYS[1], 'expires_ms', now + ttl)
  return {f[1], f[2], now + ttl}
end
if f[1] and f[1] ~= '' and tonumber(f[3]) > now then return {f[1], f[2], f[3]} end
local token = next_token(KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token, 'expires_ms', now + ttl)
return {ARGV[1], token, now + ttl}
