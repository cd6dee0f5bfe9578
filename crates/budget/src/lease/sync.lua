-- nexus-budget lease sync: one atomic step of the shared monthly budget.
--
-- The Rust twin of this script is `src/lease/model.rs` (`LeaseBook::sync`); the two
-- must implement the same rules, and `script.rs` tests them against each other on
-- random sequences. Amounts are integer nano-dollars (exact while below 2^53; the
-- client refuses larger limits), written back with '%.0f' so that Lua never turns
-- them into floats or exponents.
--
-- Keys are derived from ARGV[1] = '<key_prefix>:{<scope>}' and the month, so that the
-- month can come from the server's clock (TIME): every replica rolls over at the same
-- instant. The braces make every key of a scope hash to one cluster slot.
--   <base>:<YYYY-MM>:settled  string  settled spend of the month
--   <base>:<YYYY-MM>:sent     hash    replica -> cumulative spend it has settled
--   <base>:<YYYY-MM>:leases   hash    replica -> lease outstanding (granted, unsettled)
--   <base>:<YYYY-MM>:expiry   zset    replica -> when its lease expires (ms)
--
-- ARGV: 1 base, 2 replica, 3 limit, 4 lease month key (-1: none), 5 unspent (signed),
-- 6 returned, 7 min lease, 8 max lease, 9 need, 10 ttl ms (0: release), 11 now ms
-- ('' = TIME), 12 number of settlements, then (month key, cumulative) pairs.
-- Returns {month key, now ms, granted, lease, settled, leased, target, live}.

local base, replica = ARGV[1], ARGV[2]
local limit = tonumber(ARGV[3])
local lease_month = tonumber(ARGV[4])
local unspent = tonumber(ARGV[5])
local returned = tonumber(ARGV[6])
local min_lease, max_lease = tonumber(ARGV[7]), tonumber(ARGV[8])
local need = tonumber(ARGV[9])
local ttl = tonumber(ARGV[10])

local function int(x) return string.format('%.0f', x) end
local function num(v) return tonumber(v or '0') or 0 end
local floor = math.floor

-- Month key (year * 12 + month - 1) of a Unix time in ms: Howard Hinnant's
-- civil_from_days, as in src/month.rs.
local function month_of(ms)
  local z = floor(ms / 86400000) + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y * 12 + m - 1
end

local function key(month, what)
  return base .. ':' .. string.format('%04d-%02d', floor(month / 12), month % 12 + 1) .. ':' .. what
end

local function set_lease(k, amount)
  if amount > 0 then redis.call('HSET', k, replica, int(amount)) else redis.call('HDEL', k, replica) end
end

local now
if ARGV[11] ~= '' then
  now = tonumber(ARGV[11])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end
local month = month_of(now)
local leases, expiry = key(month, 'leases'), key(month, 'expiry')

-- 1. Leases whose expiry has passed go back to the pool (their replica stopped
--    heartbeating); a replica that comes back learns it from the lease it is told.
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do
  redis.call('HDEL', leases, gone)
end
redis.call('ZREMRANGEBYSCORE', expiry, '-inf', now)

-- 2. Settlements: cumulative per replica and month, so a retry after a timeout (or a
--    replay after Redis lost its data) adds only what was not added yet. Settled spend
--    moves out of the replica's lease of that month: settled + leases is unchanged
--    unless a replica spent more than its lease held.
local pairs_n = tonumber(ARGV[12])
for i = 0, pairs_n - 1 do
  local m = tonumber(ARGV[13 + 2 * i])
  local cumulative = tonumber(ARGV[14 + 2 * i])
  local sent = key(m, 'sent')
  local delta = cumulative - num(redis.call('HGET', sent, replica))
  if delta > 0 then
    redis.call('HSET', sent, replica, int(cumulative))
    redis.call('PEXPIRE', sent, 70 * 86400000)
    redis.call('INCRBY', key(m, 'settled'), int(delta))
    local lk = key(m, 'leases')
    set_lease(lk, math.max(0, num(redis.call('HGET', lk, replica)) - delta))
  end
end

-- 3. What the replica gives back, from the lease of the month it believes in.
if returned > 0 and lease_month >= 0 then
  local lk = key(lease_month, 'leases')
  set_lease(lk, math.max(0, num(redis.call('HGET', lk, replica)) - returned))
end

-- 4. Grant: top the replica up to the target size, never past the limit.
local lease = num(redis.call('HGET', leases, replica))
local settled = num(redis.call('GET', key(month, 'settled')))
local leased = 0
for _, v in ipairs(redis.call('HVALS', leases)) do leased = leased + num(v) end
local granted, target = 0, 0
local live = redis.call('ZCARD', expiry)
if ttl > 0 then
  if not redis.call('ZSCORE', expiry, replica) then live = live + 1 end
  target = floor(math.max(0, limit - settled) / (2 * live))
  target = math.max(math.min(math.max(target, min_lease), max_lease), need)
  local have = (lease_month == month) and unspent or 0
  local want = math.max(0, target - have)
  granted = math.min(want, math.max(0, limit - settled - leased))
  if granted > 0 then
    lease = lease + granted
    leased = leased + granted
    redis.call('HSET', leases, replica, int(lease))
  end
  redis.call('ZADD', expiry, int(now + ttl), replica)
elseif lease == 0 then
  redis.call('ZREM', expiry, replica)
end

-- The lease keys live as long as the longest lease in them, plus a minute (relative
-- to `now`, which tests may set).
local last = redis.call('ZRANGE', expiry, -1, -1, 'WITHSCORES')
if last[2] then
  local keep = int(tonumber(last[2]) - now + 60000)
  redis.call('PEXPIRE', expiry, keep)
  redis.call('PEXPIRE', leases, keep)
end

return {month, now, granted, lease, settled, leased, target, live}
