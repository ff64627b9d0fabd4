"""The Lua scripts of RedisAdmission, one per operation.

Each script is the shared PRELUDE followed by its body. The prelude reads
Redis's own clock (`TIME`, milliseconds) and first drops every ticket whose
lease deadline has passed (deadline <= now) and the room report of every
process whose own lease has passed; so a killed process's slots come back
with the next operation of any process, and no process compares its own
clock with another's. Scripts run atomically, and Redis 7 replicates them by
their effects, so reading `TIME` in them is safe (Redis docs, "Scripting
with Lua"). The algorithm is Redis in Action §6.3's fair semaphore with
refreshed leases, plus a queue of waiting tickets (arrival order, or the
start order of priority_scripts.FUNCTIONS, put before the prelude)
(../shared/design/global-queue.md); the rules are those of
generation.runtime.admission.base, mirrored by LocalAdmission.

KEYS (all under one hash tag, built by RedisAdmission):
  1 queue    sorted set  waiting ticket -> arrival sequence number
  2 running  sorted set  running ticket -> start time (ms)
  3 leases   sorted set  ticket -> lease deadline (ms), waiting and running
  4 owner    hash        ticket -> process
  5 user     hash        ticket -> user (as counted_user names it: "7", "7:api");
                         "" for a spare (see SPARES below), which counts against nobody
  6 users    hash        user -> waiting + running tickets
  7 seq      string      the last arrival sequence number
  8 limits   hash        max_concurrency, max_queue_size, max_active_per_user,
                         max_active_api_per_user
  9 rooms    hash        process -> room it last reported (requests it can start)
 10 procs    sorted set  process -> lease deadline (ms) of its room report
 11-13       the start order's keys (issue #15): see priority_scripts
ARGV: 1 the wake-up channel, 2 the lease (ms), then the operation's own.
"""

PRELUDE = """
local K_QUEUE, K_RUNNING, K_LEASES, K_OWNER, K_USER = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_USERS, K_SEQ, K_LIMITS, K_ROOMS, K_PROCS = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local WAKE, LEASE = ARGV[1], tonumber(ARGV[2])

local function limit(name)
  return tonumber(redis.call('HGET', K_LIMITS, name) or '0')
end

local function drop(ticket)
  local user = redis.call('HGET', K_USER, ticket)
  if not user then return false end
  redis.call('HDEL', K_OWNER, ticket)
  redis.call('HDEL', K_USER, ticket)
  redis.call('ZREM', K_QUEUE, ticket)
  redis.call('ZREM', K_RUNNING, ticket)
  redis.call('ZREM', K_LEASES, ticket)
  if user ~= '' and redis.call('HINCRBY', K_USERS, user, -1) <= 0 then redis.call('HDEL', K_USERS, user) end
  prio_forget(ticket) -- issue #15 (priority_scripts)
  return true
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now)
for _, ticket in ipairs(expired) do drop(ticket) end
for _, process in ipairs(redis.call('ZRANGEBYSCORE', K_PROCS, '-inf', now)) do
  redis.call('HDEL', K_ROOMS, process)
  redis.call('ZREM', K_PROCS, process)
end
if #expired > 0 then redis.call('PUBLISH', WAKE, 'reaped') end
local deadline = now + LEASE

-- `process` can start `room` more requests: its room report, whose lease
-- is renewed.
local function report_room(process, room)
  redis.call('HSET', K_ROOMS, process, room)
  redis.call('ZADD', K_PROCS, deadline, process)
end

-- Spares: grant `process` the ids ARGV[first..] as spare slots, at most
-- `free` of them, while nobody waits and every other living process (one
-- with a room report) that holds no spare of its own could still start one
-- request at once; then report its room, `free` less those granted.
-- Returns those granted.
local function grant(process, first, free)
  local granted = {}
  if redis.call('ZCARD', K_QUEUE) == 0 then
    local holders = {}
    for _, held in ipairs(redis.call('ZRANGE', K_RUNNING, 0, -1)) do
      if redis.call('HGET', K_USER, held) == '' then holders[redis.call('HGET', K_OWNER, held)] = true end
    end
    local others = 0
    for _, other in ipairs(redis.call('ZRANGE', K_PROCS, 0, -1)) do
      if other ~= process and not holders[other] then others = others + 1 end
    end
    local cap = limit('max_concurrency') - others
    for i = first, #ARGV do
      if #granted >= free or redis.call('ZCARD', K_RUNNING) >= cap then break end
      if redis.call('HEXISTS', K_OWNER, ARGV[i]) == 0 then
        redis.call('HSET', K_OWNER, ARGV[i], process)
        redis.call('HSET', K_USER, ARGV[i], '')
        redis.call('ZADD', K_LEASES, deadline, ARGV[i])
        redis.call('ZADD', K_RUNNING, now, ARGV[i])
        granted[#granted + 1] = ARGV[i]
      end
    end
  end
  report_room(process, free - #granted)
  return granted
end
"""

