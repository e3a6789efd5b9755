-- offer: the owner marks a lease it is handing over to a taker, fenced by its token.  Only an offered
-- lease can be taken by force (acquire with a victim), and only once the offer is older than the
-- handoff timeout, so a forced take-over takes exactly the lease under handoff, never another one of
-- the owner's, and gives the owner the whole timeout to finish its batch.
-- KEYS[1] lease
-- ARGV[1] owner's worker id   ARGV[2] owner's token   ARGV[3] taker ('' withdraws the offer)
-- Returns {'ok'} or {'lost', reason}.
local now = now_ms()
local why = fence(KEYS[1], ARGV[1], ARGV[2], now)
if why then return {'lost', why} end
if ARGV[3] == '' then
  redis.call('HSET', KEYS[1], 'offered_to', '', 'offered_ms', 0)
elseif redis.call('HGET', KEYS[1], 'offered_to') ~= ARGV[3] then
  redis.call('HSET', KEYS[1], 'offered_to', ARGV[3], 'offered_ms', now)
end
return {'ok'}
