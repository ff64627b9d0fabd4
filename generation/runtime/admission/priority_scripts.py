"""The start order of the site queue in Redis (issue #15): Lua functions.

`FUNCTIONS` is put before scripts.PRELUDE in every script of RedisAdmission;
it mirrors generation.runtime.admission.order (priority classes, ageing, fair
shares) so that the site queue starts waiting tickets in the same order as
LocalAdmission and the per-process queue. The scripts of scripts.py call it
at a few marked places (`prio_*`, `waiting_order`); everything else about
the order lives here.

KEYS (after scripts.py's ten):
 11 prio     hash  'on' ('1' while a policy with classes is in force),
                   'ageing_ms', 'half_life_ms', and each ticket's class level
                   by person: 'c:<person>' for chat requests, 'a:<person>'
                   for API ones, 'c:*' / 'a:*' for people listed nowhere;
                   's:<level>' -> when a ticket of that level last started
                   (ms; order.class_levels), forgotten with the policy
 12 arrived  hash  ticket -> arrival time (ms), and 'h:<ticket>' -> 1 for a
                   ticket deferred back to the head
 13 fair     hash  person -> service (tokens, decayed at read time), and
                   't:<person>' -> when it was last written (ms)
A person is a counted user without its source suffix ("7:api" -> "7").
Sorting is Lua's table.sort on the same keys as order.start_order.
"""

SET_POLICY = """
-- ARGV 3 '1' when the policy has classes, 4 ageing (ms), 5 half-life (ms),
-- then field, level pairs. Replaces the whole policy.
redis.call('DEL', K_PRIO)
redis.call('HSET', K_PRIO, 'on', ARGV[3], 'ageing_ms', ARGV[4], 'half_life_ms', ARGV[5])
for i = 6, #ARGV - 1, 2 do redis.call('HSET', K_PRIO, ARGV[i], ARGV[i + 1]) end
redis.call('PUBLISH', WAKE, 'policy')
return 1
"""

ACCOUNT = """
-- ARGV 3 ticket, 4 tokens generated for it, 5 its user ('' unknown: the
-- ticket's own, which a release has already dropped).
local user = redis.call('HGET', K_USER, ARGV[3])
if not user and ARGV[5] ~= '' then user = ARGV[5] end
if not user or redis.call('HGET', K_PRIO, 'on') ~= '1' then return 0 end
local person = prio_person(user)
prio_fair_set(person, prio_fair(person, now) + tonumber(ARGV[4]), now)
return 1
"""

