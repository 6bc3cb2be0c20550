#!/usr/bin/python3
"""XEP-0198 interop check with slixmpp's own stream management plugin (xep_0198).

Alice and Bob log in over STARTTLS and enable stream management with resumption (the
plugin does this by itself when the server offers it). Alice sends a few messages, Bob
receives them, and every stanza of Alice's is acknowledged by the server. Then Bob's TCP
connection is cut without a stream close (abort), Alice sends another message, and Bob
reconnects: the plugin resumes the stream (no new resource bound), and the message that
arrived while Bob was away is delivered, exactly once. Exit status 0 only if all of that
happened within the time limit.

Usage: slixmpp_sm.py HOST PORT DOMAIN PASSWORD
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
        self.register_plugin("xep_0198")
        self.started = asyncio.Event()
        self.sm_enabled = asyncio.Event()
        self.resumed = asyncio.Event()
        self.gone = asyncio.Event()
        self.bodies = []
        self.acked = 0
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("sm_enabled", lambda _: self.sm_enabled.set())
        self.add_event_handler("session_resumed", lambda _: self.resumed.set())
        self.add_event_handler("disconnected", lambda _: self.gone.set())
        self.add_event_handler("stanza_acked", self.on_acked)
        self.add_event_handler("message", self.on_message)

    async def on_start(self, _event):
        self.send_presence()
        self.started.set()

    def on_acked(self, _stanza):
        self.acked += 1

    def on_message(self, msg):
        if msg["type"] in ("chat", "normal") and msg["body"]:
            self.bodies.append(msg["body"])

    def sm(self):
        return self.plugin["xep_0198"]


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
    for peer in (alice, bob):
        await asyncio.wait_for(peer.started.wait(), TIMEOUT)
        await asyncio.wait_for(peer.sm_enabled.wait(), TIMEOUT)
    if not bob.sm().sm_id:
        raise RuntimeError("the server did not allow resumption")
    print(f"stream management enabled, bob's SM-ID {bob.sm().sm_id}", flush=True)

    sent = [f"message {i}" for i in range(6)]
    for body in sent:
        alice.send_message(mto=bob.boundjid.full, mbody=body, mtype="chat")
    await wait_for(lambda: bob.bodies == sent, "bob to receive the messages")
    # Ask for an ack of everything alice sent; the server answers with its count.
    alice.sm().request_ack()
    await wait_for(lambda: not alice.sm().unacked_queue, "the server to ack alice")
    # Bob's client acks what the server sent when the server asks (the server's <r/>).
    bob_before = bob.sm().handled
    print(f"acked: alice {alice.acked} stanzas, bob handled {bob_before}", flush=True)
    if alice.acked < len(sent):
        raise RuntimeError(f"only {alice.acked} of alice's stanzas acked")

    full_jid = bob.boundjid.full
    bob.abort()
    await asyncio.wait_for(bob.gone.wait(), TIMEOUT)
    alice.send_message(mto=full_jid, mbody="while you were away", mtype="chat")
    await asyncio.sleep(0.5)
    bob.connect((host, port), use_ssl=False, force_starttls=True)
    await asyncio.wait_for(bob.resumed.wait(), TIMEOUT)
    if bob.boundjid.full != full_jid:
        raise RuntimeError(f"resumed as {bob.boundjid.full}, not {full_jid}")
    print("stream resumed", flush=True)
    await wait_for(lambda: len(bob.bodies) > len(sent), "the message sent while away")
    await asyncio.sleep(0.5)
    if bob.bodies != sent + ["while you were away"]:
        raise RuntimeError(f"bob got {bob.bodies}")
    print("delivered exactly once after resumption", flush=True)

    # The resumed stream works both ways.
    bob.send_message(mto=alice.boundjid.full, mbody="back", mtype="chat")
    await wait_for(lambda: alice.bodies == ["back"], "alice to hear from bob")
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
