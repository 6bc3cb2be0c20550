#!/usr/bin/python3
"""Interop check with slixmpp's own plugins for carbons (xep_0280), the message archive
(xep_0313 with xep_0059 paging) and blocking (xep_0191).

alice logs in twice (resources 'one' and 'two', both with carbons enabled) and bob once.
- bob -> alice/one: alice/two gets a received carbon;
- alice/one -> bob: alice/two gets a sent carbon;
- bob sends 25 numbered messages; alice/two pages through her archive with bob both
  backwards (newest first, as clients scroll back) and forwards, 10 per page, and must see
  all 25 in the right order, each exactly once;
- alice/one blocks bob: the block is listed, and bob's next message bounces.

Exit status 0 only if all of that happened within the time limit.

Usage: slixmpp_carbons_mam.py HOST PORT DOMAIN PASSWORD
"""

import asyncio
import logging
import ssl
import sys

import slixmpp
from slixmpp import JID

from slixmpp_no_cb import use_scram_without_channel_binding

TIMEOUT = 30
COUNT = 25


class Peer(slixmpp.ClientXMPP):
    def __init__(self, jid, password, carbons=False):
        super().__init__(jid, password)
        use_scram_without_channel_binding(self)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        for plugin in ("xep_0030", "xep_0059", "xep_0191", "xep_0280", "xep_0297", "xep_0313"):
            self.register_plugin(plugin)
        self.carbons = carbons
        self.started = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.errors = asyncio.Queue()
        self.received_carbons = asyncio.Queue()
        self.sent_carbons = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.errors.put_nowait)
        self.add_event_handler("carbon_received", self.received_carbons.put_nowait)
        self.add_event_handler("carbon_sent", self.sent_carbons.put_nowait)

    async def on_start(self, _event):
        await self.get_roster()
        if self.carbons:
            await self["xep_0280"].enable()
        self.send_presence()
        self.started.set()

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.inbox.put_nowait(msg)


async def main(host, port, domain, password):
    one = Peer(f"alice@{domain}/one", password, carbons=True)
    two = Peer(f"alice@{domain}/two", password, carbons=True)
    bob = Peer(f"bob@{domain}/b", password)
    peers = (one, two, bob)
    for peer in peers:
        peer.connect((host, port), use_ssl=False, force_starttls=True)
    await asyncio.wait_for(asyncio.gather(*(p.started.wait() for p in peers)), TIMEOUT)
    print("logged in, carbons enabled", flush=True)

    bob.send_message(mto=one.boundjid.full, mbody="to one", mtype="chat")
    msg = await asyncio.wait_for(one.inbox.get(), TIMEOUT)
    assert msg["body"] == "to one", msg
    carbon = await asyncio.wait_for(two.received_carbons.get(), TIMEOUT)
    inner = carbon["carbon_received"]
    assert inner["body"] == "to one", carbon
    assert inner["from"] == bob.boundjid, inner["from"]
    print("received carbon ok", flush=True)

    one.send_message(mto=bob.boundjid.full, mbody="from one", mtype="chat")
    msg = await asyncio.wait_for(bob.inbox.get(), TIMEOUT)
    assert msg["body"] == "from one", msg
    carbon = await asyncio.wait_for(two.sent_carbons.get(), TIMEOUT)
    inner = carbon["carbon_sent"]
    assert inner["body"] == "from one", carbon
    assert inner["to"] == bob.boundjid, inner["to"]
    print("sent carbon ok", flush=True)

    for i in range(COUNT):
        bob.send_message(mto=one.boundjid.full, mbody=f"n{i}", mtype="chat")
    for _ in range(COUNT):
        await asyncio.wait_for(one.inbox.get(), TIMEOUT)

    def numbered(messages):
        out = []
        for m in messages:
            body = m["mam_result"]["forwarded"]["stanza"]["body"]
            if body.startswith("n"):
                out.append(body)
        return out

    mam = two["xep_0313"]
    backwards = []
    async for m in mam.iterate(with_jid=JID(bob.boundjid.bare), reverse=True, rsm={"max": 10}):
        backwards.append(m)
    got = numbered(backwards)
    want = [f"n{i}" for i in reversed(range(COUNT))]
    assert got == want, got
    forwards = []
    async for m in mam.iterate(with_jid=JID(bob.boundjid.bare), rsm={"max": 10}):
        forwards.append(m)
    got = numbered(forwards)
    assert got == list(reversed(want)), got
    every = [m["mam_result"]["forwarded"]["stanza"]["body"] for m in forwards]
    assert every[:2] == ["to one", "from one"], every[:2]
    # One query, one page: the plain retrieve API.
    page = await mam.retrieve(with_jid=JID(bob.boundjid.bare), rsm={"max": 5})
    assert len(page["mam"]["results"]) == 5, page
    print(f"mam paged {len(forwards)} messages both ways", flush=True)

    await one["xep_0191"].block(JID(bob.boundjid.bare))
    listed = await one["xep_0191"].get_blocked()
    assert JID(bob.boundjid.bare) in listed["blocklist"]["items"], listed
    bob.send_message(mto=one.boundjid.full, mbody="blocked?", mtype="chat")
    err = await asyncio.wait_for(bob.errors.get(), TIMEOUT)
    assert err["error"]["condition"] == "service-unavailable", err
    await one["xep_0191"].unblock(JID(bob.boundjid.bare))
    print("blocking ok", flush=True)

    for peer in peers:
        peer.disconnect()
    await asyncio.sleep(0.2)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    host, port, domain, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    try:
        asyncio.run(asyncio.wait_for(main(host, port, domain, password), TIMEOUT * 3))
    except Exception as e:  # noqa: BLE001 - any failure is a failed interop run
        print(f"FAIL: {type(e).__name__}: {e!r}", flush=True)
        sys.exit(1)
    print("OK", flush=True)
