//! The Lua scripts the shared limiter runs in Redis, each one round trip.
//!
//! Every tenant has one hash (`<prefix>:{<tenant>}`), so a call touches one
//! hash slot and runs two commands (read everything, write everything):
//!
//! - `g:<bucket>`: the bucket, as GCRA's one number: the time (µs) at which
//!   it is full again; a call finds `burst - (tat - now) / per` tokens.
//! - `q:<start µs>:<end µs>:<resource>`: a quota counter: every unit granted
//!   to a lease and not handed back.
//! - `l:<replica>:<lease>` = `granted|expires µs|held after the last
//!   grant|counter`: a lease's record, so that the units of a replica that
//!   dies can be claimed (`c:…` once claimed).
//!
//! Decisions are the per-call cost of the long tail, so the script does
//! the least per decision: three fields read, three written, no field
//! expiry check (the replica asks for `PEXPIRE` when a lease is new), and
//! the arguments a common call does not need are left out.

/// Lease calls on one key each, in one round trip: each settles a lease
/// (hands back unused tokens and units, adds units served outside leases)
/// and grants it more: the call's own `need` and up to `want` more, but
/// never more than half of what is left, so that near the end of a budget
/// leases shrink to one call at a time.
///
/// ARGV: 1 now µs, 2 lease lifetime µs; then for each key in turn: bucket
/// field, counter field ('' when no quota is charged), record field, and
/// the numbers, packed as 10 little-endian 64-bit integers (`struct.unpack`
/// reads them without making a Lua string of each): requests per minute,
/// burst, need, want, handed back (tokens and units), hard cap (-1: none),
/// flags, units the lease holds before the grant (when closing: the units
/// it used in all), the durable total to restore a missing counter from
/// (-1: not known), units to add.
/// Flags (summed): 1 the record must exist (else it may), 2 close the lease
/// (remove its record, hand back all it was granted but did not use), 4
/// push the hash's expiry back (a day).
///
/// Returns 5 values per key: outcome, granted, milli-tokens left, used,
/// granted to the lease in all less handed back (-1: no record kept; a
/// replica whose earlier answers were lost learns from it what they
/// granted). Outcome 0 granted, 1 rate limited, 2 over the cap, 3 counter
/// missing (call again with the durable total), 4 the record is gone (Redis
/// lost its data, or the lease was claimed): nothing was changed.
pub const LEASE: &str = r"
local now = tonumber(ARGV[1])
local life = tonumber(ARGV[2])
local out = {}
local a = 2
for i = 1, #KEYS do
  local key = KEYS[i]
  local bf = ARGV[a + 1]
  local qf = ARGV[a + 2]
  local rf = ARGV[a + 3]
  local rpm, burst, need, want, ret, cap, flags, holding, seed, add =
    struct.unpack('<i8i8i8i8i8i8i8i8i8i8', ARGV[a + 4])
  local outcome = 0
  local g = 0
  local tokens = 0
  local used = -1
  local o = -1
  local v
  if qf == '' then
    v = redis.call('HMGET', key, bf)
  else
    v = redis.call('HMGET', key, bf, qf, rf)
    if v[2] then
      used = tonumber(v[2])
    elseif seed >= 0 then
      used = seed
    else
      outcome = 3
    end
    if v[3] then
      o = tonumber(string.match(v[3], '^(%d+)'))
      if flags % 4 >= 2 then
        -- What Redis counts as granted, which may be more than the replica
        -- knows of (answers lost), less what it used.
        ret = math.max(0, o - holding)
      end
    elseif flags % 2 == 1 and outcome == 0 then
      outcome = 4
    else
      o = 0
    end
  end
  if outcome < 3 then
    local per = 60000000 / rpm
    local tat = tonumber(v[1] or '0')
    if tat < now then
      tat = now
    end
    tat = tat - ret * per
    if tat < now then
      tat = now
    end
    tokens = burst - (tat - now) / per
    if used >= 0 then
      used = used - ret + add
      o = o - ret
    end
    if need > 0 and tokens < need then
      outcome = 1
    elseif need > 0 and cap >= 0 and used + need > cap then
      outcome = 2
    else
      local more = math.floor(math.max(0, tokens - need) / 2)
      if cap >= 0 then
        more = math.min(more, math.floor(math.max(0, cap - used - need) / 2))
      end
      g = need + math.min(want, more)
      tat = tat + g * per
      tokens = tokens - g
      if used >= 0 then
        used = used + g
        o = o + g
      end
    end
    -- %d: concatenation would print large numbers with an exponent.
    local bucket = string.format('%d', math.ceil(tat))
    if used < 0 then
      redis.call('HSET', key, bf, bucket)
    elseif flags % 4 >= 2 then
      redis.call('HDEL', key, rf)
      redis.call('HSET', key, bf, bucket, qf, string.format('%d', used))
      o = -1
    elseif v[3] or g > 0 then
      redis.call('HSET', key, bf, bucket, qf, string.format('%d', used), rf,
        string.format('%d|%d|%d|%s', o, now + life, holding + g, qf))
    else
      redis.call('HSET', key, bf, bucket, qf, string.format('%d', used))
      o = -1
    end
    if flags % 8 >= 4 then
      redis.call('PEXPIRE', key, 86400000)
    end
  end
  out[#out + 1] = outcome
  out[#out + 1] = g
  out[#out + 1] = math.floor(tokens * 1000)
  out[#out + 1] = used
  out[#out + 1] = o
  a = a + 4
end
return out
";

/// Values the lease script answers per key.
pub const ANSWER_LEN: usize = 5;

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
