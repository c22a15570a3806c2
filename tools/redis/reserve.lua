-- reserve.lua: shardcap's `reserve` written the way flash-sale shops write it for Redis,
-- so that tools/bench-vs-redis compares like with like.
--
--   EVALSHA <sha> 1 <stock key> <reservation id> <qty> <ttl ms>
--
-- KEYS[1]  the pool's stock counter: the units still free (an integer string).
-- ARGV[1]  the reservation id chosen by the client (any string).
-- ARGV[2]  the units to hold, a positive integer.
-- ARGV[3]  how long the hold lives, in milliseconds, a positive integer.
--
-- Answers (bulk strings):
--   "ok"             the units were taken from the stock and a hold was recorded;
--   "repeat:<qty>"   a hold with this id exists already: an idempotent repeat, nothing taken
--                    again; <qty> is the quantity that hold took, so a caller can tell a true
--                    repeat from a reuse of the id with another quantity;
--   "sold_out"       the stock is smaller than qty: refused, and nothing is recorded, so the
--                    same id may succeed later (shardcap's rule too: a refusal does not burn
--                    its id).
--
-- The script runs atomically (Redis executes one script at a time), which is what keeps
-- the stock from going negative: the check and the decrement cannot be interleaved.
--
-- The hold key is derived from the stock key, "<stock key>:hold:<id>", so holds are scoped
-- to their pool and, with a hash tag in the stock key (e.g. "{tickets}:stock"), land in the
-- same Redis Cluster slot. Deriving a key inside a script is what such shops do; strict
-- Cluster hygiene would pass the hold key in KEYS as well. An expired hold simply vanishes:
-- like most Redis designs this script does not give its units back to the stock (that takes
-- keyspace notifications or a sweeper), which only makes Redis's side of the benchmark
-- cheaper, never dearer.

local stock_key = KEYS[1]
local id = ARGV[1]
local qty = tonumber(ARGV[2])
local ttl_ms = tonumber(ARGV[3])

if qty == nil or qty < 1 or qty ~= math.floor(qty) then
    return redis.error_reply('ERR qty must be a positive integer')
end
if ttl_ms == nil or ttl_ms < 1 or ttl_ms ~= math.floor(ttl_ms) then
    return redis.error_reply('ERR ttl_ms must be a positive integer')
end

local hold_key = stock_key .. ':hold:' .. id

-- An idempotent repeat: the hold exists, answer with what it took and take nothing.
local held = redis.call('GET', hold_key)
if held then
    return 'repeat:' .. held
end

-- A missing stock key counts as no stock at all.
local stock = tonumber(redis.call('GET', stock_key) or '0')
if stock < qty then
    return 'sold_out'
end

redis.call('DECRBY', stock_key, qty)
redis.call('SET', hold_key, qty, 'PX', ttl_ms)
return 'ok'
