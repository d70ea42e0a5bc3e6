-- Shared by the presence scripts: Redis' clock in ms (now), a bounded sweep of expired entries
-- (KEYS[1] data hash, KEYS[2] expiry zset), and live(): the unexpired entries as {id, info, ...}.
-- $${sweep} is replaced by PRESENCE_SWEEP when the scripts are loaded.
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ${sweep})
if #gone > 0 then
  redis.call('ZREM', KEYS[2], unpack(gone))
  redis.call('HDEL', KEYS[1], unpack(gone))
end
local function live()
  local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
  local out = {}
  for i = 1, #ids, 500 do
    local chunk = {unpack(ids, i, math.min(i + 499, #ids))}
    local values = redis.call('HMGET', KEYS[1], unpack(chunk))
    for j = 1, #chunk do
      if values[j] then
        out[#out + 1] = chunk[j]
        out[#out + 1] = values[j]
      end
    end
  end
  return out
end
