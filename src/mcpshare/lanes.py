"""Extra lanes: more processes of one key, so that calls known to ask their client need not wait for each other.

On a server with no link on its requests, the calls of a tool that asks run one at a time per process (the gate
of :mod:`mcpshare.routing.attribution`): that is what makes each question's owner certain. With ``lanes = N`` a
key may run up to N processes: a call that would wait at the gate of the first goes to an idle extra lane instead,
where it runs alone, so its questions are as certain and it waits for nobody. Extra lanes start only while such
calls would wait and stop after the idle grace, like any process of the pool.

A lease keeps its one session on the first process (its subscriptions, level, handshake). For a call sent to a
lane it holds a *satellite* session there for as long as it has calls in flight on that lane; what the lane sends
back reaches the lease's own inbox. Two processes number their questions independently, so a lane's questions are
given ids of their own on the way to the lease and their original ones back on the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcpshare.mux import Channel, Message

if TYPE_CHECKING:
    from mcpshare.pool import Lease

_PREFIX = "mcpshare-lane-"


class LaneSink:
    """The sink of a lease's satellite session on one extra lane: into the lease's inbox, with the lane's
    questions renamed, and the satellite let go once its last call is answered."""

    __slots__ = ("lane", "lanes")

    def __init__(self, lanes: LeaseLanes, lane: int) -> None:
        self.lanes = lanes
        self.lane = lane

    def send_nowait(self, message: Message, /) -> None:
        lanes = self.lanes
        if "method" not in message:
            request_id = message.get("id")
            if lanes.requests.pop(request_id, None) is not None:
                lanes.finished(self.lane)
        elif "id" in message:
            ours = f"{_PREFIX}{self.lane}-{message['id']}"
            lanes.asks[ours] = (self.lane, message["id"])
            message = {**message, "id": ours}
        elif message.get("method") == "notifications/cancelled":
            params = message.get("params")
            server_id = params.get("requestId") if isinstance(params, dict) else None
            ours = f"{_PREFIX}{self.lane}-{server_id}"
            if lanes.asks.pop(ours, None) is not None:
                message = {**message, "params": {**params, "requestId": ours}}
        lanes.lease._sink.send_nowait(message)

    def close(self) -> None:
        """A satellite ending does not end the lease."""


class LeaseLanes:
    """One lease's satellite sessions on extra lanes, and which of its calls and questions live on which."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.channels: dict[int, Channel] = {}
        self.requests: dict[Any, int] = {}  # the client's request id -> the lane it runs on
        self.asks: dict[str, tuple[int, Any]] = {}  # our id of a lane's question -> (lane, the server's id)

    def channel_for(self, message: Message) -> tuple[Channel | None, Message]:
        """Where a client message that is not a new request goes, and as what: a lane's channel (the message
        renamed back) for a cancel of a call or an answer to a question that lives there, else None."""
        if "method" not in message:
            ask = self.asks.pop(message.get("id"), None) if isinstance(message.get("id"), str) else None
            if ask is not None:
                return self.channels.get(ask[0]), {**message, "id": ask[1]}
            return None, message
        if message.get("method") == "notifications/cancelled":
            params = message.get("params")
            request_id = params.get("requestId") if isinstance(params, dict) else None
            lane = self.requests.get(request_id)
            if lane is not None:
                return self.channels.get(lane), message
        return None, message

    def started(self, lane: int, channel: Channel, request_id: Any) -> None:
        self.channels[lane] = channel
        self.requests[request_id] = lane

    def finished(self, lane: int) -> None:
        """A call on ``lane`` got its answer: the satellite goes once none is left there."""
        if lane not in self.requests.values() and not any(asked[0] == lane for asked in self.asks.values()):
            channel = self.channels.pop(lane, None)
            if channel is not None:
                self.lease.pool._release_lane(self.lease, lane, channel)

    def close(self, reason: str) -> None:
        for lane, channel in list(self.channels.items()):
            self.lease.pool._release_lane(self.lease, lane, channel, reason=reason)
        self.channels.clear()
        self.requests.clear()
        self.asks.clear()
