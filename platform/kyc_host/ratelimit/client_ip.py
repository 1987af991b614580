"""The client address a request is counted against.

The socket peer, unless the peer is one of the operator's ``trusted_proxies``: then the
proxy chain in ``X-Forwarded-For`` (or, without it, RFC 7239 ``Forwarded: for=``) is read
from the right and the first address that is not itself a trusted proxy is the client. Only
the right-most entries were written by proxies we trust; anything to their left came from
the client and may be forged, so a spoofed header never changes which counter a request hits
(reliability-plan A14, B7: ``X-Forwarded-*`` is honoured only from the configured CIDRs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from tornado.httputil import HTTPHeaders

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


def parse_address(text: str) -> Address | None:
    """An IP from a header entry (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``"[::1]"``)."""
    value = text.strip().strip('"')
    if value.startswith("["):
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def trusted(address: Address, proxies: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_ip(peer: str, headers: HTTPHeaders, proxies: Sequence[Network]) -> str:
    """The client's address as text (the peer's when no trusted proxy forwarded)."""
    address = parse_address(peer)
    if address is None or not proxies or not trusted(address, proxies):
        return peer
    chain = _forwarded_chain(headers)
    for entry in reversed(chain):
        hop = parse_address(entry)
        if hop is None:
            # A non-address (e.g. "unknown") where our proxies should have written one: the
            # last hop we could read is the best identity we have.
            break
        address = hop
        if not trusted(hop, proxies):
            break
    return str(address)


def _forwarded_chain(headers: HTTPHeaders) -> list[str]:
    """Every hop, left (client side) to right (nearest proxy), across repeated headers."""
    xff = headers.get_list("X-Forwarded-For")
    if xff:
        return [part for line in xff for part in line.split(",") if part.strip()]
    hops: list[str] = []
    for line in headers.get_list("Forwarded"):
        for element in line.split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "for" and value:
                    hops.append(value)
    return hops
