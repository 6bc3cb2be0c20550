// xmpp.js (@xmpp/client, a client library nobody here wrote) against xmppd: a password
// login over SASL2 with Bind 2 that asks for a FAST token, then a second login with the
// token alone (the password given the second time is wrong, so only FAST can succeed).
// Prints one JSON line per step; the Rust test (tests/interop_xmppjs.rs) checks them.
//
// usage: node xmppjs_fast.mjs <service> <user> <password>
//   service: xmpp://127.0.0.1:PORT (STARTTLS) or ws://127.0.0.1:PORT/xmpp-websocket
import { client, xml } from "@xmpp/client";

const [service, username, password] = process.argv.slice(2);
const userAgent = xml("user-agent", { id: "9a1b8c2e-0d3f-4e5a-8b6c-7d8e9f0a1b2c" }, [
  xml("software", {}, "xmpp.js interop"),
]);

function connect(pass, token) {
  const xmpp = client({
    service,
    domain: "localhost",
    username,
    password: pass,
    resource: undefined,
    userAgent,
  });
  xmpp.reconnect.stop();
  let saved = null;
  xmpp.fast.saveToken = async (t) => {
    saved = t;
  };
  xmpp.fast.fetchToken = async () => token;
  const mechanisms = [];
  xmpp.on("send", (el) => {
    if (el.name === "authenticate") mechanisms.push(el.attrs.mechanism);
  });
  xmpp.on("error", (e) => console.log(JSON.stringify({ error: String(e) })));
  return { xmpp, saved: () => saved, mechanisms };
}

async function step(name, pass, token) {
  const c = connect(pass, token);
  const jid = await c.xmpp.start();
  // A round trip on the bound session.
  const pong = await c.xmpp.iqCaller.request(
    xml("iq", { type: "get", to: "localhost" }, xml("ping", { xmlns: "urn:xmpp:ping" })),
    5000,
  );
  console.log(
    JSON.stringify({
      step: name,
      jid: jid.toString(),
      mechanisms: c.mechanisms,
      token: c.saved(),
      pong: pong.attrs.type,
      sm: c.xmpp.streamManagement.enabled,
    }),
  );
  await c.xmpp.stop();
  return c.saved();
}

const timer = setTimeout(() => {
  console.log(JSON.stringify({ error: "timeout" }));
  process.exit(2);
}, 20000);
try {
  const token = await step("password", password, undefined);
  if (!token) throw new Error("no FAST token was issued");
  await step("fast", "wrong-password", token);
  clearTimeout(timer);
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.stack ? e.stack : e) }));
  process.exit(1);
}
