#!/usr/bin/python3
"""Interop check of multi-user chat with slixmpp's xep_0045 plugin (a client library
nobody on this project wrote).

Alice creates a room and accepts its default configuration, Bob joins, they exchange
groupchat messages, then Carol joins asking for the last two messages of history and
must get exactly those, delayed by the room. Exit status 0 only if all of that happened.

Usage: slixmpp_muc.py HOST PORT DOMAIN PASSWORD
"""

import asyncio
import logging
import ssl
import sys

import slixmpp

TIMEOUT = 30


class Peer(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0045")
        self.register_plugin("xep_0203")
        self.started = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("groupchat_message", self.on_groupchat)

    async def on_start(self, _event):
        self.send_presence()
        self.started.set()

    def on_groupchat(self, msg):
        if msg["body"] and not msg.get_plugin("delay", check=True):
            self.inbox.put_nowait(msg)


async def next_from(peer, nick):
    while True:
        msg = await asyncio.wait_for(peer.inbox.get(), TIMEOUT)
        if msg["mucnick"] == nick:
            return msg


async def main(host, port, domain, password):
    room = f"slixroom@conference.{domain}"
    peers = {n: Peer(f"{n}@{domain}/slix", password) for n in ("alice", "bob", "carol")}
    for peer in peers.values():
        peer.connect((host, port), use_ssl=False, force_starttls=True)
    await asyncio.wait_for(asyncio.gather(*(p.started.wait() for p in peers.values())), TIMEOUT)
    alice, bob, carol = peers["alice"], peers["bob"], peers["carol"]

    info = await alice["xep_0030"].get_info(jid=f"conference.{domain}")
    if "http://jabber.org/protocol/muc" not in info["disco_info"]["features"]:
        raise RuntimeError("the service does not advertise MUC")

    pres, _subject, _occ, _hist = await alice["xep_0045"].join_muc_wait(room, "Alice", timeout=TIMEOUT)
    codes = {int(c) for c in pres["muc"]["status_codes"]}
    if 201 not in codes:
        raise RuntimeError(f"expected a new room (201), got {codes}")
    form = await alice["xep_0045"].get_room_config(room)
    await alice["xep_0045"].set_room_config(room, form)
    print("room created and configured", flush=True)

    await bob["xep_0045"].join_muc_wait(room, "Bob", maxstanzas=0, timeout=TIMEOUT)
    print("bob joined", flush=True)
    for i, (sender, nick) in enumerate([(alice, "Alice"), (bob, "Bob"), (alice, "Alice")]):
        sender.send_message(mto=room, mbody=f"line {i}", mtype="groupchat")
        for receiver in (alice, bob):
            msg = await next_from(receiver, nick)
            assert msg["body"] == f"line {i}", msg["body"]
    print("messages exchanged", flush=True)

    _pres, _subject, occupants, history = await carol["xep_0045"].join_muc_wait(
        room, "Carol", maxstanzas=2, timeout=TIMEOUT
    )
    bodies = [m["body"] for m in history]
    if bodies != ["line 1", "line 2"]:
        raise RuntimeError(f"unexpected history {bodies}")
    nicks = sorted(p["from"].resource for p in occupants)
    print(f"carol saw {nicks} and history {bodies}", flush=True)

    for peer in peers.values():
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
