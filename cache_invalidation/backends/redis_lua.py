"""The Lua scripts of the Redis tag index (see :mod:`.redis` for the layout they keep).

Each runs atomically in one ``EVALSHA``. ``INVALIDATE`` ends with the bookkeeping operations
of :mod:`..bookkeeping` (counters, duplicate marks, rate counts), so an invalidation and what
it accounts for are one round trip and commit together.
"""

from __future__ import annotations

from ..bookkeeping import LUA as BOOKKEEPING_LUA

# Announcing what was deleted, for the local caches of every process (see :mod:`.pubsub`):
# ``announce(channel, seq, epoch key, tag set names, keys)`` publishes one JSON message. The
# sequence is a string (a Lua number would lose digits); every bump of the sequence is
# announced, so a subscriber that sees a number skipped knows it missed a message.
# ``next_seq(seq key, epoch key, ttl ms)`` bumps the sequence, starting it (and the epoch)
# from the server clock in microseconds when it is missing.
ANNOUNCE_LUA = """
local function announce(channel, seq, epoch_key, tags, keys)
  local epoch = redis.call('GET', epoch_key) or ''
  local message = {s = seq, e = epoch}
  if #tags > 0 then message.t = tags end
  if #keys > 0 then message.k = keys end
  redis.call('PUBLISH', channel, cjson.encode(message))
end
local function next_seq(seq_key, epoch_key, ttl)
  if redis.call('EXISTS', seq_key) == 0 then
    local now = redis.call('TIME')
    local start = now[1] .. string.format('%06d', tonumber(now[2]))
    redis.call('SET', seq_key, start)
    redis.call('SET', epoch_key, start)
  end
  local seq = string.format('%d', redis.call('INCR', seq_key))
  redis.call('PEXPIRE', seq_key, ttl)
  return seq
end
"""

# KEYS: value, seq, lease, stale, tag list, epoch. ARGV: want lease, token, lease ttl ms,
# want stale, want tags (the entry's tags, for an enclosing capture), sequence ttl ms, the
# announcement channel (a sequence started here is announced: subscribers learn its epoch).
LOOKUP = """
local value = redis.call('GET', KEYS[1])
if value then
  local tags = false
  if ARGV[5] == '1' then tags = redis.call('GET', KEYS[5]) end
  return {value, redis.call('GET', KEYS[2]) or '0', 0, false, tags}
end
local since = redis.call('GET', KEYS[2])
if not since then
  -- No sequence (first use, or lost): start it, so that the store can tell a later loss.
  local now = redis.call('TIME')
  since = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('SET', KEYS[2], since, 'PX', ARGV[6])
  redis.call('SET', KEYS[6], since, 'PX', ARGV[6])
  redis.call('PUBLISH', ARGV[7], cjson.encode({s = since, e = since}))
end
local leased = 0
if ARGV[1] == '1' and redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then
  leased = 1
end
local stale = false
if ARGV[4] == '1' then stale = redis.call('GET', KEYS[4]) end
return {false, since, leased, stale, false}
"""

# KEYS: value, lease, stale, tag list, n tag sets, n versions, epoch, seq.
# ARGV: value, ttl ms, index ttl ms, n, since ('' = unconditional), token, stale ttl ms,
# the tags as a JSON list (kept beside the value so a nested capture can learn them), the
# announcement channel, sequence ttl ms. An unconditional store (``set``) replaces whatever
# another process may hold locally, so it is announced; a conditional one fills a miss.
STORE = (
    ANNOUNCE_LUA
    + """
local n = tonumber(ARGV[4])
local function release()
  if ARGV[6] ~= '' and redis.call('GET', KEYS[2]) == ARGV[6] then redis.call('DEL', KEYS[2]) end
end
if ARGV[5] ~= '' then
  local since = tonumber(ARGV[5])
  local epoch = redis.call('GET', KEYS[5 + 2 * n])
  if epoch and tonumber(epoch) > since then release() return 0 end
  local seq = redis.call('GET', KEYS[6 + 2 * n])
  if since > 0 and (not seq or tonumber(seq) < since) then release() return 0 end
  for i = 1, n do
    local version = redis.call('GET', KEYS[4 + n + i])
    if version and tonumber(version) > since then release() return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if tonumber(ARGV[7]) > 0 then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[7]) end
if n > 0 then redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[2]) else redis.call('DEL', KEYS[4]) end
for i = 1, n do
  local set = KEYS[4 + i]
  for _, member in ipairs(redis.call('SRANDMEMBER', set, 2)) do
    if member ~= KEYS[1] and redis.call('EXISTS', member) == 0 then
      redis.call('SREM', set, member)
    end
  end
  redis.call('SADD', set, KEYS[1])
  if redis.call('PTTL', set) < tonumber(ARGV[3]) then redis.call('PEXPIRE', set, ARGV[3]) end
end
release()
if ARGV[5] == '' then
  local seq = next_seq(KEYS[6 + 2 * n], KEYS[5 + 2 * n], ARGV[10])
  announce(ARGV[9], seq, KEYS[5 + 2 * n], {}, {KEYS[1]})
end
return 1
"""
)

