-- Publish one publication: store it in the stream (with history) and PUBLISH it, atomically.
-- KEYS: meta, history, topic[, idempotency key]. ARGV: publish command, body, history size,
-- history TTL (ms), meta TTL (ms), fresh epoch, idempotency TTL (ms). Returns {offset, epoch, fresh}.
if KEYS[4] then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local sep = string.find(seen, ':', 1, true)
    return {tonumber(string.sub(seen, 1, sep - 1)), string.sub(seen, sep + 1), 0}
  end
end
local offset, epoch, msg = 0, '', nil
local size = tonumber(ARGV[3])
if size > 0 then
  epoch = redis.call('HGET', KEYS[1], 'e')
  if not epoch then
    epoch = ARGV[6]
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'e', epoch)
  end
  offset = redis.call('HINCRBY', KEYS[1], 's', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  msg = 'p' .. offset .. '@' .. epoch .. ':' .. ARGV[2]
  redis.call('RPUSH', KEYS[2], msg)
  redis.call('LTRIM', KEYS[2], -size, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
else
  msg = 'p0:' .. ARGV[2]
end
redis.call(ARGV[1], KEYS[3], msg)
if KEYS[4] then
  redis.call('SET', KEYS[4], offset .. ':' .. epoch, 'PX', ARGV[7])
end
return {offset, epoch, 1}
