"""The Lua scripts of RedisStore: each multi-key change in one atomic step (see redis_layout
for the keys). A script's checks all come before its first write, so a refusal changes
nothing.

Each declares its flags (the `#!lua` line): without `allow-oom`, Redis refuses the whole
script up front at maxmemory (a script without the line is refused only at its first write
that may grow memory, and none at all once an earlier write, even a DEL, has run: it would
store past maxmemory). Removing (flush, purge) is allowed at maxmemory: it frees memory."""

from __future__ import annotations

# Stores (or replaces) one entry and evicts the least recently used beyond the cap, never the
# entry just written. Refuses, changing nothing, a cache one too many ({'limit', held}), a
# vector of another dimension ({'conflict', dimension}) and a token taken by another cache id
# ({'collision', other id}), and a vector of another embedding model ({'model', held}; the
# first put naming a model records it in meta). The cache's first entry creates its index and
# meta and registers it. Answers {'ok', evicted}.
# KEYS: registry, meta, entry hash, lru, exp, stats.
# ARGV: cache id, token, entry id, dimension, max entries, max caches, now, expires at ('' for
# never), PEXPIRE milliseconds, entry key prefix, index name, model ('' for not known), the
# FT.CREATE arguments as a JSON array of strings (one argument: decoded only by the cache's
# first put), then the entry's field/value pairs.
PUT = """#!lua
local registry, meta, key, lru, exp, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local cache_id, token, id, dimension = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local known = redis.call('HGET', registry, token)
if not known then
  local held = redis.call('HLEN', registry)
  if held >= tonumber(ARGV[6]) then return {'limit', held} end
elseif known ~= cache_id then
  return {'collision', known}
end
local existing = redis.call('HGET', meta, 'dim')
if existing and existing ~= dimension then return {'conflict', existing} end
local model = ARGV[12]
local held_model = redis.call('HGET', meta, 'model')
if model ~= '' and held_model and held_model ~= model then return {'model', held_model} end
if not existing then
  -- No meta, so no index but a leftover of some older failure: drop it and its documents.
  pcall(redis.call, 'FT.DROPINDEX', ARGV[11], 'DD')
  redis.call('FT.CREATE', ARGV[11], unpack(cjson.decode(ARGV[13])))
  redis.call('HSET', meta, 'cache_id', cache_id, 'dim', dimension)
end
if model ~= '' and not held_model then redis.call('HSET', meta, 'model', model) end
if not known then redis.call('HSET', registry, token, cache_id) end
redis.call('DEL', key)  -- a replaced entry loses attributes it no longer has
redis.call('HSET', key, unpack(ARGV, 14, #ARGV))
if ARGV[8] ~= '' then
  redis.call('PEXPIRE', key, ARGV[9])
  redis.call('ZADD', exp, ARGV[8], id)
else
  redis.call('ZREM', exp, id)
end
redis.call('ZADD', lru, ARGV[7], id)
local excess = redis.call('ZCARD', lru) - tonumber(ARGV[5])
local evicted = 0
if excess > 0 then
  for _, victim in ipairs(redis.call('ZRANGE', lru, 0, excess)) do
    if evicted < excess and victim ~= id then
      redis.call('DEL', ARGV[10] .. victim)
      redis.call('ZREM', lru, victim)
      redis.call('ZREM', exp, victim)
      evicted = evicted + 1
    end
  end
  if evicted > 0 then redis.call('HINCRBY', stats, 'evictions', evicted) end
end
return {'ok', evicted}
"""

# One step of a flush: deletes up to `batch` entries (hashes, lru and exp members); once none
# is left, drops the index (with any document it still covers), the meta, lru, exp and the
# pool of observations (with the meta: none is added after), and the registration; the hit
# policy stays. Answers {deleted, done (0/1)}.
# KEYS: registry, meta, lru, exp, pool. ARGV: token, entry key prefix, index name, batch.
FLUSH_STEP = """#!lua flags=allow-oom
local ids = redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[4]) - 1)
for _, id in ipairs(ids) do redis.call('DEL', ARGV[2] .. id) end
if #ids > 0 then
  redis.call('ZREM', KEYS[3], unpack(ids))
  redis.call('ZREM', KEYS[4], unpack(ids))
end
if redis.call('ZCARD', KEYS[3]) > 0 then return {#ids, 0} end
pcall(redis.call, 'FT.DROPINDEX', ARGV[3], 'DD')
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('HDEL', KEYS[1], ARGV[1])
return {#ids, 1}
"""

# Removes the given entries that are still expired at `now` (one re-stored since it was
# listed has a later expiry and stays), and counts them. Answers the number removed.
# KEYS: exp, lru, stats. ARGV: now, entry key prefix, then the entry ids.
PURGE = """#!lua flags=allow-oom
local now, removed = tonumber(ARGV[1]), 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local at = redis.call('ZSCORE', KEYS[1], id)
  if at and tonumber(at) <= now then
    redis.call('DEL', ARGV[2] .. id)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    removed = removed + 1
  end
end
if removed > 0 then redis.call('HINCRBY', KEYS[3], 'expirations', removed) end
return removed
"""

