"""The Lua scripts that keep one scope's shared rate state in a Redis hash.

Each script is one atomic step, timed by the Redis server's clock (``TIME``), so processes on
hosts whose clocks disagree still share one pace. Times are Redis seconds (floats); numbers go
back to Python as strings, since Redis turns Lua numbers into integers.

The hash of a scope holds:

=======  ===============================================================================
field    meaning
=======  ===============================================================================
init     set once the scope's limits were seeded (configured, or what a process knew)
rr rb    request pace (per second, margin applied) and burst; absent: not paced
rl rs    request limit before the margin, and where it came from (header/configured/learned)
rt       request theoretical arrival time (GCRA)
tr tb    token pace and burst; tl ts the token limit and its source; tt the token TAT
cl       ceiling for a learned request pace (a configured limit, margin applied)
bu       blocked until: no admission before this (the pause after a 429)
pb ps    when the current pause began; pauses begun since the last success
xu xr    quota exhausted until, and why
ep et    learning episode (bumped by each decrease; a 429 counts once per episode), and
         when it began
sc sa    successes, and successes at the last 429
cs       clean since: when the last 429 came (or the scope started)
rj lr    since when the provider has been rejecting; when it last rejected
pri      the rate a full budget that ran out implied at the first 429
is ip il interval start; whether calls waited in it; whether a 429 came in it
ia       calls admitted in the interval
pr st    probing (doubling) or steady increases; steady steps in a row
pd       the pace doubled since the last decrease
ss       slow start: a pace learned from nothing, doubling, that no 429 has stopped yet
sh       the slow start's history: "time,admitted so far;" at each interval
na       calls admitted so far (slots booked, the first calls included)
dm       the provider's sustained rate, as measured at the last 429 (successes while it
         was rejecting): increases stop there, and go on above it only twice per window
lat      mean call duration (seconds)
b<i>     successes admitted in bucket i of a ring of ``RING`` buckets over one window (n<i>
         is the bucket's index); only those admitted once the provider was rejecting
hd       some process has heard back from the provider (an answer of any kind)
ft fc    when the first call went, and how many went before anyone heard back
ver      bumped whenever a limit or pace changes
=======  ===============================================================================
"""

from __future__ import annotations

from typing import Final

__all__ = ["ADMIT", "EXHAUST", "RATE_LIMITED", "SET_LIMIT", "SUCCEEDED"]

#: Buckets in the ring that counts recent successes (one window long).
RING: Final = 30

_COMMON: Final = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function num(field)
  local v = redis.call('HGET', key, field)
  if v then return tonumber(v) end
  return nil
end
local function put(field, value)
  if value == nil then
    redis.call('HDEL', key, field)
  elseif type(value) == 'number' then
    redis.call('HSET', key, field, string.format('%.17g', value))
  else
    redis.call('HSET', key, field, value)
  end
end
-- GCRA: seconds until `cost` units may go (0: at once).
local function delay(tat, rate, burst, cost)
  if rate == nil or cost <= 0 then return 0 end
  tat = tat or now
  local tolerance = math.max(0, burst - cost) / rate
  return math.max(0, math.max(tat, now) - now - tolerance)
end
local function burst_of(rate, burst_seconds)
  return math.max(1, rate * burst_seconds)
end
-- Change a dimension's pace, keeping what may go at once (capped at the new burst).
local function repace(prefix, rate, burst_seconds, available_now)
  local old = num(prefix .. 'r')
  local old_burst = num(prefix .. 'b') or 1
  local tat = num(prefix .. 't') or now
  local new_burst = burst_of(rate, burst_seconds)
  if old == nil then
    -- Newly paced: start gently, one unit at once, unless the provider said how much of
    -- its budget is left (then up to a burst of that goes at once).
    local available = math.min(new_burst, math.max(1, available_now or 1))
    tat = now + (new_burst - available) / rate
  else
    local available = math.min(old_burst - math.max(0, tat - now) * old, new_burst)
    tat = now + (new_burst - available) / rate
  end
  put(prefix .. 'r', rate)
  put(prefix .. 'b', new_burst)
  put(prefix .. 't', tat)
  redis.call('HINCRBY', key, 'ver', 1)
