-- Trusted setup run before the admin's script (see hooks/api.rs).
local raw, state, config = ...
local pack, unpack, concat = table.pack, table.unpack, table.concat
local error, select, setmetatable, next, tostring, type = error, select, setmetatable, next, tostring, type
local raw_load, raw_pcall, raw_xpcall = load, pcall, xpcall
local check_time = raw.check_time

local function wrap(f)
  return function(...)
    local r = pack(f(...))
    if not r[1] then error(r[2], 0) end
    return unpack(r, 2, r.n)
  end
end

local function readonly(name, backing)
  return setmetatable({}, {
    __index = backing,
    __newindex = function(_, k)
      error(name .. " is read-only (tried to set " .. tostring(k) .. ")", 2)
    end,
    __pairs = function() return next, backing, nil end,
    __len = function() return #backing end,
    __metatable = name .. " is read-only",
  })
end

-- The time limit must win over pcall: once it has fired, every protected
-- call re-raises it.
local function stopped_check(r)
  local ok, msg = check_time()
  if not ok then error(msg, 0) end
  return unpack(r, 1, r.n)
end
pcall = function(...) return stopped_check(pack(raw_pcall(...))) end
xpcall = function(...) return stopped_check(pack(raw_xpcall(...))) end

load = function(chunk, name, _mode, ...)
  if select("#", ...) > 0 then return raw_load(chunk, name, "t", (...)) end
  return raw_load(chunk, name, "t")
end

local log_raw = wrap(raw.log)
local log = {}
for _, level in ipairs({ "debug", "info", "warn", "error" }) do
  log[level] = function(msg) log_raw(level, tostring(msg)) end
end
setmetatable(log, {
  __call = function(_, a, ...)
    if select("#", ...) > 0 then return log_raw(tostring(a), tostring((...))) end
    return log_raw("info", tostring(a))
  end,
})

print = function(...)
  local t = pack(...)
  for i = 1, t.n do t[i] = tostring(t[i]) end
  log_raw("info", concat(t, "\t", 1, t.n))
end

return {
  vip = {
    claim = wrap(raw.vip_claim),
    release = wrap(raw.vip_release),
    held = wrap(raw.vip_held),
    announce = wrap(raw.vip_announce),
  },
  service = {
    start = wrap(raw.service_start),
    stop = wrap(raw.service_stop),
    status = wrap(raw.service_status),
  },
  http = { check = wrap(raw.http_check) },
  exec = wrap(raw.exec),
  file_exists = wrap(raw.file_exists),
  log = log,
  state = readonly("twinfs.state", state),
  config = readonly("twinfs.config", config),
}
