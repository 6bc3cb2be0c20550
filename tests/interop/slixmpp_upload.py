#!/usr/bin/python3
"""Interop check of XEP-0363 HTTP file upload with slixmpp (a client library nobody on this
project wrote) and its HTTP client (aiohttp).

alice reads the upload service's disco#info (its max-file-size form), asks for a slot
and PUTs a file with slixmpp's own xep_0363 `upload_file`, then fetches the returned GET
URL with aiohttp and compares the bytes; a file over the advertised max-file-size is
refused by slixmpp itself. (slixmpp 1.8's own service discovery, get_info_from_domain,
fails on Python 3.11, so the script queries the service's disco#info itself.) Prints the GET URL. Exit status 0 only if all of that held.

Usage: slixmpp_upload.py HOST PORT DOMAIN PASSWORD
"""

import asyncio
import io
import ssl
import sys

import aiohttp
import slixmpp
from slixmpp.plugins.xep_0363.http_upload import FileTooBig

TIMEOUT = 30


class Uploader(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        for plugin in ("xep_0030", "xep_0004", "xep_0363"):
            self.register_plugin(plugin)
        self.started = asyncio.Event()
        self.add_event_handler("session_start", lambda _e: self.started.set())


async def main(host, port, domain, password):
    alice = Uploader(f"alice@{domain}/slix", password)
    alice.connect((host, port), use_ssl=False, force_starttls=True)
    await asyncio.wait_for(alice.started.wait(), TIMEOUT)

    service = f"upload.{domain}"
    info = await alice["xep_0030"].get_info(service, timeout=TIMEOUT)
    assert "urn:xmpp:http:upload:0" in info["disco_info"]["features"], info
    upload = alice["xep_0363"]
    upload.upload_service = slixmpp.JID(service)
    upload.max_file_size = None
    for form in info["disco_info"].iterables:
        values = form["values"]
        if values.get("FORM_TYPE") == ["urn:xmpp:http:upload:0"]:
            upload.max_file_size = int(values["max-file-size"])
    assert upload.max_file_size, f"no max-file-size in {info}"

    data = bytes(range(256)) * 4000  # 1 MB, every byte value
    url = await asyncio.wait_for(
        upload.upload_file("photo.jpg", input_file=io.BytesIO(data), content_type="image/jpeg"),
        TIMEOUT,
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 200, f"GET {url}: {response.status}"
            assert response.headers.get("Content-Type") == "image/jpeg", response.headers
            got = await response.read()
    assert got == data, f"downloaded {len(got)} bytes, not the {len(data)} uploaded"

    too_big = upload.max_file_size + 1
    try:
        await upload.upload_file("huge.bin", size=too_big, input_file=io.BytesIO(b""))
        raise AssertionError("a file over max-file-size was accepted")
    except FileTooBig:
        pass

    print(url)
    alice.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