end
local function set_limit(prefix, limit, source, margin, burst_seconds, available_now)
  local pace = limit
  if source ~= 'learned' then pace = limit * (1 - margin) end
  put(prefix .. 'l', limit)
  put(prefix .. 's', source)
  repace(prefix, pace, burst_seconds, available_now)
  return pace
end
local function refund(prefix, cost)
  local rate = num(prefix .. 'r')
  if rate == nil or cost <= 0 then return end
  put(prefix .. 't', (num(prefix .. 't') or now) - cost / rate)
end
local function charge(prefix, cost)
  local rate = num(prefix .. 'r')
  if rate == nil or cost <= 0 then return end
  put(prefix .. 't', math.max(num(prefix .. 't') or now, now) + cost / rate)
end
local RING = __RING__
local FIRST_CALLS = 4
local FIRST_WAIT = 5.0
local SLOW_START_HORIZON = 0.01
local EPISODE_GRACE = 0.1
local SLOW_START_GROWTH = 1.5
-- Bytes of slow-start history kept (about 100 intervals).
local SLOW_START_HISTORY = 2400
local function heard() redis.call('HSET', key, 'hd', '1') end
local function ring_width(window) return window / RING end
-- Successes counted (by admission time) in [start, finish].
local function successes_between(window, start, finish)
  local width = ring_width(window)
  local newest = math.floor(now / width)
  local count = 0
  for i = 0, RING - 1 do
    local index = newest - i
    local slot = index % RING
    if tonumber(redis.call('HGET', key, 'n' .. slot) or -1) == index then
      local bucket_start = index * width
      if bucket_start + width > start and bucket_start <= finish then
        count = count + tonumber(redis.call('HGET', key, 'b' .. slot) or 0)
      end
    end
  end
  return count
end
-- Successes are counted by when they were admitted (`at`): those admitted before the
-- provider started rejecting came out of a full budget and say nothing about its refill.
local function record_success(window, count, at)
  local index = math.floor(at / ring_width(window))
  local slot = index % RING
  if tonumber(redis.call('HGET', key, 'n' .. slot) or -1) ~= index then
    redis.call('HSET', key, 'n' .. slot, index, 'b' .. slot, 0)
  end
  redis.call('HINCRBY', key, 'b' .. slot, count)
end
local function touch(ttl)
  redis.call('PEXPIRE', key, math.floor(ttl * 1000))
end
""".replace("__RING__", str(RING))

#: KEYS: hash, process set. ARGV: tokens, horizon, process id, heartbeat (0/1), liveness,
#: configured rpm limit/s (0: none), configured tpm limit/s, margin, burst seconds, window,
#: increase fraction, seed request pace, seed request source, seed token pace, seed token
#: source, idle ttl, slots wanted, hold (seconds the pacing leaves to processes still pacing
#: alone when the store is found empty).
#: Returns {status, seconds, now, episode, request pace, request source, token pace,
#: token source, processes, reason, delays}: status 0 admitted (``delays``: one per slot
#: booked, each ``tokens``; the first is ``seconds``), 1 wait ``seconds`` and ask again
#: (nothing booked), 2 quota exhausted.
ADMIT: Final = (
    _COMMON
    + """