# KEYS: seq, n tag sets, n versions, epoch, m plain keys, bookkeeping keys.
# ARGV: n, index ttl ms, budget, drain prefix, m, bookkeeping operations (JSON), the registry
# of draining sets (a sorted set: set -> ms when last claimed), orphan age ms, the
# announcement channel (the tag sets and keys invalidated are published under the new
# sequence number, in this same call).
INVALIDATE = (
    ANNOUNCE_LUA
    + """
local n = tonumber(ARGV[1])
local m = tonumber(ARGV[5])
local epoch = KEYS[2 * n + 2]
local clock = redis.call('TIME')
if redis.call('EXISTS', KEYS[1]) == 0 then
  local start = clock[1] .. string.format('%06d', tonumber(clock[2]))
  redis.call('SET', KEYS[1], start)
  redis.call('SET', epoch, start)
end
local seq = string.format('%d', redis.call('INCR', KEYS[1]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
redis.call('PEXPIRE', epoch, tonumber(ARGV[2]) * 4)  -- a no-op when there is none
local budget = tonumber(ARGV[3])
local deleted = 0
local draining = {}
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for i = 1, n do
  local set = KEYS[1 + i]
  redis.call('SET', KEYS[1 + n + i], seq, 'PX', ARGV[2])
  local size = redis.call('SCARD', set)
  if size > 0 and size <= budget then
    local members = redis.call('SMEMBERS', set)
    for s = 1, #members, 500 do
      deleted = deleted + redis.call('DEL', unpack(members, s, math.min(s + 499, #members)))
    end
    redis.call('DEL', set)
    budget = budget - size
  elseif size > 0 then
    local target = ARGV[4] .. seq .. ':' .. i
    redis.call('RENAME', set, target)
    redis.call('PEXPIRE', target, ARGV[2])
    redis.call('ZADD', ARGV[7], now_ms, target)
    redis.call('PEXPIRE', ARGV[7], ARGV[2])
    draining[#draining + 1] = target
  end
end
for i = 2 * n + 3, 2 * n + 2 + m do
  deleted = deleted + redis.call('DEL', KEYS[i])
end
-- Sets whose drainer was lost (its reply lost, its process gone) are claimed here, so their
-- members do not stay cached until they expire.
local orphans = redis.call(
  'ZRANGEBYSCORE', ARGV[7], '-inf', now_ms - tonumber(ARGV[8]), 'LIMIT', 0, 16)
for _, orphan in ipairs(orphans) do
  redis.call('ZADD', ARGV[7], now_ms, orphan)
  draining[#draining + 1] = orphan
end
local announced_tags = {}
for i = 1, n do announced_tags[i] = KEYS[1 + i] end
local announced_keys = {}
for i = 2 * n + 3, 2 * n + 2 + m do announced_keys[#announced_keys + 1] = KEYS[i] end
announce(ARGV[9], seq, epoch, announced_tags, announced_keys)
local ops = cjson.decode(ARGV[6])
local first = 2 * n + 3 + m
"""
    + BOOKKEEPING_LUA
    + """
return {deleted, draining, totals}
"""
)

# KEYS: draining sets. ARGV: budget, the registry of draining sets, the drain prefix, the
# announcement channel, the sequence, the epoch, sequence ttl ms. Pops and deletes up to
# budget members, set after set, and announces the keys it deleted (under a new sequence
# number); returns the deletions, the sets that still have members (an emptied set leaves the
# registry) and the sets refused. The names come from
# messages and dead-letter rows, which anyone on the broker can write: only a set under this
# cache's drain prefix that the registry lists is touched, so no message can make this script
# pop another application's set or another KEY_PREFIX's tag index.
DRAIN = (
    ANNOUNCE_LUA
    + """
local budget = tonumber(ARGV[1])
local prefix = ARGV[3]
local deleted = 0
local left = {}
local refused = {}
local popped = {}
for i = 1, #KEYS do
  local name = KEYS[i]
  if string.sub(name, 1, #prefix) ~= prefix or not redis.call('ZSCORE', ARGV[2], name) then
    refused[#refused + 1] = name
  else
    if budget > 0 then
      local members = redis.call('SPOP', name, budget)
      if #members > 0 then
        deleted = deleted + redis.call('DEL', unpack(members))
        budget = budget - #members
        for _, member in ipairs(members) do popped[#popped + 1] = member end
      end
    end
    if redis.call('EXISTS', name) == 1 then
      left[#left + 1] = name
    else
      redis.call('ZREM', ARGV[2], name)
    end
  end
end
if #popped > 0 then
  announce(ARGV[4], next_seq(ARGV[5], ARGV[6], ARGV[7]), ARGV[6], {}, popped)
end
return {deleted, left, refused}
"""
)

# KEYS: keys to delete. ARGV: the announcement channel, the sequence, the epoch, sequence ttl
# ms. Deletes them (UNLINK: a large value is freed off the main thread) and announces them,
# deleted or not: another process may still hold one it read before it expired here.
DELETE_KEYS = (
    ANNOUNCE_LUA
    + """
local deleted = redis.call('UNLINK', unpack(KEYS))
announce(ARGV[1], next_seq(ARGV[2], ARGV[3], ARGV[4]), ARGV[3], {}, KEYS)
return deleted
"""
)

# KEYS: a tag set. ARGV: members to check. Removes those whose entry is gone.
PRUNE = """
local removed = 0
for _, member in ipairs(ARGV) do
  if redis.call('EXISTS', member) == 0 then
    removed = removed + redis.call('SREM', KEYS[1], member)
  end
end
return removed
"""
