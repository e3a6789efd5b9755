-- reposition: move shards of the group to new positions in one step (a rewind or an import), fenced.
-- Every shard it sets loses its owner and gets a fresh token, so no write by a consumer that acquired
-- it before this call can land (checkpoint, end_shard, begin, offer and release are refused, the next
-- heartbeat reports it lost); its state is rebuilt from its new checkpoint and its parents' states
-- (a shard set to anything but SHARD_END is ready, or blocked while a parent has not ended).  Children
-- of the shards set that the caller does not set ('keep') are judged again: blocked, and fenced, while a
-- parent is not ended (a re-opened parent); ready once every parent has ended.  The group's epoch counts these changes; the request id makes a retry after a
-- lost reply answer 'done' instead of applying twice.
-- KEYS[1] shards zset   KEYS[2] free zset   KEYS[3] owned zset   KEYS[4] ended zset   KEYS[5] tombstones
-- KEYS[6] token counter   KEYS[7] meta hash   KEYS[8] history hash (meta.history_seq -> JSON)
-- KEYS[9..] per entry, in entry order: its lease key, the held set of the owner the caller read (the
--           lease key again when it read none), then the lease keys of its parents (ARGV parents csv)
-- ARGV[1] request id   ARGV[2] epoch the caller planned from   ARGV[3] the history record: a JSON
-- object with the request id as its member 'request' (a retry after later changes finds it there)
-- ARGV[4] history entries kept   ARGV[5] wake-up channel
-- ARGV[6] number of entries, then 9 values per entry (parents before children):
--   shard id, mode ('set' or 'keep'), owner read ('' for none), children read (csv; for a shard not
--   registered yet, the children to register it with), parents (csv),
--   order, checkpoint ('' none, 1-40 digits, or SHARD_END), start ('beginning' or 'initial'),
--   skip_before_ms (digits, or 'now-<ms>' for this call's Redis time less <ms>)
-- Returns {'ok', epoch, fenced csv}, {'done', epoch} (this request ran already), {'conflict', epoch}
-- (another change moved the epoch since the caller planned: nothing changed), or {'retry', why} (an
-- owner or the children changed since the caller read them: read again; nothing changed).
local now = now_ms()
local meta = redis.call('HMGET', KEYS[7], 'epoch', 'epoch_request')
local epoch = tonumber(meta[1] or 0)
if meta[2] == ARGV[1] then return {'done', epoch} end
if epoch ~= tonumber(ARGV[2]) then
  -- A retry whose first try ran, followed by another change: its history entry names its request.
  local kept = redis.call('HGETALL', KEYS[8])
  for i = 2, #kept, 2 do
    local ok, entry = pcall(cjson.decode, kept[i])
    if ok and type(entry) == 'table' and entry.request == ARGV[1] then return {'done', epoch} end
  end
  return {'conflict', epoch}
end
local entries = {}
local k = 9
for i = 1, tonumber(ARGV[6]) do
  local a = 7 + (i - 1) * 9
  local e = {shard = ARGV[a], mode = ARGV[a + 1], owner = ARGV[a + 2], children = ARGV[a + 3],
             parents = ARGV[a + 4], order = ARGV[a + 5], checkpoint = ARGV[a + 6], start = ARGV[a + 7],
             skip = ARGV[a + 8], lease = KEYS[k], held = KEYS[k + 1], parent_keys = {}}
  local parents = split(e.parents)
  for j = 1, #parents do e.parent_keys[j] = KEYS[k + 1 + j] end
  k = k + 2 + #parents
  local cp = e.checkpoint
  if e.mode == 'set' and cp ~= '' and cp ~= 'SHARD_END' and (not string.match(cp, '^%d+$') or #cp > 40) then
    return redis.error_reply('ERR checkpoint of ' .. e.shard .. ' must be empty, SHARD_END or 1 to 40 digits')
  end
  local f = redis.call('HMGET', e.lease, 'state', 'owner', 'children')
  if f[1] then
    if f[2] ~= e.owner then return {'retry', e.shard .. ' changed owner'} end
    if f[3] ~= e.children then return {'retry', e.shard .. ' has new children'} end
  elseif e.mode == 'keep' or e.owner ~= '' then
    return {'retry', e.shard .. ' is no longer registered'}
  end
  e.exists = f[1] ~= false
  entries[i] = e
end

redis.call('HSETNX', KEYS[7], 'created_ms', now)
epoch = redis.call('HINCRBY', KEYS[7], 'epoch', 1)
redis.call('HSET', KEYS[7], 'epoch_request', ARGV[1])
local fenced, ready = {}, {}

local function parents_ended(e)
  for _, key in ipairs(e.parent_keys) do
    local state = redis.call('HGET', key, 'state')
    if state and state ~= 'ended' then return false end
  end
  return true
end

-- No owner, a fresh token: every fenced write of an earlier acquisition is refused from now on.
local function unown(e)
  if e.owner ~= '' then
    redis.call('SREM', e.held, e.shard)
    fenced[#fenced + 1] = e.shard
  end
  redis.call('HSET', e.lease, 'owner', '', 'token', next_token(KEYS[6]), 'expires_ms', 0, 'reserved_for', '',
             'reserved_until_ms', 0, 'offered_to', '', 'offered_ms', 0)
  redis.call('ZREM', KEYS[3], e.shard)
end

local function make_ready(e)
  redis.call('HSET', e.lease, 'state', 'ready')
  redis.call('ZADD', KEYS[2], redis.call('HGET', e.lease, 'order'), e.shard)
  ready[#ready + 1] = e.shard
end

local function make_blocked(e)
  redis.call('HSET', e.lease, 'state', 'blocked')
  redis.call('ZREM', KEYS[2], e.shard)
end

for _, e in ipairs(entries) do
  if e.mode == 'set' then
    if not e.exists then  -- unknown to the group (never registered, or cleaned up): register it here
      redis.call('ZREM', KEYS[5], e.shard)
      redis.call('HSET', e.lease, 'shard', e.shard, 'parents', e.parents, 'children', e.children, 'order', e.order,
                 'last_owner', '', 'switches', 0, 'created_ms', now, 'acquired_ms', 0)
      redis.call('ZADD', KEYS[1], e.order, e.shard)
      for _, key in ipairs(e.parent_keys) do
        local children = redis.call('HGET', key, 'children')
        if children then
          local listed = false
          for _, c in ipairs(split(children)) do if c == e.shard then listed = true end end
          if not listed then
            redis.call('HSET', key, 'children', children == '' and e.shard or children .. ',' .. e.shard)
          end
        end
      end
    end
    unown(e)
    local skip = e.skip
    local back = string.match(skip, '^now%-(%d+)$')
    if back then skip = now - tonumber(back) end
    redis.call('HSET', e.lease, 'checkpoint', e.checkpoint, 'checkpoint_ms', now, 'start', e.start,
               'skip_before_ms', skip, 'began_ms', 0, 'switches', 0)
    if e.checkpoint == 'SHARD_END' then
      redis.call('HSET', e.lease, 'state', 'ended', 'ended_ms', now)
      redis.call('ZREM', KEYS[2], e.shard)
      redis.call('ZADD', KEYS[4], now, e.shard)
    else
      redis.call('HSET', e.lease, 'ended_ms', 0)
      redis.call('ZREM', KEYS[4], e.shard)
      if parents_ended(e) then make_ready(e) else make_blocked(e) end
    end
  else  -- keep its position: a child of a re-opened shard waits for it again
    local state = redis.call('HGET', e.lease, 'state')
    if state ~= 'ended' then
      if not parents_ended(e) then
        if state == 'ready' then unown(e) end
        make_blocked(e)
      elseif state == 'blocked' then
        make_ready(e)
      end
    end
  end
end

local seq = redis.call('HINCRBY', KEYS[7], 'history_seq', 1)
-- fence_token: the token counter as this change leaves it.  Every lease acquired after the change has a larger
-- token, every consumer from before it a smaller or equal one (a sink keeping ctx.lease_token can tell them apart).
-- (INCRBY by 0 reads the counter: GET is not in the worker's ACL.  %.0f: concatenating the number would
-- write it as 1.7961105408218e+15, 14 digits.)
local fence = string.format('%.0f', redis.call('INCRBY', KEYS[6], 0))
redis.call('HSET', KEYS[8], seq,
           '{"at_ms":' .. string.format('%.0f', now) .. ',"epoch":' .. epoch .. ',"fence_token":' .. fence .. ','
           .. string.sub(ARGV[3], 2))
redis.call('HDEL', KEYS[8], seq - tonumber(ARGV[4]))
if #ready > 0 then redis.call('PUBLISH', ARGV[5], table.concat(ready, ',')) end
return {'ok', epoch, table.concat(fenced, ',')}
