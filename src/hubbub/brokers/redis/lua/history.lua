-- Read a stream: its position, and the publications after ARGV[1] (-1: from the start), at most ARGV[2]
-- (-1: all), newest first when ARGV[3] is 1. Creates the epoch (ARGV[4], meta TTL ARGV[5] ms) when missing.
-- KEYS: meta, history. Returns {offset, epoch[, entries]}.
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return {0, epoch}
end
local top = tonumber(redis.call('HGET', KEYS[1], 's') or 0)
local limit = tonumber(ARGV[2])
if limit == 0 then return {top, epoch} end
local len = redis.call('LLEN', KEYS[2])
local lo, hi = 0, len - 1
local since = tonumber(ARGV[1])
if since >= 0 then
  -- index 0 holds offset top - len + 1: skip the entries not after since
  lo = math.max(since - (top - len), 0)
end
if limit > 0 and hi - lo + 1 > limit then
  if ARGV[3] == '1' then lo = hi - limit + 1 else hi = lo + limit - 1 end
end
if lo > hi then return {top, epoch} end
return {top, epoch, redis.call('LRANGE', KEYS[2], lo, hi)}