local tokens = tonumber(ARGV[1])
local horizon = tonumber(ARGV[2])
local margin = tonumber(ARGV[8])
local burst_seconds = tonumber(ARGV[9])
local window = tonumber(ARGV[10])
local increase = tonumber(ARGV[11])
local processes = -1
if ARGV[4] == '1' then
  local procs = KEYS[2]
  redis.call('ZADD', procs, now, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', procs, '-inf', now - tonumber(ARGV[5]))
  redis.call('PEXPIRE', procs, math.floor(tonumber(ARGV[16]) * 1000))
  processes = redis.call('ZCARD', procs)
end
if not redis.call('HGET', key, 'init') then
  redis.call('HSET', key, 'init', '1', 'cs', tostring(now), 'is', tostring(now), 'ep', '0',
             'sc', '0', 'sa', '0', 'ps', '0')
  local rpm, tpm = tonumber(ARGV[6]), tonumber(ARGV[7])
  if rpm > 0 then
    put('cl', set_limit('r', rpm, 'configured', margin, burst_seconds))
  end
  if tpm > 0 then set_limit('t', tpm, 'configured', margin, burst_seconds) end
  -- A process that knew the limits (the store was lost and restarted) seeds them.
  local seed_r, seed_t = tonumber(ARGV[12]), tonumber(ARGV[14])
  if seed_r > 0 then
    put('rl', seed_r)
    put('rs', ARGV[13])
    repace('r', seed_r, burst_seconds)
  end
  if seed_t > 0 then
    put('tl', seed_t)
    put('ts', ARGV[15])
    repace('t', seed_t, burst_seconds)
  end
  -- The store came back empty: the processes that have not noticed yet still pace alone,
  -- at their shares, for up to `hold` seconds. Leave them that room.
  local hold = tonumber(ARGV[18])
  if hold > 0 then
    -- Then a gentle start: one unit at once, not a burst.
    for _, prefix in ipairs({'r', 't'}) do
      local rate = num(prefix .. 'r')
      if rate then
        local gentle = now + hold + math.max(0, (num(prefix .. 'b') or 1) - 1) / rate
        put(prefix .. 't', math.max(num(prefix .. 't') or now, gentle))
      end
    end
  end
end
touch(tonumber(ARGV[16]))
local function answer(status, seconds, reason)
  return {status, tostring(seconds), tostring(now), redis.call('HGET', key, 'ep') or '0',
          redis.call('HGET', key, 'rr') or '', redis.call('HGET', key, 'rs') or '',
          redis.call('HGET', key, 'tr') or '', redis.call('HGET', key, 'ts') or '',
          processes, reason or ''}
end
local exhausted = num('xu')
if exhausted and now < exhausted then
  return answer(2, 0, redis.call('HGET', key, 'xr') or '')
end
local blocked = num('bu')
if blocked and now < blocked then
  return answer(1, blocked - now)
end
-- A scope nobody has heard back from yet (no limit known, no answer of any kind) lets a
-- few calls go and waits for the first answer: its headers, or its 429, tell every
-- process what the limit is before they all send into it. Bounded: after FIRST_WAIT
-- seconds without an answer, calls go anyway.
if not redis.call('HGET', key, 'hd') and not num('rr') and not num('tr') then
  local first = num('ft')
  if first == nil then
    first = now
    put('ft', now)
  end
  if now - first < FIRST_WAIT then
    if (num('fc') or 0) >= FIRST_CALLS then
      return answer(1, 0.02)
    end
    redis.call('HINCRBY', key, 'fc', 1)
    redis.call('HINCRBY', key, 'na', 1)
    local reply = answer(0, 0)
    reply[11] = {'0'}
    return reply
  end
end
-- Heard back without a limit (no headers) and never rejected: a slow start, as TCP's. The
-- pace begins at twice the first calls' rate (they went through in one call duration) and
-- doubles every call duration in which calls waited, until the provider's first 429.
-- What was admitted when is kept (`sh`) for the estimate at that 429. Unpaced instead,
-- every worker of every process sends into the provider's budget at once, and a whole
-- round of calls is rejected before the first 429 can stop them.
if redis.call('HGET', key, 'hd') and not num('rr') and not num('tr')
   and not redis.call('HGET', key, 'lr') then
  local latency = num('lat') or 1
  local start = math.max(2 * FIRST_CALLS / math.max(latency, 0.01), 1 / 60)
  put('rl', start)
  put('rs', 'learned')
  repace('r', start, burst_seconds)
  redis.call('HSET', key, 'pr', '1', 'ss', '1', 'is', tostring(now), 'ip', '0', 'il', '0',
             'ia', '0', 'sh', string.format('%.4f,%d;', now, num('na') or 0))
end
-- Increases of a learned pace, once per interval in which calls waited and no 429 came.
local rate = num('rr')
if rate and redis.call('HGET', key, 'rs') == 'learned' then
  local latency = num('lat') or 0
  local probing = redis.call('HGET', key, 'pr') == '1'
  local interval = math.max(latency, math.min(2 / rate, 0.5))
  if not probing then interval = math.max(window * 0.1, interval) end
  -- Below the rate the provider demonstrated, increases stop there; above it (it has not
  -- rejected for a while), they come twice per window: enough for a limit that was raised,
  -- without spending its budget in a few seconds and running into it at a high pace.
  local held = num('dm')
  if held then held = held * (1 - margin) end
  local above = held and rate >= held
  if above then interval = math.max(interval, window / 2) end
  local started = num('is') or now
  if now - started >= interval then
    -- Raised only when the pace held calls back: calls waited for it, and at least half
    -- of what it allowed was taken. A pace the processes do not use says nothing about
    -- the provider, and raising it only makes a bigger burst once they do.
    local used = (num('ia') or 0) >= 0.5 * rate * (now - started)
    if used and redis.call('HGET', key, 'ip') == '1' and redis.call('HGET', key, 'il') ~= '1' then
      local raised
      if probing and not above then
        -- A slow start grows by half each time: when it finds the limit, the calls booked
        -- meanwhile are rejected, and they are fewer the slower it went.
        raised = rate * 2
        if redis.call('HGET', key, 'ss') == '1' then raised = rate * SLOW_START_GROWTH end
        put('pd', 1)
      else
        raised = rate + math.max(rate * increase, 1 / 60)
      end
      local ceiling = num('cl')
      if ceiling and raised > ceiling then raised = ceiling end
      if held and not above and raised > held then raised = held end
      if raised > rate then
        put('rl', raised)
        repace('r', raised, burst_seconds)
      end
    end
    redis.call('HSET', key, 'is', tostring(now), 'ip', '0', 'il', '0', 'ia', '0')
    local history = redis.call('HGET', key, 'sh')
    if redis.call('HGET', key, 'ss') == '1' and history and #history < SLOW_START_HISTORY then
      put('sh', history .. string.format('%.4f,%d;', now, num('na') or 0))
    end
  end
end
-- While a slow start probes for the provider's limit, book little ahead: calls booked
-- ahead still go after the first 429, into a budget that just ran out.
if redis.call('HGET', key, 'ss') == '1' then horizon = math.min(horizon, SLOW_START_HORIZON) end
local request_rate, token_rate = num('rr'), num('tr')
local request_burst, token_burst = num('rb') or 1, num('tb') or 1
local request_tat, token_tat = num('rt') or now, num('tt') or now
-- Up to `wanted` slots (one per call waiting in the process), each within the horizon.
local wanted = tonumber(ARGV[17])
local delays = {}
local wait = 0
while #delays < wanted do
  wait = math.max(
    delay(request_tat, request_rate, request_burst, 1),
    delay(token_tat, token_rate, token_burst, tokens))
  if wait > horizon then break end
  if request_rate then request_tat = math.max(request_tat, now) + 1 / request_rate end
  if token_rate and tokens > 0 then
    token_tat = math.max(token_tat, now) + tokens / token_rate
  end
  delays[#delays + 1] = tostring(wait)
end
if #delays == 0 then
  put('ip', 1)
  return answer(1, wait - horizon)
end
if request_rate then put('rt', request_tat) end
if token_rate then put('tt', token_tat) end
redis.call('HINCRBY', key, 'na', #delays)
redis.call('HINCRBY', key, 'ia', #delays)
if tonumber(delays[#delays]) > 0 then put('ip', 1) end
local reply = answer(0, delays[1])
reply[11] = delays
return reply
"""
)

#: KEYS: hash. ARGV: successes, tokens used beyond what they booked (negative: unused),
#: their mean duration (-1: no successes), window, failures.
SUCCEEDED: Final = (
    _COMMON
    + """
local successes, extra = tonumber(ARGV[1]), tonumber(ARGV[2])
if successes > 0 or tonumber(ARGV[5]) > 0 then heard() end
if successes > 0 then
  redis.call('HINCRBY', key, 'sc', successes)
  redis.call('HSET', key, 'ps', '0')
  local duration = tonumber(ARGV[3])
  local since = num('rj')
  if since and now - duration >= since then
    record_success(tonumber(ARGV[4]), successes, now - duration)
  end
  local latency = num('lat')
  if latency == nil then latency = duration else latency = latency + 0.2 * (duration - latency) end
  put('lat', latency)
end
-- What the calls used replaces what they booked, both ways: the processes cannot read the
-- provider's remaining budget together, so an estimate's unused part is given back here.
if extra > 0 then charge('t', extra) elseif extra < 0 then refund('t', -extra) end
return 1
"""
)

#: KEYS: hash. ARGV: retry hint seconds (-1: none), admission episode, admitted at (Redis
#: seconds), booked tokens, window, decrease factor, burst seconds, margin.
#: Returns {pause seconds, request pace, request source}.
RATE_LIMITED: Final = (
    _COMMON
    + """
local hint = tonumber(ARGV[1])
local admission_episode = tonumber(ARGV[2])
local admitted_at = tonumber(ARGV[3])
local window = tonumber(ARGV[5])
local decrease = tonumber(ARGV[6])
local burst_seconds = tonumber(ARGV[7])
local margin = tonumber(ARGV[8])
-- The least rate r for which a budget of r * window, full at the first point and refilled
-- at r, lets through what was admitted between the points ({time, admitted so far}, calls
-- spread evenly in between). That is the provider's rate if its budget ran out at the last
-- point, the first rejection: more would have let that call through too, less would have
-- rejected one earlier. Per-window budgets start full (OpenAI's, Anthropic's, Gemini's).
local function bucket_rate(points, window)
  local total = points[#points][2] - points[1][2]
  local function holds(r)
    local cap = r * window
    local level = cap
    for i = 2, #points do
      level = level + r * (points[i][1] - points[i - 1][1]) - (points[i][2] - points[i - 1][2])
      if level < 0 then return false end
      if level > cap then level = cap end
    end
    return true
  end
  local low, high = 0, math.max(total, 1) / window
  for _ = 1, 40 do
    local middle = (low + high) / 2
    if holds(middle) then high = middle else low = middle end
  end
  return high
end
if not redis.call('HGET', key, 'init') then
  -- The store was lost since this call was admitted: nothing to learn from.
  return {'0', '', ''}
end
heard()
redis.call('HSET', key, 'il', '1', 'st', '0')
local succeeded = num('sc') or 0
local clean = succeeded - (num('sa') or 0)
local rate = num('rr')
if rate == nil and clean >= 20 then
  put('pri', clean / (window + math.max(0, now - (num('cs') or now))))
  put('rj', now)
elseif now - (num('lr') or -1e18) > window then
  put('rj', now)
end
put('lr', now)
put('sa', succeeded)
put('cs', now)
refund('t', tonumber(ARGV[4]))
local source = redis.call('HGET', key, 'rs')
local episode = num('ep') or 0
-- Calls admitted just after a decrease still meet the budget that the calls booked before
-- it emptied: their 429s belong to the episode before.
local fresh = admitted_at >= (num('et') or -1e18) + EPISODE_GRACE
local ran_out = false
if source ~= 'header' and admission_episode == episode and fresh then
  redis.call('HSET', key, 'ep', tostring(episode + 1), 'et', tostring(now))
  local since = num('rj')
  local latency = num('lat') or 0
  local demonstrated = nil
  local floor = 0
  if since then
    local start = math.max(since, now - window)
    local span = (now - latency) - start
    if span > math.max(latency, 0.05) then
      local count = successes_between(window, start, now - latency)
      if count >= 3 then demonstrated = count / span end
    end
    floor = successes_between(window, start, now) / window
  end
  local target = nil
  if rate == nil then
    local prior = num('pri')
    if demonstrated and prior then target = math.max(demonstrated, prior)
    else target = demonstrated or prior end
    if target == nil then
      -- Rejected before anything was learned (with many processes the first 429s come
      -- back before the first success does): restart slowly, one request per retry hint
      -- (or per fallback pause), and probe upwards, as TCP's slow start does. Sending
      -- unpaced instead makes every process retry into the empty bucket after each pause.
      local start = 0.25
      if hint >= 0 then start = math.max(hint, 0.001) end
      target = 1 / start
    end
    put('pr', 1)
  elseif redis.call('HGET', key, 'ss') == '1' then
    -- The slow start's first 429: the provider's budget ran out, just as this call was
    -- admitted. (The calls admitted after it are estimated at the interval's rate.)
    local since = num('ia') or 0
    local span = now - (num('is') or now)
    local share = 1
    if span > 0 then share = math.min(1, math.max(0, now - admitted_at) / span) end
    local before = (num('na') or 0) - since * share
    local points = {{num('ft') or admitted_at, 0}}
    for t, n in string.gmatch(redis.call('HGET', key, 'sh') or '', '([^,;]+),([^;]+);') do
      points[#points + 1] = {tonumber(t), tonumber(n)}
    end
    points[#points + 1] = {admitted_at, math.max(0, before)}
    target = bucket_rate(points, window)
    if demonstrated then target = math.max(target, demonstrated) end
    -- Never above the pace before the last increase, which went through.
    target = math.min(target, rate / SLOW_START_GROWTH)
    -- Above the estimate, increases come twice per window. Below it for a moment, so that
    -- the provider's budget recovers from the calls booked before this 429 came back.
    put('dm', target)
    target = target * decrease
    ran_out = true
    redis.call('HSET', key, 'ss', '0', 'pr', '0')
    redis.call('HDEL', key, 'sh')
  elseif redis.call('HGET', key, 'pr') == '1' and redis.call('HGET', key, 'pd') == '1' then
    -- A probe overshot: back to the pace before the last doubling, which went through,
    -- or just below what the provider let through while it rejected, when that is more.
    target = rate / 2
    if demonstrated then
      target = math.min(rate, math.max(target, demonstrated * (1 - margin)))
      put('dm', demonstrated)
    end
    put('pr', 0)
  else
    target = rate * decrease
    if demonstrated then
      -- What the provider let through while rejecting is its sustained rate: pace just
      -- below it (the margin), so that its budget refills a little instead of running
      -- out again at the next increase.
      target = math.min(rate, math.max(target, demonstrated * (1 - margin)))
      put('dm', demonstrated)
    elseif num('dm') then
      -- Not measured this time: the pace that was just rejected is too fast, at least.
      put('dm', math.min(num('dm'), rate))
    end
    put('pr', 0)
  end
  if target then
    target = math.max(target, floor, 1 / 60)
    local ceiling = num('cl')
    if ceiling and target > ceiling then target = ceiling end
    put('rl', target)
    put('rs', 'learned')
    repace('r', target, burst_seconds)
  end
  redis.call('HSET', key, 'is', tostring(now), 'ip', '0', 'il', '0', 'ia', '0', 'pd', '0')
end
if admitted_at > (num('pb') or -1e18) then
  redis.call('HINCRBY', key, 'ps', 1)
  put('pb', now)
end
local pace = num('rr')
local pause
if hint >= 0 then
  pause = hint
  -- The calls booked before the slow start's first 429 came back are still arriving into
  -- the empty budget: their retries wait until they are through.
  if ran_out then pause = math.max(pause, EPISODE_GRACE) end
else
  if pace == nil then pause = 0.25 else pause = 2 / pace end
  local doublings = math.min((num('ps') or 1) - 1, 16)
  pause = math.min(math.max(pause, pause * 2 ^ doublings), 60)
end
local until_ = now + pause
if until_ > (num('bu') or -1e18) then
  put('bu', until_)
  -- After the pause, restart gently: one request at once.
  if pace then
    put('rt', math.max(num('rt') or now, until_ + math.max(0, (num('rb') or 1) - 1) / pace))
  end
end
return {tostring(pause), redis.call('HGET', key, 'rr') or '', redis.call('HGET', key, 'rs') or ''}
"""
)

#: KEYS: hash. ARGV: seconds the exhaustion lasts, reason.
EXHAUST: Final = (
    _COMMON
    + """
put('xu', now + tonumber(ARGV[1]))
put('xr', ARGV[2])
return 1
"""
)

#: KEYS: hash. ARGV: dimension prefix ('r' or 't'), limit per second, margin, burst seconds,
#: what remains of the provider's budget (-1: not said).
#: A provider's header limit replaces a configured or learned one.
SET_LIMIT: Final = (
    _COMMON
    + """
heard()
local prefix = ARGV[1]
local limit = tonumber(ARGV[2])
local current = num(prefix .. 'l')
if redis.call('HGET', key, prefix .. 's') == 'header' and current
   and math.abs(current - limit) <= 0.02 * limit then
  return 0
end
-- What the provider has left, less the calls that went before anyone heard back (they
-- may not be counted in it yet).
local remaining = tonumber(ARGV[5])
local available = nil
if remaining >= 0 then available = remaining - (num('fc') or 0) end
set_limit(prefix, limit, 'header', tonumber(ARGV[3]), tonumber(ARGV[4]), available)
if prefix == 'r' then redis.call('HDEL', key, 'cl', 'ss', 'dm') end
return 1
"""
)
