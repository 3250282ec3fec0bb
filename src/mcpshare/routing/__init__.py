"""Where routing happens: the sans-I/O core that keeps the sessions of one shared server process apart.

* :mod:`.core`: the :class:`~.core.Router` state machine (events in, actions out) and the rules every era shares;
* :mod:`.legacy`: a backend of the handshake era (2025-11-25);
* :mod:`.modern`: a backend of the 2026-07-28 era, and the bridges between sessions and backends of either era;
* :mod:`.attribution`: who caused a server-to-client request (links, the only candidate, the gate);
* :mod:`.wire`: message shapes, codes, method groups and ``_meta`` keys.

The I/O around it (a process's pipes, timers, sessions' queues) is :mod:`mcpshare.mux`.
"""

from mcpshare.routing.attribution import Learned
from mcpshare.routing.core import DELIVER, DONE, FREED, LEARNED, TIMER, TO_SERVER, Action, Pending, Router, Session

__all__ = [
    "DELIVER",
    "DONE",
    "FREED",
    "LEARNED",
    "TIMER",
    "TO_SERVER",
    "Action",
    "Learned",
    "Pending",
    "Router",
    "Session",
]
