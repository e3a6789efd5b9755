-- snapshot_spend: the fleet's read-unit bucket: refill at ARGV[1] units/s (up to one second's worth),
-- debit ARGV[2] units (may go negative: a page's cost is known only after it was read).
-- KEYS: as in snapshot_start.lua
-- Returns the milliseconds to wait before the next read (0: read now).
local now = now_ms()
local rate = tonumber(ARGV[1])
local f = redis.call('HMGET', KEYS[10], 'units', 'ms')
local units = tonumber(f[1] or rate)
local last = tonumber(f[2] or now)
units = math.min(rate, units + rate * (now - last) / 1000) - tonumber(ARGV[2])
redis.call('HSET', KEYS[10], 'units', tostring(units), 'ms', now)
if units >= 0 then return 0 end
return math.ceil(-units / rate * 1000)
