"""A Chorus API simulator for tests and demos (``portshift chorus simulate``).

Test and demo tooling, shipped with the plugin so that anyone can try an export without a Chorus
account: a real HTTPS server on loopback, with its own throw-away CA, over a deterministic
synthetic tenant, with switchable faults. Nothing in the source plugin depends on it.

    from portshift_source_chorus.simulator import ChorusSimulator, Faults, Fault

    with ChorusSimulator(calls=30, seed=7, faults=Faults(throttle=Fault(ratio=0.2))) as sim:
        sim.base_url, sim.ca_path, sim.token          # point a client at these
        sim.tenant.exportable()                       # what an export must contain
        sim.tenant.media_sha256(call_id)              # known without storing the bytes
"""

from __future__ import annotations

from .config import Behaviour, Fault, Faults, MediaConfig, Paging, Stats
from .server import ChorusSimulator
from .tenant import Call, Tenant, TenantSpec, media_chunks

__all__ = [
    "Behaviour",
    "Call",
    "ChorusSimulator",
    "Fault",
    "Faults",
    "MediaConfig",
    "Paging",
    "Stats",
    "Tenant",
    "TenantSpec",
    "media_chunks",
]
