#!/usr/bin/python3
"""Interop check of PEP and vCards with slixmpp (a client library nobody on this project
wrote).

alice and bob log in and subscribe to each other. bob's slixmpp registers its interest
in XEP-0172 nicknames (a '+notify' feature in its XEP-0115 caps, which the server must
query); alice publishes her nickname and bob must get the notification. bob then reads
the item with XEP-0060, alice publishes to a node with publish-options (open access),
which bob reads, and alice's vCard (XEP-0054), set by slixmpp, is read back by bob.
Exit status 0 only if all of that happened within the time limit.

Usage: slixmpp_pep.py HOST PORT DOMAIN PASSWORD
"""

import asyncio
import ssl
import sys

import slixmpp
from slixmpp.plugins.xep_0004 import Form

TIMEOUT = 30
NICK = "http://jabber.org/protocol/nick"


class Peer(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        for plugin in ("xep_0030", "xep_0004", "xep_0060", "xep_0115", "xep_0163",
                       "xep_0172", "xep_0054"):
            self.register_plugin(plugin)
        self.started = asyncio.Event()
        self.nicks = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("user_nick_publish", self.on_nick)

    async def on_start(self, _event):
        await self.get_roster()
        self.send_presence()
        self.started.set()

    def on_nick(self, msg):
        self.nicks.put_nowait((str(msg["from"]), msg["pubsub_event"]["items"]["item"]["nick"]["nick"]))


async def wait_for(predicate, what):
    for _ in range(TIMEOUT * 10):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


async def main(host, port, domain, password):
    alice = Peer(f"alice@{domain}/slix", password)
    bob = Peer(f"bob@{domain}/slix", password)
    for peer in (alice, bob):
        peer.connect((host, port), use_ssl=False, force_starttls=True)
    await asyncio.wait_for(asyncio.gather(alice.started.wait(), bob.started.wait()), TIMEOUT)
    print("logged in", flush=True)

    alice.send_presence_subscription(pto=bob.boundjid.bare)

    def both():
        a = alice.client_roster[bob.boundjid.bare]["subscription"]
        b = bob.client_roster[alice.boundjid.bare]["subscription"]
        return a == "both" and b == "both"

    await wait_for(both, "subscription 'both' on both sides")
    print("subscription: both", flush=True)

    # The account is a PEP service.
    info = await bob["xep_0030"].get_info(jid=alice.boundjid.bare, timeout=TIMEOUT)
    identities = info["disco_info"]["identities"]
    if not any(i[0] == "pubsub" and i[1] == "pep" for i in identities):
        raise RuntimeError(f"no pubsub/pep identity: {identities}")
    if "http://jabber.org/protocol/pubsub#publish-options" not in info["disco_info"]["features"]:
        raise RuntimeError("publish-options not advertised")
    print("pep advertised", flush=True)

    await alice["xep_0172"].publish_nick("Alice Liddell", timeout=TIMEOUT)
    sender, nick = await asyncio.wait_for(bob.nicks.get(), TIMEOUT)
    if sender != alice.boundjid.bare or nick != "Alice Liddell":
        raise RuntimeError(f"unexpected nick notification {sender!r} {nick!r}")
    print("nick notified", flush=True)

    items = await bob["xep_0060"].get_items(alice.boundjid.bare, NICK, timeout=TIMEOUT)
    got = [i["payload"].text for i in items["pubsub"]["items"]]
    if got != ["Alice Liddell"]:
        raise RuntimeError(f"unexpected nick items {got!r}")
    print("nick read", flush=True)

    options = Form()
    options["type"] = "submit"
    options.add_field(var="FORM_TYPE", ftype="hidden",
                      value="http://jabber.org/protocol/pubsub#publish-options")
    options.add_field(var="pubsub#access_model", value="open")
    payload = slixmpp.xmlstream.ET.fromstring("<note xmlns='urn:xmpp:test:slix'>hello</note>")
    await alice["xep_0060"].publish(alice.boundjid.bare, "urn:xmpp:test:slix", id="n1",
                                    payload=payload, options=options, timeout=TIMEOUT)
    items = await bob["xep_0060"].get_items(alice.boundjid.bare, "urn:xmpp:test:slix",
                                            timeout=TIMEOUT)
    ids = [i["id"] for i in items["pubsub"]["items"]]
    if ids != ["n1"]:
        raise RuntimeError(f"unexpected items {ids!r}")
    print("publish-options node read", flush=True)

    vcard = alice["xep_0054"].make_vcard()
    vcard["FN"] = "Alice Liddell"
    vcard["NICKNAME"] = "alice"
    await alice["xep_0054"].publish_vcard(vcard, timeout=TIMEOUT)
    result = await bob["xep_0054"].get_vcard(alice.boundjid.bare, timeout=TIMEOUT)
    fn = result["vcard_temp"]["FN"]
    if fn != "Alice Liddell":
        raise RuntimeError(f"unexpected vCard FN {fn!r}")
    print("vcard read", flush=True)

    for peer in (alice, bob):
        peer.disconnect()


if __name__ == "__main__":
    host, port, domain, password = sys.argv[1:5]
    asyncio.run(asyncio.wait_for(main(host, int(port), domain, password), TIMEOUT * 3))