# ARGV 3 ticket, 4 process, 5 user (counted_user: the source's count), 6 local
# room, 7-9 the caller's cap, queue size and per-user limit (used only where
# the limits key lacks them), 10 '1' for a request taken while Redis was away
# (no busy or queue_full check), 11 the caller's API per-user limit (as 7-9),
# 12 the name of the limit that counts this ticket's user (max_active_per_user
# or max_active_api_per_user: Limits.PER_USER_FIELD), 13... ids of spares the
# process would like (granted only when the ticket is admitted).
# Returns {'admitted', spare...}, {'waiting', position, waiting}, {'busy'},
# {'queue_full'} or {'known'}.
ENQUEUE = """
local ticket, process, user, free = ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local rejoin = ARGV[10] == '1'
if redis.call('HEXISTS', K_OWNER, ticket) == 1 then return {'known'} end
redis.call('HSETNX', K_LIMITS, 'max_concurrency', ARGV[7])
redis.call('HSETNX', K_LIMITS, 'max_queue_size', ARGV[8])
redis.call('HSETNX', K_LIMITS, 'max_active_per_user', ARGV[9])
redis.call('HSETNX', K_LIMITS, 'max_active_api_per_user', ARGV[11])
report_room(process, free)
if not rejoin and tonumber(redis.call('HGET', K_USERS, user) or '0') >= limit(ARGV[12]) then
  return {'busy'}
end
local waiting = redis.call('ZCARD', K_QUEUE)
local function hold()
  redis.call('HSET', K_OWNER, ticket, process)
  redis.call('HSET', K_USER, ticket, user)
  prio_arrive(ticket, user, K_USER, now) -- issue #15 (priority_scripts)
  redis.call('HINCRBY', K_USERS, user, 1)
  redis.call('ZADD', K_LEASES, deadline, ticket)
end
if waiting == 0 and free > 0 and redis.call('ZCARD', K_RUNNING) < limit('max_concurrency') then
  hold()
  redis.call('ZADD', K_RUNNING, now, ticket)
  prio_started(user, now) -- issue #15 (priority_scripts)
  return {'admitted', unpack(grant(process, 13, free - 1))}
end
if not rejoin and waiting >= limit('max_queue_size') then return {'queue_full'} end
hold()
redis.call('ZADD', K_QUEUE, redis.call('INCR', K_SEQ), ticket)
redis.call('PUBLISH', WAKE, 'enqueued')
-- The place in the start order (issue #15: priority_scripts; arrival order without classes).
local position = waiting + 1
for i, queued in ipairs(waiting_order(K_QUEUE, K_RUNNING, K_USER, now)) do
  if queued == ticket then position = i end
end
return {'waiting', position, waiting + 1}
"""

# Spares (issue #11's start path without a round trip): a spare is a slot
# granted to a process for a request it has not received yet, a running
# ticket with user "" that counts against the cap and nobody's per-user
# limit. The process starts its next request on it at once and then BINDs
# it. Granted only while nobody waits, so a spare is an arrival that came
# before every ticket now waiting; its process gives it back (RELEASE) as
# soon as it hears that a ticket waits or the limits changed. Granted with an
# ENQUEUE that admits, a BIND, or a SPARE (after a release; a process also
# calls it when it starts, to report its room, so that others leave it one).
#
# ARGV 3 spare, 4 ticket, 5 process, 6 user (counted_user), 7 the name of
# the user's per-user limit, 8 the process's room now (the ticket already
# started), 9... ids of further spares it would like.
# Returns {'bound', spare...} (the ticket holds the spare's slot), {'busy'}
# (the slot is freed) or {'gone'} (the spare's lease ran out).
BIND = """
local spare, ticket, process, user = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('HGET', K_OWNER, spare) ~= process or redis.call('HGET', K_USER, spare) ~= '' then
  return {'gone'}
end
drop(spare)
if tonumber(redis.call('HGET', K_USERS, user) or '0') >= limit(ARGV[7]) then
  redis.call('PUBLISH', WAKE, 'released')
  return {'busy'}
end
redis.call('HSET', K_OWNER, ticket, process)
redis.call('HSET', K_USER, ticket, user)
prio_arrive(ticket, user, K_USER, now) -- issue #15 (priority_scripts)
redis.call('HINCRBY', K_USERS, user, 1)
redis.call('ZADD', K_LEASES, deadline, ticket)
redis.call('ZADD', K_RUNNING, now, ticket)
prio_started(user, now) -- issue #15 (priority_scripts)
return {'bound', unpack(grant(process, 9, tonumber(ARGV[8])))}
"""

