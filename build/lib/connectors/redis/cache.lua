-- stockflow: version-guarded write of supplier entries into platform-SKU availability hashes.
--
-- KEYS[1..n] the hashes of n platform SKUs (stockflow:avail:<percent-encoded platform sku>)
-- ARGV[1]    TTL in milliseconds; "0" = no expiry
-- ARGV[2]    "1" when the groups are the full supplier set read from Cassandra (cache-aside
--            fill, rebuild): the hashes are then marked complete
-- ARGV[3]    JSON array, one element per key: that key's groups, each an array of 7 strings:
--            supplier_id, version, quantity, status, sku, updated_at (epoch ms),
--            lead_time_days ("" = unknown, "-" = not carried by the record: keep the stored one)
--
-- One call writes many keys: a batch costs one command (one argument per key) instead of one
-- command of 2 + 7 x suppliers arguments per key, on the client and on the server. Every key
-- is still written alone, by the same rule:
-- A supplier's entry is written only when the incoming version is strictly newer than the
-- stored one, so reordering, redelivery and replay never move the cache back in time.
-- total/best/updated_at are recomputed here from the per-supplier fields, so they are right
-- whatever order the entries arrived in.
-- Returns one string: per key, one character per group ('1' when that entry was newer and
-- written, else '0'), keys separated by ','. (One bulk string is cheaper for the client to
-- read than an array per key.)

-- Versions are compared as canonical decimal strings (Python's str(int)): Lua numbers are
-- doubles and would round versions above 2^53.
local function newer(a, b)
  local a_neg = string.sub(a, 1, 1) == '-'
  local b_neg = string.sub(b, 1, 1) == '-'
  if a_neg ~= b_neg then
    return b_neg
  end
  if #a ~= #b then
    if a_neg then return #a < #b end
    return #a > #b
  end
  if a_neg then return a < b end
  return a > b
end

-- true when candidate (q, lead, id) ranks before the current best (bq, blead, bid)
local function better(q, lead, id, bq, blead, bid)
  if q ~= bq then return q > bq end
  if (lead == nil) ~= (blead == nil) then return blead == nil end
  if lead ~= nil and lead ~= blead then return lead < blead end
  return id < bid
end

-- One HGETALL, the decisions and the recompute in Lua, then one HSET (+ HDEL) and PEXPIRE:
-- a handful of redis.call per key whatever the number of suppliers.
local function apply(key, groups, complete, ttl)
local flat = redis.call('HGETALL', key)
local fields = {}
for j = 1, #flat, 2 do
  fields[flat[j]] = flat[j + 1]
end
local dirty = {}
local function set(field, value)
  fields[field] = value
  dirty[field] = true
end
local function unset(field)
  if fields[field] ~= nil then
    fields[field] = nil
    dirty[field] = true
  end
end

local written = ''
local changed = false
for _, g in ipairs(groups) do
  local supplier = g[1]
  local version = g[2]
  local lead = g[7]
  local stored = fields['v:' .. supplier]
  if (not stored) or newer(version, stored) then
    set('q:' .. supplier, g[3])
    set('v:' .. supplier, version)
    set('s:' .. supplier, g[4])
    set('k:' .. supplier, g[5])
    set('t:' .. supplier, g[6])
    if lead == '' then
      unset('l:' .. supplier)
    elseif lead ~= '-' then
      set('l:' .. supplier, lead)
    end
    written = written .. '1'
    changed = true
  else
    -- Same version from Cassandra (a fill) may bring the lead time the change record did not
    -- carry: take it, it ranks ties for `best`. The entry itself is not rewritten.
    if stored == version and lead ~= '-' and lead ~= '' and fields['l:' .. supplier] == nil then
      set('l:' .. supplier, lead)
      changed = true
    end
    written = written .. '0'
  end
end

if complete and fields['complete'] ~= '1' then
  set('complete', '1')
  changed = true
end

if changed then
  local total = 0
  local best = nil
  local best_q = 0
  local best_lead = nil
  local updated_at = 0
  for field, value in pairs(fields) do
    if string.sub(field, 1, 2) == 'q:' then
      local supplier = string.sub(field, 3)
      local t = tonumber(fields['t:' .. supplier]) or 0
      if t > updated_at then updated_at = t end
      if fields['s:' .. supplier] == 'ACTIVE' then
        local q = tonumber(value) or 0
        local lead = tonumber(fields['l:' .. supplier])
        total = total + q
        -- best, as pipeline.aggregate ranks it: the most units, then a known and shorter
        -- lead time, then the smallest id, so the answer never depends on iteration order.
        if q > 0 and (best == nil or better(q, lead, supplier, best_q, best_lead, best)) then
          best = supplier
          best_q = q
          best_lead = lead
        end
      end
    end
  end
  set('total', string.format('%d', total))
  set('updated_at', string.format('%d', updated_at))
  if best then
    set('best', best)
  else
    unset('best')
  end

  -- Chunks keep unpack() far below Lua's C stack limit for SKUs with many suppliers.
  local args, gone = {}, {}
  for field in pairs(dirty) do
    local value = fields[field]
    if value == nil then
      gone[#gone + 1] = field
    else
      args[#args + 1] = field
      args[#args + 1] = value
    end
    if #args >= 1000 then
      redis.call('HSET', key, unpack(args))
      args = {}
    end
    if #gone >= 1000 then
      redis.call('HDEL', key, unpack(gone))
      gone = {}
    end
  end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  if ttl and ttl > 0 then
    redis.call('PEXPIRE', key, ttl)
  end
end

return written
end

local groups = cjson.decode(ARGV[3])
local complete = ARGV[2] == '1'
local ttl = tonumber(ARGV[1])
local out = {}
for k = 1, #KEYS do
  out[k] = apply(KEYS[k], groups[k], complete, ttl)
end
return table.concat(out, ',')
