-- {number of unexpired entries, number of distinct users among them}.
local entries = live()
local users, num_users = {}, 0
for i = 2, #entries, 2 do
  local user = cjson.decode(entries[i])['u'] or ''
  if not users[user] then
    users[user] = true
    num_users = num_users + 1
  end
end
return {#entries / 2, num_users}
