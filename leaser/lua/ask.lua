-- ask: ask a live worker to hand over some leases.  Setting (not adding) the count keeps a
-- repeated ask idempotent.  The whole hash lapses once no taker has asked for ARGV[3] ms; a taker
-- that stops asking withdraws its entry (count 0), and the owner's planner ignores entries from
-- takers that left the group or already hold their share.
-- KEYS[1] asks hash of the owner being asked
-- ARGV[1] taker   ARGV[2] number of leases (0 withdraws the ask)   ARGV[3] ask lifetime (ms)
-- Returns 'ok'.
if tonumber(ARGV[2]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 'ok'
