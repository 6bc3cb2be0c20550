#!/usr/bin/python3
"""Interop check with slixmpp (a client library nobody on this project wrote).

Two users log in over STARTTLS with SCRAM-SHA-256, complete a presence subscription to
'both' in both rosters, and exchange a chat message each way. Exit status 0 only if all
of that happened within the time limit.

slixmpp logs in with SCRAM-SHA-256 without channel binding: see slixmpp_no_cb.py.

Usage: slixmpp_chat.py HOST PORT DOMAIN PASSWORD
"""

import asyncio
import logging
import ssl
import sys

import slixmpp

from slixmpp_no_cb import use_scram_without_channel_binding

TIMEOUT = 30


class Peer(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        use_scram_without_channel_binding(self)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.started = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.mechanism = None
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("auth_success", self.on_auth)

    def on_auth(self, _stanza):
        mech = self["feature_mechanisms"].mech
        self.mechanism = mech.name if mech else None

    async def on_start(self, _event):
        await self.get_roster()
        self.send_presence()
        self.started.set()

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.inbox.put_nowait(msg)


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
        # STARTTLS on the plain port; no Direct TLS here.
        peer.connect((host, port), use_ssl=False, force_starttls=True)
    await asyncio.wait_for(asyncio.gather(alice.started.wait(), bob.started.wait()), TIMEOUT)
    print(f"logged in: alice via {alice.mechanism}, bob via {bob.mechanism}", flush=True)
    if alice.mechanism != "SCRAM-SHA-256" or bob.mechanism != "SCRAM-SHA-256":
        raise RuntimeError("expected SCRAM-SHA-256")

    # slixmpp auto-authorizes and auto-subscribes back by default, as many clients do.
    alice.send_presence_subscription(pto=bob.boundjid.bare)

    def both():
        a = alice.client_roster[bob.boundjid.bare]["subscription"]
        b = bob.client_roster[alice.boundjid.bare]["subscription"]
        return a == "both" and b == "both"

    await wait_for(both, "subscription 'both' on both sides")
    print("subscription: both", flush=True)

    alice.send_message(mto=bob.boundjid.full, mbody="hello bob", mtype="chat")
    msg = await asyncio.wait_for(bob.inbox.get(), TIMEOUT)
    assert msg["body"] == "hello bob", msg["body"]
    assert msg["from"].bare == alice.boundjid.bare, msg["from"]
    bob.send_message(mto=msg["from"], mbody="hello alice", mtype="chat")
    msg = await asyncio.wait_for(alice.inbox.get(), TIMEOUT)
    assert msg["body"] == "hello alice", msg["body"]
    print("messages exchanged", flush=True)

    for peer in (alice, bob):
        peer.disconnect()
    await asyncio.sleep(0.2)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    host, port, domain, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    try:
        asyncio.run(asyncio.wait_for(main(host, port, domain, password), TIMEOUT * 3))
    except Exception as e:  # noqa: BLE001 - any failure is a failed interop run
        print(f"FAIL: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
    print("OK", flush=True)
