-- /etc/twinfs/failover.lua: what twinfs does when this node becomes primary
-- or stops being primary. This default keeps an Apache site up on the
-- virtual IP, like haresources' "IPaddr::10.0.0.10/24/eth0 apache2".
-- Copy it and edit it; `twinfs hooks check FILE` checks your copy and
-- `twinfs hooks dry-run promote` shows what it would do, without doing it.
--
-- Settings come from the [failover] table of /etc/twinfs/twinfs.toml:
--   vip       = "10.0.0.10/24"   the virtual IP (required)
--   interface = "eth0"           where the VIP goes (required)
--   service   = "apache2"        optional; default: apache2 (Debian) or httpd (RHEL)
--   check_url = "http://10.0.0.10/"  optional; default: http://<vip>/
--
-- Both servers serving ([standby] serve = true in twinfs.toml, the same on
-- both nodes): the secondary mounts its replica read-only and its Apache
-- serves reads that the primary's balancer sends it (`twinfs apache-conf`
-- writes that site). Then on_demote releases the VIP but keeps the web
-- server running (starting it if needed), and a node starting as secondary
-- starts it too; on_promote is the same in both modes. With serve = false
-- (the default), the secondary runs no web server: on_demote stops it.
-- The hooks read the setting as twinfs.state.standby_serves.
--
-- Hooks (define the ones you need; a missing one does nothing):
--   on_promote()  on_demote()  on_peer_lost()  on_peer_back()  on_split_brain()
--   on_fence()  (optional: defined only where a fence device exists; see the end)
--
-- The twinfs API (errors carry this file's name and line; catch with pcall):
--   twinfs.vip.claim{address=, interface=, allow_conflict=false}
--       -> {already_held, announcements, conflict}; address/interface default
--          to the config; another host answering for the address is an error
--   twinfs.vip.release{...}   twinfs.vip.held{...} -> bool
--   twinfs.vip.announce{...} -> number of gratuitous ARPs sent
--   twinfs.service.start(name)  .stop(name)  .status(name) -> "running"|"stopped"
--   twinfs.http.check{url=, expect=200, contains=nil, timeout=5, retries=0, interval=1}
--       -> true, status (raises after the last failed try)
--   twinfs.exec{argv={"/path/prog", "arg"}, timeout=10, check=true}
--       -> {code, stdout, stderr, timed_out} (no shell; non-zero exit raises)
--   twinfs.file_exists(path) -> bool
--   twinfs.log.info(msg) .warn(msg) .error(msg) .debug(msg), twinfs.log(msg)
--   twinfs.state  (read-only): node, hook, role, disk, peer, peer_address, generation,
--                 standby_serves (true with [standby] serve = true)
--   twinfs.config (read-only): the [failover] settings above, as strings
--
-- Each hook has 30 s by default. If a hook fails, the VIP it claimed and the
-- services it started are released/stopped again, newest first.
-- Not available here: io, os.execute and the rest of os except time/clock/date,
-- require, debug, dofile, loadfile.

local cfg = twinfs.config

-- The settings a hook needs, checked when the hook runs (so that
-- `twinfs hooks check` works without a twinfs.toml).
local function setting(key, example)
  if cfg[key] == nil then
    error(("set %s = %q in the [failover] table of twinfs.toml"):format(key, example), 2)
  end
  return cfg[key]
end

local function vip()
  return { address = setting("vip", "10.0.0.10/24"), interface = setting("interface", "eth0") }
end

local function web_service()
  if cfg.service then return cfg.service end
  if twinfs.file_exists("/usr/sbin/apache2") then return "apache2" end -- Debian, Ubuntu
  if twinfs.file_exists("/usr/sbin/httpd") then return "httpd" end     -- RHEL, Rocky, Alma
  error("no Apache found (/usr/sbin/apache2 or /usr/sbin/httpd): set service in [failover]")
end

local function check_url()
  if cfg.check_url then return cfg.check_url end
  local addr = cfg.vip:match("^[^/]+")
  if addr:find(":", 1, true) then addr = "[" .. addr .. "]" end -- IPv6
  return "http://" .. addr .. "/"
end

-- Bring the site up: address first, then the web server, then make sure it
-- answers. If any step fails, twinfs undoes the earlier ones.
function on_promote()
  local v, service = vip(), web_service()
  local claim = twinfs.vip.claim(v)
  twinfs.log.info(("VIP %s on %s claimed (%d announcements)"):format(
    v.address, v.interface, claim.announcements))
  twinfs.service.start(service)
  twinfs.http.check{ url = check_url(), expect = 200, retries = 50, interval = 0.2 }
  twinfs.log.info(service .. " answers on " .. check_url())
end

-- Take the site down, in reverse order. Stopping an already stopped service
-- and releasing an address we do not hold are fine; the address is released
-- even when the service would not stop, so the peer can take it.
-- When the standby serves, only the address goes: the web server keeps
-- serving reads from the read-only mount (started here if it was not
-- running, e.g. when the node starts as secondary). The address goes first,
-- so the peer can take it even if the web server will not start.
function on_demote()
  if twinfs.state.standby_serves then
    twinfs.vip.release(vip())
    twinfs.service.start(web_service())
    return
  end
  local stopped, err = pcall(function() twinfs.service.stop(web_service()) end)
  twinfs.vip.release(vip())
  if not stopped then error(err, 0) end
end

-- The peer is back: make sure switches and neighbours know where the VIP is.
function on_peer_back()
  if twinfs.state.role == "primary" then
    twinfs.vip.announce(vip())
  end
  twinfs.log.info("peer " .. tostring(twinfs.state.peer_address) .. " is back")
end

function on_peer_lost()
  twinfs.log.warn(("peer %s lost (this node is %s)"):format(
    tostring(twinfs.state.peer_address), twinfs.state.role))
end

function on_split_brain()
  twinfs.log.error("split brain: both nodes were primary; see `twinfs status` and resolve by hand")
end

-- Fencing (optional). When this function exists, twinfs calls it before it
-- takes over from a peer declared dead, and promotes only if it returns
-- without error: power the peer off through its BMC, or shut its switch port.
-- Example with ipmitool (uncomment and adapt):
--
-- function on_fence()
--   twinfs.exec{argv = {"ipmitool", "-I", "lanplus", "-H", twinfs.config.peer_bmc,
--                       "-U", "admin", "-f", "/etc/twinfs/bmc.pass",
--                       "chassis", "power", "off"}, timeout = 20}
-- end
