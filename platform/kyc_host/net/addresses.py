"""Which addresses an outbound request to an untrusted URL may reach, and the resolver that
enforces it at connect time.

The check lives in the resolver that Tornado's HTTP client uses to open the connection, so the
address that was checked is the address connected to: a DNS answer cannot change between the
check and the connect (DNS rebinding, reliability-plan A6/A7).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from tornado.netutil import DefaultLoopResolver, Resolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class BlockedAddressError(OSError):
    """A host resolved to an address outside the public internet.

    Subclasses OSError so Tornado's connector treats it like any connection failure; the
    safe client turns it into :class:`kyc_host.net.BlockedDestination`.
    """

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to non-public address {address}")
        self.host = host
        self.address = address


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses.

    Refuses private, loopback, link-local, multicast, reserved, unspecified, shared (CGNAT),
    documentation and site-local ranges, plus IPv6 forms that embed an IPv4 address
    (IPv4-mapped/compatible and NAT64 sit in the reserved ``::/8``; 6to4 and Teredo are
    unwrapped) because the embedded address is what some stacks end up contacting.
    """
    if (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or not ip.is_global):
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local or any(ip in net for net in _NAT64):
            return False
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        return all(inner is None or is_public_address(inner) for inner in embedded)
    return True


def parse_ip(text: str) -> IPAddress | None:
    """The address if ``text`` is an IP literal (brackets and zone ids allowed), else None."""
    candidate = text.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(candidate)
    except ValueError:
        return None


class PinnedResolver(Resolver):
    """Resolves with the system resolver and refuses non-public answers.

    If any address in the answer is not public the whole name is refused (a name that
    resolves "public first, loopback second" must not get a second chance at connect).
    With ``allow_private`` (dev mode only) every address passes.
    """

    def initialize(self, inner: Resolver | None = None, allow_private: bool = False) -> None:
        self._inner = inner if inner is not None else DefaultLoopResolver()
        self._allow_private = allow_private

    def close(self) -> None:
        self._inner.close()

    async def resolve(self, host: str, port: int,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[tuple[int, Any]]:
        answers = await self._inner.resolve(host, port, family)
        if not answers:
            raise OSError(f"{host} did not resolve")
        if not self._allow_private:
            for _family, sockaddr in answers:
                ip = parse_ip(str(sockaddr[0]))
                if ip is None or not is_public_address(ip):
                    raise BlockedAddressError(host, str(sockaddr[0]))
        return list(answers)