# ARGV 3 process, 4 its room now, 5... ids of the spares it would like.
# Returns those granted.
SPARE = """
return grant(ARGV[3], 5, tonumber(ARGV[4]))
"""

# ARGV 3 process, 4 its room now. Returns the tickets it starts, in order.
CLAIM = """
local process, free = ARGV[3], tonumber(ARGV[4])
local started = {}
local slots = limit('max_concurrency') - redis.call('ZCARD', K_RUNNING)
local room = {[process] = free}
if slots > 0 then
  for _, ticket in ipairs(waiting_order(K_QUEUE, K_RUNNING, K_USER, now)) do
    local owner = redis.call('HGET', K_OWNER, ticket)
    local left = room[owner]
    if left == nil then left = tonumber(redis.call('HGET', K_ROOMS, owner) or '0') end
    if left > 0 then
      left = left - 1
      slots = slots - 1
      if owner == process then started[#started + 1] = ticket end
    end
    room[owner] = left
    if slots <= 0 then break end
  end
end
for _, ticket in ipairs(started) do
  redis.call('ZREM', K_QUEUE, ticket)
  redis.call('ZADD', K_RUNNING, now, ticket)
  prio_head(ticket, false)
  prio_started(redis.call('HGET', K_USER, ticket), now) -- issue #15 (priority_scripts)
end
-- The queue moved: the other processes' positions change.
if #started > 0 then redis.call('PUBLISH', WAKE, 'claimed') end
report_room(process, free - #started)
return started
"""

# ARGV 3 ticket. Returns 1 when it was known, else 0.
RELEASE = """
if drop(ARGV[3]) then
  redis.call('PUBLISH', WAKE, 'released')
  return 1
end
return 0
"""

# ARGV 3 ticket. Back to the head of the queue: one below the lowest waiting
# sequence number (sequence numbers may go below 1). Returns 1 when it was running.
DEFER = """
local ticket = ARGV[3]
if not redis.call('ZSCORE', K_RUNNING, ticket) then return 0 end
local head = redis.call('ZRANGE', K_QUEUE, 0, 0, 'WITHSCORES')
local seq = head[2] and tonumber(head[2]) - 1 or redis.call('INCR', K_SEQ)
redis.call('ZREM', K_RUNNING, ticket)
redis.call('ZADD', K_QUEUE, seq, ticket)
prio_head(ticket, true)
redis.call('PUBLISH', WAKE, 'deferred')
return 1
"""

# ARGV 3 process, 4... its tickets. Returns those that are not its any more.
RENEW = """
local process = ARGV[3]
if redis.call('HEXISTS', K_ROOMS, process) == 1 then redis.call('ZADD', K_PROCS, deadline, process) end
local gone = {}
for i = 4, #ARGV do
  if redis.call('HGET', K_OWNER, ARGV[i]) == process then
    redis.call('ZADD', K_LEASES, deadline, ARGV[i])
  else
    gone[#gone + 1] = ARGV[i]
  end
end
return gone
"""

# ARGV 3 process. Returns {waiting, {ticket, position, ...}}.
POSITIONS = """
local queue = waiting_order(K_QUEUE, K_RUNNING, K_USER, now) -- issue #15: start order
local mine = {}
for i, ticket in ipairs(queue) do
  if redis.call('HGET', K_OWNER, ticket) == ARGV[3] then
    mine[#mine + 1] = ticket
    mine[#mine + 1] = i
  end
end
return {#queue, mine}
"""

# ARGV 3-6 cap, queue size, per-user limit, API per-user limit.
SET_LIMITS = """
redis.call('HSET', K_LIMITS, 'max_concurrency', ARGV[3], 'max_queue_size', ARGV[4],
  'max_active_per_user', ARGV[5], 'max_active_api_per_user', ARGV[6])
redis.call('PUBLISH', WAKE, 'limits')
return 1
"""

# Returns {{ticket, process, user, ...} waiting in order, {...} running,
# {user, count, ...}, cap}.
SNAPSHOT = """
local function owned(tickets)
  local out = {}
  for _, ticket in ipairs(tickets) do
    out[#out + 1] = ticket
    out[#out + 1] = redis.call('HGET', K_OWNER, ticket)
    out[#out + 1] = redis.call('HGET', K_USER, ticket)
  end
  return out
end
return {owned(redis.call('ZRANGE', K_QUEUE, 0, -1)), owned(redis.call('ZRANGE', K_RUNNING, 0, -1)),
  redis.call('HGETALL', K_USERS), limit('max_concurrency')}
"""
