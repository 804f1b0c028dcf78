"""The roll call before JAX joins the processes of a run: one process per id, or a clear stop.

JAX's own join cannot tell a user what went wrong: two processes given the same
``--process-id`` leave one waiting out the join timeout while the others abort, and a
coordinator port that another program holds makes process 0 crash inside gRPC. So before
``jax.distributed.initialize``, process 0 holds the coordinator port itself for a moment
and every other process reports there, over TCP, with one JSON line each way:

    process k -> 0:  {"lstm_jax": "roll call", "process_id": k, "num_processes": n}
    process 0 -> k:  {"heard": k}                      (at once, so k knows who answers)
    process 0 -> k:  {"go": true} | {"stop": "<the one line every process prints>"}

Process 0 answers "go" once it has heard each of ``1 .. n - 1`` exactly once; it then closes
the port and JAX's coordination service takes it. A second process with a taken id, or a
``num_processes`` that differs, is "stop" for everyone. A process 0 that cannot bind the
port reports there as id 0: if another process 0 of the run holds it, that is a taken id;
if something else does (it does not answer the roll call), it is a port in use.
"""

from __future__ import annotations

import json
import socket
import time

from lstm_jax.errors import DistributedError

_HELLO = "roll call"
# Seconds a process waits for the answer that says process 0 heard it.
HEARD_TIMEOUT_S = 5.0
# Seconds between attempts to reach a coordinator that is not listening yet.
_RETRY_S = 0.25


def take(address: str, num_processes: int, process_id: int, timeout: float) -> None:
    """Returns once every process of the run has reported once (process 0) or been told to
    go (any other); raises ``DistributedError``, with the one line every process prints,
    when it cannot be so within ``timeout`` seconds."""
    host, port = _split(address)
    deadline = time.monotonic() + timeout
    if process_id == 0:
        try:
            server = _bind(port)
        except OSError:
            # Held already: by process 0 of this run (then this one has a taken id), or by
            # another program (then it will not answer the roll call).
            _report(host, port, address, num_processes, 0, deadline, taken_port=True)
            return
        with server:
            _gather(server, address, num_processes, deadline)
    else:
        _report(host, port, address, num_processes, process_id, deadline, taken_port=False)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _bind(port: int) -> socket.socket:
    """A listening socket on ``port`` of every interface, as JAX's coordinator binds it."""
    if socket.has_dualstack_ipv6():
        return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("", port))


class _Peer:
    """One end of a roll-call connection: JSON object lines each way."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self._lines = conn.makefile("rb")

    def send(self, message: dict) -> None:
        try:
            self.conn.sendall((json.dumps(message) + "\n").encode())
        except OSError:  # that process is gone: it has nothing to hear
            pass

    def read(self, timeout: float) -> dict | None:
        """The next JSON object line within ``timeout`` seconds; ``None`` for anything else
        (silence, a closed connection, bytes of another protocol)."""
        self.conn.settimeout(max(timeout, 0.01))
        try:
            message = json.loads(self._lines.readline(4096))
        except (OSError, ValueError):
            return None
        return message if isinstance(message, dict) else None

    def close(self) -> None:
        self._lines.close()
        self.conn.close()


def _gather(server: socket.socket, address: str, num_processes: int, deadline: float) -> None:
    """Process 0: hears every other process once, then tells all to go; or tells all to stop
    and raises."""
    heard: dict[int, _Peer] = {}
    try:
        while len(heard) < num_processes - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, num_processes)) - set(heard))
                raise DistributedError(
                    f"process 0 of {num_processes}: process {', '.join(map(str, missing))} "
                    f"did not report at {address} within the join timeout: start every "
                    "process with the same --coordinator-address and --num-processes, each "
                    "with its own --process-id."
                )
            server.settimeout(min(left, 1.0))
            try:
                peer = _Peer(server.accept()[0])
            except TimeoutError:
                continue
            hello = peer.read(HEARD_TIMEOUT_S)
            if not hello or hello.get("lstm_jax") != _HELLO:
                peer.close()  # not a process of a run: a port scanner, a stray client
                continue
            peer.send({"heard": hello.get("process_id")})
            problem = _problem(hello, heard, num_processes)
            if problem:
                for p in (*heard.values(), peer):
                    p.send({"stop": problem})
                peer.close()
                raise DistributedError(problem)
            heard[hello["process_id"]] = peer
        for peer in heard.values():
            peer.send({"go": True})
        for peer in heard.values():  # each closes first, so the port is free for JAX at once
            peer.read(HEARD_TIMEOUT_S)
    finally:
        for peer in heard.values():
            peer.close()


def _problem(hello: dict, heard: dict, num_processes: int) -> str | None:
    k, n = hello.get("process_id"), hello.get("num_processes")
    if k == 0 or k in heard:
        return (
            f"two processes started as --process-id {k}: each of the {num_processes} "
            f"processes needs its own, from 0 to {num_processes - 1}; every process stops."
        )
    if n != num_processes:
        return (
            f"process {k} was started with --num-processes {n}, process 0 with "
            f"{num_processes}: give every process the same; every process stops."
        )
    return None


def _report(host, port, address, num_processes, process_id, deadline, *, taken_port) -> None:
    """Any process but the coordinator (or a process 0 that found the port held): reports to
    process 0 and waits to be told to go."""
    peer = _Peer(_connect(host, port, address, num_processes, process_id, deadline))
    try:
        hello = {"lstm_jax": _HELLO, "process_id": process_id, "num_processes": num_processes}
        peer.send(hello)
        if peer.read(HEARD_TIMEOUT_S) != {"heard": process_id}:
            if taken_port:
                raise DistributedError(
                    f"process 0 cannot be the coordinator at {address}: port {port} is in "
                    "use on this machine (by another program, or by a run that has begun); "
                    "choose a free port and give it to every process."
                )
            raise DistributedError(
                f"process {process_id} of {num_processes}: what answers at {address} is "
                "not an lstm_jax process 0 taking the roll call (another program holds the "
                f"port, or the run there has begun: is --process-id {process_id} taken?); "
                "give each process its own --process-id and the run's free port."
            )
        answer = peer.read(max(deadline - time.monotonic(), 0) + HEARD_TIMEOUT_S)
    finally:
        peer.close()
    if answer is None:
        raise DistributedError(
            f"process {process_id} of {num_processes}: process 0 at {address} stopped, or "
            "did not hear from every process within the join timeout; every process stops."
        )
    if "stop" in answer:
        raise DistributedError(str(answer["stop"]))


def _connect(host, port, address, num_processes, process_id, deadline) -> socket.socket:
    """A connection to the coordinator, retried while nothing listens there yet."""
    while True:
        try:
            return socket.create_connection((host, port), timeout=HEARD_TIMEOUT_S)
        except OSError as e:
            if time.monotonic() + _RETRY_S > deadline:
                raise DistributedError(
                    f"process {process_id} of {num_processes} found no coordinator at "
                    f"{address} within the join timeout: start process 0 there (it is the "
                    "coordinator), check the host and port, and give every process the same "
                    "--coordinator-address and --num-processes."
                ) from e
            time.sleep(_RETRY_S)
