//! The Lua scripts the shared limiter runs in Redis, each one round trip.

/// Every tenant has one hash (`<prefix>:{<tenant>}`): its buckets as
/// `<bucket>:t` (tokens) and `<bucket>:a` (as of, µs), its quota counters
/// as `q:<start µs>:<end µs>:<resource>`, and `e`, when its expiry is next
/// pushed back. One hash makes a call two commands inside the script (read
/// everything, write everything) instead of one per field.
///
/// ARGV: now µs, requests per minute, burst, units, hard cap (-1: none), the
/// durable total to restore a missing counter from (-1: not known yet), the
/// bucket, the counter field ('' when no quota is charged). Returns
/// {outcome, tokens, used}: outcome 0 admitted, 1 rate limited, 2 over the
/// cap, 3 counter missing (call again with the durable total).
pub const ADMIT: &str = r"
local now = tonumber(ARGV[1])
local burst = tonumber(ARGV[3])
local units = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local bt = ARGV[7] .. ':t'
local ba = ARGV[7] .. ':a'
local qf = ARGV[8]
local v
if qf == '' then
  v = redis.call('HMGET', KEYS[1], bt, ba, 'e')
else
  v = redis.call('HMGET', KEYS[1], bt, ba, 'e', qf)
end
local used = -1
local seeded = false
if qf ~= '' then
  if v[4] then
    used = tonumber(v[4])
  else
    used = tonumber(ARGV[6])
    if used < 0 then
      return {3, '0', -1}
    end
    seeded = true
  end
end
local per_micro = tonumber(ARGV[2]) / 60000000
local tokens = burst
if v[1] then
  tokens = math.min(burst, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * per_micro)
end
local need = math.max(units, 1)
local outcome = 0
if tokens < need then
  outcome = 1
elseif used >= 0 and cap >= 0 and used + need > cap then
  outcome = 2
end
local set = {}
if outcome == 0 and units > 0 then
  tokens = tokens - units
  set = {bt, tostring(tokens), ba, ARGV[1]}
  if used >= 0 then
    used = used + units
    table.insert(set, qf)
    table.insert(set, used)
  end
elseif seeded then
  set = {qf, used}
end
if #set > 0 then
  -- A hash in use lives on; an idle one goes after a day (its counters
  -- were written to the database long before).
  if not v[3] or now > tonumber(v[3]) then
    table.insert(set, 'e')
    table.insert(set, now + 3600000000)
    redis.call('PEXPIRE', KEYS[1], 86400000)
  end
  redis.call('HSET', KEYS[1], unpack(set))
end
return {outcome, tostring(tokens), used}
";

/// Adds usage admitted while Redis was away. KEYS[1]: the tenant's hash;
/// ARGV: counter field, units, durable total (-1: not known yet). Returns
/// the new total, or -1 when the counter is missing and the durable total
/// is needed.
pub const ADD: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
end
local seed = tonumber(ARGV[3])
if seed < 0 then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], seed + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], 86400000)
return seed + tonumber(ARGV[2])
";
