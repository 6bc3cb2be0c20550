#!/usr/bin/python3
"""Interop check with slixmpp: invitations end to end.

Alice (an existing account) asks the server for an invitation with slixmpp's XEP-0050
plugin (the XEP-0401 'urn:xmpp:invite#invite' command) and takes the token from the
xmpp: URI. A new client registers with slixmpp's XEP-0077 plugin, first presenting the
token (XEP-0445 <preauth/>, sent as a raw element since slixmpp has no plugin for it),
then logs in with the new account. Both must then see each other in their rosters with
subscription 'both' (XEP-0379/XEP-0401), Alice through a roster push.

Usage: slixmpp_invite.py HOST PORT DOMAIN PASSWORD
"""

import asyncio
import logging
import os
import ssl
import sys
from xml.etree import ElementTree as ET

import slixmpp

TIMEOUT = 30
NEW_PASSWORD = "newbie's password"


def insecure(client):
    client.ssl_context.check_hostname = False
    client.ssl_context.verify_mode = ssl.CERT_NONE


class Alice(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        insecure(self)
        self.register_plugin("xep_0004")
        self.register_plugin("xep_0050")
        self.started = asyncio.Event()
        self.add_event_handler("session_start", self.on_start)

    async def on_start(self, _event):
        await self.get_roster()
        self.send_presence()
        self.started.set()


class Newbie(slixmpp.ClientXMPP):
    def __init__(self, jid, password, token, domain):
        super().__init__(jid, password)
        insecure(self)
        self.token = token
        self.domain = domain
        self.register_plugin("xep_0004")
        self.register_plugin("xep_0066")
        self.register_plugin("xep_0077")
        # slixmpp 1.8 holds back every iq before the session starts, its own XEP-0077
        # registration included, unless told to send everything.
        self._always_send_everything = True
        self.registered = asyncio.Event()
        self.started = asyncio.Event()
        self.add_event_handler("register", self.on_register)
        self.add_event_handler("session_start", self.on_start)

    async def on_register(self, _form):
        preauth = self.Iq()
        preauth["type"] = "set"
        preauth["to"] = self.domain
        preauth.append(ET.fromstring(f"<preauth xmlns='urn:xmpp:pars:0' token='{self.token}'/>"))
        await preauth.send()
        reg = self.Iq()
        reg["type"] = "set"
        reg["register"]["username"] = self.boundjid.user
        reg["register"]["password"] = self.password
        await reg.send()
        print("registered with the invitation", flush=True)
        self.registered.set()

    async def on_start(self, _event):
        await self.get_roster()
        self.send_presence()
        self.started.set()


async def wait_for(predicate, what):
    for _ in range(TIMEOUT * 10):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


async def main(host, port, domain, password):
    alice = Alice(f"alice@{domain}/slix", password)
    alice.connect((host, port), use_ssl=False, force_starttls=True)
    await asyncio.wait_for(alice.started.wait(), TIMEOUT)

    result = await alice["xep_0050"].send_command(domain, "urn:xmpp:invite#invite")
    uri = result.xml.find(
        ".//{jabber:x:data}field[@var='uri']/{jabber:x:data}value"
    ).text
    print(f"invitation: {uri.split('preauth=')[0]}...", flush=True)
    if not uri.startswith(f"xmpp:alice@{domain}?roster;preauth=") or not uri.endswith(";ibr=y"):
        raise RuntimeError(f"unexpected invitation URI {uri}")
    token = uri.split("preauth=")[1].split(";")[0]

    newbie = Newbie(f"newbie@{domain}/slix", NEW_PASSWORD, token, domain)
    newbie.connect((host, port), use_ssl=False, force_starttls=True)
    await asyncio.wait_for(newbie.registered.wait(), TIMEOUT)
    await asyncio.wait_for(newbie.started.wait(), TIMEOUT)
    print("logged in with the new account", flush=True)

    def both():
        a = alice.client_roster[f"newbie@{domain}"]["subscription"]
        b = newbie.client_roster[f"alice@{domain}"]["subscription"]
        return a == "both" and b == "both"

    await wait_for(both, "subscription 'both' on both sides")
    print("subscription: both", flush=True)

    for peer in (alice, newbie):
        peer.disconnect()
    await asyncio.sleep(0.2)


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG if os.environ.get("SLIX_DEBUG") else logging.WARNING)
    host, port, domain, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    try:
        asyncio.run(asyncio.wait_for(main(host, port, domain, password), TIMEOUT * 3))
    except Exception as e:  # noqa: BLE001 - any failure is a failed interop run
        print(f"FAIL: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
    print("OK", flush=True)