# Adds to the counters of a cache the store holds (its meta exists), so made-up cache ids
# leave nothing behind. KEYS: meta, stats. ARGV: name/value pairs.
ADD_COUNTERS = """#!lua
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Keeps one feedback report and updates, in the same step, which entries are excluded for the
# report's prompt: {created_at of the judged answer, id of the report that excluded it} per
# entry id. Bounded: beyond the most reports kept, the oldest go, and with each the exclusion
# it made (unless a later report replaced it), so the hash never holds more exclusions than
# the list holds reports (as in the embedded store, where they are read from the reports).
# Answers 1.
# KEYS: feedback list, rejected hash. ARGV: report JSON, prompt key, entry id, correct (1/0),
# entry created_at, report id, most reports kept.
FEEDBACK = """#!lua
local function exclude(prompt_key, entry_id, value, made_by)
  local raw = redis.call('HGET', KEYS[2], prompt_key)
  if not raw and value == nil then return end
  local excluded = {}
  if raw then excluded = cjson.decode(raw) end
  if made_by then
    local made = excluded[entry_id]
    if type(made) ~= 'table' or made[2] ~= made_by then return end
  end
  excluded[entry_id] = value
  if next(excluded) == nil then
    redis.call('HDEL', KEYS[2], prompt_key)
  else
    redis.call('HSET', KEYS[2], prompt_key, cjson.encode(excluded))
  end
end
if ARGV[4] == '1' then
  exclude(ARGV[2], ARGV[3], nil, nil)
else
  exclude(ARGV[2], ARGV[3], {ARGV[5], ARGV[6]}, nil)
end
redis.call('RPUSH', KEYS[1], ARGV[1])
while redis.call('LLEN', KEYS[1]) > tonumber(ARGV[7]) do
  local old = cjson.decode(redis.call('LPOP', KEYS[1]))
  if old.correct == false then exclude(old.prompt_key, old.entry_id, nil, old.id) end
end
return 1
"""

# Adds one observation (verified hit policy): to the entry's `ev` field when the hash is still
# the answer judged (its created_at, as stored, equals the given one), keeping its last
# records; and to the cache's pool while the cache is held (its meta exists), keeping the
# pool's last records. HSET leaves the hash's expiry as it is. Answers 1 when the entry took
# it, else 0.
# KEYS: entry hash, meta, pool. ARGV: entry created_at (repr, as the put script stored it),
# the record, most bytes per entry, most bytes per pool.
OBSERVE = """#!lua
local took = redis.call('HGET', KEYS[1], 'created_at') == ARGV[1]
local held = redis.call('EXISTS', KEYS[2]) == 1
if took then
  local most = tonumber(ARGV[3])
  local ev = (redis.call('HGET', KEYS[1], 'ev') or '') .. ARGV[2]
  if #ev > most then ev = string.sub(ev, -most) end
  redis.call('HSET', KEYS[1], 'ev', ev)
end
if held then
  local most = tonumber(ARGV[4])
  if redis.call('APPEND', KEYS[3], ARGV[2]) > most then
    redis.call('SET', KEYS[3], redis.call('GETRANGE', KEYS[3], -most, -1))
  end
end
if took then return 1 end
return 0
"""

# An entry's evidence set to what a near entry learned, while the entry is the answer stored
# at that created_at (compared as stored). Answers 1 when it took it.
# KEYS: entry hash. ARGV: created_at, evidence.
INHERIT_EVIDENCE = """#!lua
if redis.call('HGET', KEYS[1], 'created_at') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], 'ev') else
  redis.call('HSET', KEYS[1], 'ev', ARGV[2]) end
return 1
"""

# One page of a sample of entries' observations: the entries at ranks start .. start+count-1
# of the lru set, most recently used first (those hits made, so the likeliest to have any),
# looked at in that order until `wanted` have an `ev` field. Reads only. Answers {entries in
# the page, entries looked at, id, ev, id, ev, ...}.
# KEYS: lru. ARGV: entry key prefix, start, count, wanted.
SAMPLE_EVIDENCE = """#!lua flags=no-writes,allow-oom
local start, count, wanted = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ids = redis.call('ZREVRANGE', KEYS[1], start, start + count - 1)
local reply, looked, found = {#ids, 0}, 0, 0
for _, id in ipairs(ids) do
  if found >= wanted then break end
  looked = looked + 1
  local ev = redis.call('HGET', ARGV[1] .. id, 'ev')
  if ev then
    reply[#reply + 1] = id
    reply[#reply + 1] = ev
    found = found + 1
  end
end
reply[2] = looked
return reply
"""

# Adds marks to a cache's sorted set while the cache is held (its meta exists), keeping the
# newest ARGV[2]; one reply per mark: 1 when it was new. KEYS: marks, meta. ARGV: now, cap,
# the marks.
MARK = """#!lua
if redis.call('EXISTS', KEYS[2]) == 0 then return {} end
local out = {}
for i = 3, #ARGV do
  out[#out + 1] = redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[i])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
return out
"""

# Gives existing entries new vectors (an entry gone is not re-created). KEYS: the entry hashes.
# ARGV: one vector per key. Answers how many were replaced.
REPLACE_VECTORS = """#!lua
local replaced = 0
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'vector', ARGV[i])
    replaced = replaced + 1
  end
end
return replaced
"""

# Records the model of a held cache's vectors. KEYS: meta. ARGV: model.
SET_MODEL = """#!lua
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'model', ARGV[1]) end
return 0
"""
