-- begin: the owner records when reading of a shard without a checkpoint began, fenced by its token.
-- Only the first call sets it (later owners keep the first reader's time), so a start position that
-- depends on time ("from now on") is fixed once for the shard, not re-decided by every new owner.
-- KEYS[1] lease
-- ARGV[1] owner's worker id   ARGV[2] owner's token
-- Returns {'ok', began_ms, 1 if this call set it else 0} or {'lost', reason}.
local now = now_ms()
local why = fence(KEYS[1], ARGV[1], ARGV[2], now)
if why then return {'lost', why} end
local began = tonumber(redis.call('HGET', KEYS[1], 'began_ms') or 0)
if began > 0 then return {'ok', began, 0} end
redis.call('HSET', KEYS[1], 'began_ms', now)
return {'ok', now, 1}
