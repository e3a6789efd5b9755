-- acquire: take one lease if it is free, expired, reserved for the caller by a handoff, or
-- already the caller's (a lost reply: the caller acquires it afresh, with a new token).
-- KEYS[1] lease   KEYS[2] free zset   KEYS[3] owned zset   KEYS[4] token counter
-- KEYS[5] held set of the caller   KEYS[6] grants zset of the caller   KEYS[7] load hash
-- ARGV[1] worker id   ARGV[2] lease ttl (ms)   ARGV[3] shard id
-- ARGV[4] victim: '' for a normal acquire; a worker id to take the lease from that live owner
--         (a hard take-over after a handoff timed out: only a lease the owner offered to the caller)
-- ARGV[5] with a victim: the handoff timeout (ms) the offer must be older than
-- Returns {'ok', token, checkpoint, previous owner, how, start, skip_before_ms} with how in
-- free|expired|handoff|takeover|reclaimed, start as registered (initial|beginning) and skip_before_ms as
-- set by reposition ('0' if never), or {'no', reason}.
-- Each acquisition draws a new token, so tokens only grow, even across a lease deleted and registered
-- again; a reclaimed lease gets a new token too, which fences any write still using the old one.
local now = now_ms()
-- A refused lease is not the caller's: drop it from the caller's held index (only an index) too.
local function refuse(reason)
  redis.call('SREM', KEYS[5], ARGV[3])
  return {'no', reason}
end
local f = redis.call('HMGET', KEYS[1], 'state', 'owner', 'expires_ms', 'reserved_for',
                     'reserved_until_ms', 'checkpoint', 'switches', 'last_owner', 'offered_to', 'start',
                     'offered_ms', 'skip_before_ms')
local state, owner, expires = f[1], f[2], tonumber(f[3])
if not state then return refuse('unknown shard') end
if state == 'blocked' then return refuse('a parent has not ended') end
if state == 'ended' then return refuse('shard ended') end
local how
if ARGV[4] ~= '' then
  if owner ~= ARGV[4] then return refuse('not owned by ' .. ARGV[4]) end
  if f[9] ~= ARGV[1] then return refuse('not offered to ' .. ARGV[1]) end
  if now - tonumber(f[11] or 0) < tonumber(ARGV[5] or 0) then return {'no', 'offered too recently'} end
  how = 'takeover'
elseif owner ~= '' and expires > now then
  if owner ~= ARGV[1] then return refuse('owned by ' .. owner) end
  how = 'reclaimed'
elseif owner ~= '' then
  how = 'expired'
else
  how = 'free'
end
if how ~= 'takeover' and f[4] ~= '' and tonumber(f[5]) > now then
  if f[4] ~= ARGV[1] then return refuse('reserved for ' .. f[4]) end
  how = 'handoff'
end
local token = next_token(KEYS[4])
local expires_ms = now + tonumber(ARGV[2])
local previous = owner
if previous == '' then previous = f[8] end
local switches = tonumber(f[7])
if previous ~= ARGV[1] then switches = switches + 1 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'last_owner', ARGV[1], 'token', token,
           'expires_ms', expires_ms, 'acquired_ms', now, 'switches', switches,
           'reserved_for', '', 'reserved_until_ms', 0, 'offered_to', '', 'offered_ms', 0)
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], expires_ms, ARGV[3])
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('ZREM', KEYS[6], ARGV[3])
if how ~= 'reclaimed' and redis.call('HEXISTS', KEYS[7], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[7], ARGV[1], 1)
end
return {'ok', token, f[6], previous, how, f[10] or '', f[12] or '0'}
