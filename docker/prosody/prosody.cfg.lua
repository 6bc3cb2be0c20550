-- Prosody as xmppd's federation peer in docker/compose.yml (Debian's prosody package).
daemonize = false
pidfile = "/var/run/prosody/prosody.pid"
log = { { levels = { min = "info" }, to = "console" } }
interfaces = { "*" }
modules_enabled = { "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "vcard_legacy"; "pep"; "offline" }
authentication = "internal_hashed"
storage = "internal"
-- Both servers use self-signed certificates here: dialback (XEP-0220) authenticates them.
s2s_secure_auth = false
s2s_require_encryption = true
certificates = "/var/lib/prosody/certs"
VirtualHost "prosody.example"
