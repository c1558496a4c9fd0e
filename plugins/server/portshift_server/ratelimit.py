"""Who a client is, for limits: an HMAC of its network, not of its exact address.

An IPv6 client usually holds a whole /64 (2^64 addresses), so a limit keyed on the exact address
is no limit at all; IPv4 clients are keyed on the address (/32). The key is
``HMAC-SHA-256(server secret, network)``: the database and the memory of the service hold the
hash, never an address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

#: the prefix length a client is keyed on, per IP version
IPV4_PREFIX, IPV6_PREFIX = 32, 64


@dataclass
class RateLimit:
    limit: int
    window: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"10/3600"``: 10 requests per 3600 seconds."""
        count, _, seconds = text.partition("/")
        limit, window = int(count), float(seconds)
        if limit < 1 or window <= 0:
            raise ValueError("expected N/SECONDS with N >= 1 and SECONDS > 0")
        return cls(limit, window)


def client_network(host: str | None) -> str:
    """The network a peer address is keyed on: ``2001:db8:1:2::/64``, ``192.0.2.7/32``."""
    try:
        ip = ipaddress.ip_address((host or "").split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def client_key(secret: bytes, host: str | None) -> str:
    return hmac.new(secret, client_network(host).encode(), hashlib.sha256).hexdigest()
