//! The Lua scripts the shared limiter runs in Redis, each one round trip.

/// The lease script's body as a Lua function of one tenant's hash and its
/// 17 arguments at offset `at` of `A`, shared by the one-tenant and the
/// many-tenant script.
macro_rules! lease_fn {
    () => {
        r"
local function lease(key, A, at)
  local now = tonumber(A[at + 1])
  local burst = tonumber(A[at + 3])
  local bt = A[at + 4] .. ':t'
  local ba = A[at + 4] .. ':a'
  local need = tonumber(A[at + 5])
  local want = tonumber(A[at + 6])
  local ret = tonumber(A[at + 7])
  local qf = A[at + 8]
  local cap = tonumber(A[at + 9])
  local rf = A[at + 11]
  local v
  if qf == '' then
    v = redis.call('HMGET', key, bt, ba, 'e')
  else
    v = redis.call('HMGET', key, bt, ba, 'e', qf, rf)
  end
  local used = -1
  local o = 0
  if qf ~= '' then
    if v[4] then
      used = tonumber(v[4])
    else
      used = tonumber(A[at + 10])
      if used < 0 then
        return {3, 0, '0', -1, 0, -1}
      end
    end
    if v[5] then
      o = tonumber(string.match(v[5], '^(%-?%d+)|'))
      if A[at + 16] == '1' then
        -- What Redis counts as granted, which may be more than the replica
        -- knows of (answers lost), less what it used.
        ret = math.max(0, o - tonumber(A[at + 17]))
      end
    elseif A[at + 12] == '1' then
      return {4, 0, '0', -1, 0, -1}
    end
    used = used - ret + tonumber(A[at + 14])
    o = o - ret
  end
  local tokens = burst
  if v[1] then
    tokens = math.min(burst, tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * tonumber(A[at + 2]) / 60000000)
  end
  tokens = math.min(burst, tokens + ret)
  local outcome = 0
  local g = 0
  if need > 0 and tokens < need then
    outcome = 1
  elseif need > 0 and used >= 0 and cap >= 0 and used + need > cap then
    outcome = 2
  else
    local more = math.floor(math.max(0, tokens - need) / 2)
    if used >= 0 and cap >= 0 then
      more = math.min(more, math.floor(math.max(0, cap - used - need) / 2))
    end
    g = need + math.min(want, more)
    tokens = tokens - g
    if used >= 0 then
      used = used + g
      o = o + g
    end
  end
  local set = {bt, tostring(tokens), ba, A[at + 1]}
  local kept = 0
  if used >= 0 then
    table.insert(set, qf)
    table.insert(set, used)
    if A[at + 16] == '1' then
      redis.call('HDEL', key, rf)
    elseif v[5] or g > 0 then
      kept = 1
      table.insert(set, rf)
      -- %d: concatenation would print large numbers with an exponent.
      table.insert(set, string.format('%d|%d|%s|%d|%d|%s', o, now + tonumber(A[at + 15]), A[at + 13], g, tonumber(A[at + 17]) + g, qf))
    end
  end
  -- A hash in use lives on; an idle one goes after a day (its counters were
  -- written to the database long before).
  if not v[3] or now > tonumber(v[3]) then
    table.insert(set, 'e')
    table.insert(set, now + 3600000000)
    redis.call('PEXPIRE', key, 86400000)
  end
  redis.call('HSET', key, unpack(set))
  if kept == 0 then
    o = -1
  end
  return {outcome, g, tostring(tokens), used, kept, o}
end
"
    };
}

/// Every tenant has one hash (`<prefix>:{<tenant>}`): its buckets as
/// `<bucket>:t` (tokens) and `<bucket>:a` (as of, µs); its quota counters as
/// `q:<start µs>:<end µs>:<resource>`, which count every unit granted to a
/// lease and not handed back; a record per lease on a counter,
/// `l:<replica>:<lease>` = `granted|expires µs|request|last grant|held after
/// it|counter`,
/// so the units of a replica that dies can be claimed; and `e`, when its
/// expiry is next pushed back. One hash makes a call two commands (read
/// everything, write everything) instead of one per field.
///
/// One call settles a lease (hands back unused tokens and units, adds units
/// served outside leases) and grants it more: the call's own `need` and up
/// to `want` more, but never more than half of what is left, so that near
/// the end of a budget leases shrink to one call at a time.
///
/// ARGV: 1 now µs, 2 requests per minute, 3 burst, 4 bucket, 5 need, 6 want,
/// 7 handed back (tokens and units), 8 counter field ('' when no quota is
/// charged), 9 hard cap (-1: none), 10 durable total to restore a missing
/// counter from (-1: not known yet), 11 record field, 12 '1' when the record
/// must exist ('0': it may), 13 this request's id, 14 units to add, 15 lease
/// lifetime µs, 16 '1' to close the lease (remove its record, and hand back
/// all it was granted but did not use), 17 units the lease holds before the
/// grant; when closing, the units it used in all.
///
/// Returns {outcome, granted, tokens left (string), used, record kept,
/// granted to the lease in all (less handed back; -1 without a record)}: a
/// replica whose earlier answers were lost learns from the last what they
/// granted.
/// outcome 0 granted, 1 rate limited, 2 over the cap, 3 counter missing
/// (call again with the durable total), 4 the record is gone (Redis lost its
/// data, or the lease was claimed): nothing was changed.
pub const LEASE: &str = concat!(lease_fn!(), "return lease(KEYS[1], ARGV, 0)\n");

/// Several lease calls in one round trip, one per key (each with its 17
/// arguments in turn); returns their answers one after another, 6 values
/// each. Only where every key is on one node: a single Redis.
pub const LEASE_MANY: &str = concat!(
    lease_fn!(),
    r"
local out = {}
for i = 1, #KEYS do
  local r = lease(KEYS[i], ARGV, (i - 1) * 17)
  for j = 1, 6 do
    out[#out + 1] = r[j]
  end
end
return out
"
);
/// Marks a lease record as claimed, if it is still the one read: KEYS[1] the
/// tenant's hash, ARGV: the record field, its value as read. Returns 1 when
/// marked (its owner now finds it gone), 0 when it changed meanwhile.
pub const CLAIM: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], 'c' .. string.sub(ARGV[1], 2), ARGV[2])
return 1
";
