-- report: replace a worker's shard report (what `shardlease status` shows); not lease state, so not fenced.
-- One script rather than MULTI/EXEC, which the worker's ACL does not grant (docs/security.md).
-- KEYS[1] the worker's report hash
-- ARGV[1] time to keep it (ms)   ARGV[2], ARGV[3], ...: field, value, field, value, ...
-- Returns the number of fields written.
redis.call('DEL', KEYS[1])
local fields = 0
for i = 2, #ARGV - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  fields = fields + 1
end
if fields > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return fields