FUNCTIONS = """
local K_PRIO, K_ARRIVED, K_FAIR = KEYS[11], KEYS[12], KEYS[13]

local function prio_person(user)
  local person, source = string.match(user, '^(.*):(api)$')
  if person then return person, true end
  return user, false
end

local function prio_fair(person, now)
  local value = tonumber(redis.call('HGET', K_FAIR, person) or '0')
  if value == 0 then return 0 end
  local at = tonumber(redis.call('HGET', K_FAIR, 't:' .. person) or tostring(now))
  local half = tonumber(redis.call('HGET', K_PRIO, 'half_life_ms') or '0')
  if half <= 0 then return value end
  return value * 0.5 ^ (math.max(now - at, 0) / half)
end

local function prio_fair_set(person, value, now)
  redis.call('HSET', K_FAIR, person, value, 't:' .. person, now)
end

local function prio_level(user)
  local person, api = prio_person(user)
  local side = api and 'a:' or 'c:'
  return tonumber(redis.call('HGET', K_PRIO, side .. person) or redis.call('HGET', K_PRIO, side .. '*') or '0')
end

-- A ticket of `user` arrives (already in `user_key`, the ticket -> user
-- hash). A person with no other ticket joins at the least service of the
-- people with a ticket of the same class level (VTC; order.FairShare.join).
local function prio_arrive(ticket, user, user_key, now)
  redis.call('HSET', K_ARRIVED, ticket, now)
  if redis.call('HGET', K_PRIO, 'on') ~= '1' then return end
  local person = prio_person(user)
  local level = prio_level(user)
  local held = redis.call('HGETALL', user_key)
  local lowest = nil
  for i = 1, #held, 2 do
    local other_user = held[i + 1]
    if held[i] ~= ticket and other_user ~= '' then
      local other = prio_person(other_user)
      if other == person then return end
      if prio_level(other_user) == level then
        local value = prio_fair(other, now)
        if lowest == nil or value < lowest then lowest = value end
      end
    end
  end
  local own = prio_fair(person, now)
  if lowest ~= nil and lowest > own then own = lowest end
  if own > 0 then prio_fair_set(person, own, now) end
end

local function prio_forget(ticket)
  redis.call('HDEL', K_ARRIVED, ticket, 'h:' .. ticket)
end

local function prio_head(ticket, is_head)
  if is_head then redis.call('HSET', K_ARRIVED, 'h:' .. ticket, 1)
  else redis.call('HDEL', K_ARRIVED, 'h:' .. ticket) end
end

-- A ticket of `user` started: its class's ageing starts again (order.class_levels).
local function prio_started(user, now)
  if redis.call('HGET', K_PRIO, 'on') ~= '1' then return end
  redis.call('HSET', K_PRIO, 's:' .. prio_level(user), now)
end

-- The waiting tickets in start order (order.start_order); arrival order
-- without a policy. `queue_key`, `running_key`, `user_key`: scripts.py's keys.
local function waiting_order(queue_key, running_key, user_key, now)
  local queue = redis.call('ZRANGE', queue_key, 0, -1)
  if redis.call('HGET', K_PRIO, 'on') ~= '1' then return queue end
  local ageing = tonumber(redis.call('HGET', K_PRIO, 'ageing_ms') or '60000')
  local ahead, service, keyed, levels, lifted = {}, {}, {}, {}, {}
  -- Each class's effective level (order.class_levels): lifted one per
  -- interval that it has had a ticket waiting and none started, never above 0.
  for i, ticket in ipairs(queue) do
    local level = prio_level(redis.call('HGET', user_key, ticket))
    levels[i] = level
    if redis.call('HEXISTS', K_ARRIVED, 'h:' .. ticket) == 0 then
      local since = tonumber(redis.call('HGET', K_ARRIVED, ticket) or tostring(now))
      local served = tonumber(redis.call('HGET', K_PRIO, 's:' .. level) or '0')
      if served > since then since = served end
      local up = level
      if ageing > 0 then up = math.max(level - math.floor(math.max(now - since, 0) / ageing), 0) end
      if lifted[level] == nil or up < lifted[level] then lifted[level] = up end
    end
  end
  for _, ticket in ipairs(redis.call('ZRANGE', running_key, 0, -1)) do
    local person = prio_person(redis.call('HGET', user_key, ticket))
    ahead[person] = (ahead[person] or 0) + 1
  end
  for i, ticket in ipairs(queue) do
    local user = redis.call('HGET', user_key, ticket)
    local person = prio_person(user)
    local turn = ahead[person] or 0
    ahead[person] = turn + 1
    if service[person] == nil then service[person] = prio_fair(person, now) end
    local key
    if redis.call('HEXISTS', K_ARRIVED, 'h:' .. ticket) == 1 then
      key = {0, 0, 0, 0, i}
    else
      local arrived = tonumber(redis.call('HGET', K_ARRIVED, ticket) or tostring(now))
      local level = levels[i]
      if ageing > 0 then level = level - math.floor(math.max(now - arrived, 0) / ageing) end
      if level < 0 then key = {1, 0, 0, 0, i} else key = {2, lifted[levels[i]], service[person], turn, i} end
    end
    keyed[i] = {key, ticket}
  end
  table.sort(keyed, function(a, b)
    for j = 1, 5 do
      if a[1][j] ~= b[1][j] then return a[1][j] < b[1][j] end
    end
    return false
  end)
  local ordered = {}
  for i, entry in ipairs(keyed) do ordered[i] = entry[2] end
  return ordered
end
"""
