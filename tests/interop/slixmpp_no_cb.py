"""Shared by the slixmpp interop scripts: log in without channel binding.

slixmpp 1.8 binds channels only with `tls-unique`, which TLS 1.3 does not have; with plain
SCRAM it then sends the gs2 flag 'y'. The server advertises -PLUS mechanisms, so it must
refuse that 'y' as a downgrade (RFC 5802 §6). A client without a usable binding type has
to say so with 'n', which slixmpp does when it is given no channel-binding data.
"""


def use_scram_without_channel_binding(client):
    """Makes `client` (a ClientXMPP) log in with SCRAM-SHA-256 and gs2 flag 'n'."""
    mechanisms = client["feature_mechanisms"]
    mechanisms.use_mech = "SCRAM-SHA-256"
    default_credentials = mechanisms.sasl_callback

    def credentials(required, optional):
        creds = default_credentials(required, optional)
        creds.pop("channel_binding", None)
        return creds

    mechanisms.sasl_callback = credentials
