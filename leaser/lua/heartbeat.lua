-- heartbeat: one round trip per worker per renew interval.  Renews the caller's membership and
-- every lease it names, prunes dead members, and reports what the balancer needs.
-- KEYS[1] members zset   KEYS[2] load hash   KEYS[3] free zset   KEYS[4] owned zset
-- KEYS[5] asks hash of the caller   KEYS[6] grants zset of the caller   KEYS[7] held set of the caller
-- KEYS[8] meta hash   KEYS[9] leader hash   KEYS[10] token counter
-- KEYS[11..] lease keys the caller believes it holds
-- ARGV[1] worker id   ARGV[2] lease ttl (ms)   ARGV[3] member ttl (ms)
-- ARGV[4] 1 to stay a member (and run for leader), 0 to leave (and resign the leadership)
-- ARGV[5..] the caller's token for each lease in KEYS[11..], in order
-- Returns {now, lost, members, ready, free, expired, asks, grants, created_ms, leader, leader_token,
--          unclaimed}:
--   lost: flat list of shard id, reason;  members: flat list of worker id, load (leases renewed);
--   ready: leases not ended whose parents have ended;  free / expired: how many of them can be
--   taken now;  asks: flat list of taker, count;  grants: shard ids handed to the caller;
--   created_ms: when the group's state was first written (changes if Redis lost it);
--   leader: the worker holding the leader lease (the caller takes it when it is free or expired);
--   unclaimed: shards in the caller's held index that it did not name (an acquire whose reply was
--   lost: the caller reclaims them with a new token; empty when leaving).
local now = now_ms()
local me, ttl, member_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local lost, kept, named = {}, 0, {}
for i = 11, #KEYS do
  named[string.match(KEYS[i], ':lease:(.*)$')] = true
  local token = ARGV[i - 6]
  local f = redis.call('HMGET', KEYS[i], 'shard', 'owner', 'token', 'expires_ms', 'state')
  local why = nil
  if not f[1] then why = 'unknown shard'
  elseif f[5] == 'ended' then why = 'shard ended'
  elseif f[2] ~= me then why = 'taken by ' .. (f[2] == '' and 'nobody' or f[2])
  elseif f[3] ~= token then why = 'token is stale'
  elseif tonumber(f[4]) <= now then why = 'expired'
  end
  if why then
    local shard = f[1] or string.match(KEYS[i], ':lease:(.*)$')
    lost[#lost + 1] = shard
    lost[#lost + 1] = why
    redis.call('SREM', KEYS[7], shard)  -- the caller forgets it: so does its index
  else
    redis.call('HSET', KEYS[i], 'expires_ms', now + ttl)
    redis.call('ZADD', KEYS[4], now + ttl, f[1])
    kept = kept + 1
  end
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(dead))
end
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], now + member_ttl, me)
  redis.call('HSET', KEYS[2], me, kept)
  redis.call('PEXPIRE', KEYS[7], member_ttl * 4)
else
  redis.call('ZREM', KEYS[1], me)
  redis.call('HDEL', KEYS[2], me)
end
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local members = {}
if #ids > 0 then
  local loads = redis.call('HMGET', KEYS[2], unpack(ids))
  for i, id in ipairs(ids) do
    members[#members + 1] = id
    members[#members + 1] = loads[i] or '0'
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
local free = redis.call('ZCARD', KEYS[3])
local owned = redis.call('ZCARD', KEYS[4])
local expired = redis.call('ZCOUNT', KEYS[4], '-inf', now)
redis.call('HSETNX', KEYS[8], 'created_ms', now)
local lf = redis.call('HMGET', KEYS[9], 'owner', 'token', 'expires_ms')
local leader, leader_token = lf[1] or '', tonumber(lf[2] or 0)
local leader_alive = leader ~= '' and tonumber(lf[3]) > now
if ARGV[4] == '1' then
  if leader == me and leader_alive then
    redis.call('HSET', KEYS[9], 'expires_ms', now + ttl)
  elseif not leader_alive then
    leader, leader_token = me, next_token(KEYS[10])
    redis.call('HSET', KEYS[9], 'owner', me, 'token', leader_token, 'expires_ms', now + ttl)
  end
elseif leader == me then
  redis.call('DEL', KEYS[9])
  leader, leader_token = '', 0
end
if not leader_alive and leader ~= me then leader = '' end
local unclaimed = {}
if ARGV[4] == '1' then
  for _, shard in ipairs(redis.call('SMEMBERS', KEYS[7])) do
    if not named[shard] then unclaimed[#unclaimed + 1] = shard end
  end
end
return {now, lost, members, free + owned, free, expired,
        redis.call('HGETALL', KEYS[5]), redis.call('ZRANGE', KEYS[6], 0, -1),
        redis.call('HGET', KEYS[8], 'created_ms'), leader, leader_token, unclaimed}
