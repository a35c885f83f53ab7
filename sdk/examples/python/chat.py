"""The chat steps on tether's C ABI through ctypes, on the state-machine level: this program
owns its sockets and its clock; the library decides when to connect, what to write, when to
ping, and what happened.

It logs in, acknowledges every push, sends one message up to the backend after the first push,
and after the server restarted (a new epoch) and one more push arrived, it stops. One line per
step on stdout, read by tests/tests/sdk.rs. Settings from the environment: TETHER_SERVER,
TETHER_USER, TETHER_DEVICE, TETHER_TOKEN; TETHER_LIB names libtether_sdk.so.
"""

import ctypes
import os
import select
import socket
import sys
import time

lib = ctypes.CDLL(os.environ.get("TETHER_LIB", "libtether_sdk.so"))

# The C ABI, as sdk/include/tether.h declares it.
ACTION_CONNECT, ACTION_SEND, ACTION_CLOSE = 1, 2, 3
EVENT_ONLINE, EVENT_OFFLINE, EVENT_PUSH, EVENT_UPSTREAM_RESULT, EVENT_STOPPED = 1, 2, 3, 5, 8


class Options(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("user", ctypes.c_char_p),
        ("device", ctypes.c_char_p),
        ("token", ctypes.c_char_p),
        ("network_key", ctypes.c_char_p),
        ("heartbeat_json", ctypes.c_char_p),
        ("memory_json", ctypes.c_char_p),
        ("nat_hint_ms", ctypes.c_uint32),
        ("foreground", ctypes.c_bool),
        ("seed", ctypes.c_uint64),
    ]


class Event(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("code", ctypes.c_int32),
        ("id", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("value2", ctypes.c_uint64),
        ("data", ctypes.POINTER(ctypes.c_uint8)),
        ("len", ctypes.c_size_t),
        ("from_user", ctypes.c_char_p),
        ("from_device", ctypes.c_char_p),
    ]

    def bytes(self):
        return ctypes.string_at(self.data, self.len) if self.len else b""


class Action(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_uint32),
        ("conn", ctypes.c_uint32),
        ("probe", ctypes.c_bool),
        ("data", ctypes.POINTER(ctypes.c_uint8)),
        ("len", ctypes.c_size_t),
    ]


Machine = ctypes.c_void_p
lib.tether_last_error.restype = ctypes.c_char_p
lib.tether_version.restype = ctypes.c_char_p
lib.tether_machine_new.argtypes = [ctypes.POINTER(Options), ctypes.POINTER(Machine)]
lib.tether_machine_free.argtypes = [Machine]
lib.tether_machine_free.restype = None
for name in ["network_down", "handle_timeout", "restart"]:
    getattr(lib, "tether_machine_" + name).argtypes = [Machine, ctypes.c_uint64]
lib.tether_machine_network_up.argtypes = [Machine, ctypes.c_uint64, ctypes.c_char_p]
for name in ["connected", "disconnected"]:
    getattr(lib, "tether_machine_" + name).argtypes = [Machine, ctypes.c_uint64, ctypes.c_uint32]
lib.tether_machine_received.argtypes = [
    Machine, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_size_t]
lib.tether_machine_next_timeout.argtypes = [Machine, ctypes.POINTER(ctypes.c_uint64)]
lib.tether_machine_poll_action.argtypes = [Machine, ctypes.POINTER(Action)]
lib.tether_machine_poll_event.argtypes = [Machine, ctypes.POINTER(Event)]
lib.tether_machine_ack.argtypes = [Machine, ctypes.c_uint64, ctypes.c_uint64]
lib.tether_machine_upstream.argtypes = [
    Machine, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]


class TetherError(Exception):
    def __init__(self, code):
        super().__init__(f"{lib.tether_last_error().decode()} ({code})")
        self.code = code


def check(rc):
    if rc < 0:
        raise TetherError(rc)
    return rc


def say(line):
    print(line, flush=True)


def need(name):
    v = os.environ.get(name)
    if not v:
        sys.exit(f"chat.py: {name} is not set")
    return v


def now_ms():
    return int(time.monotonic() * 1000)


class App:
    """The app: sockets by the machine's connection id, and the chat steps."""

    def __init__(self, machine, server):
        self.m = machine
        self.server = server
        self.socks = {}
        self.first_epoch = 0
        self.restarted = False
        self.pushes = 0
        self.finished = False

    def connect(self, conn):
        host, port = self.server.rsplit(":", 1)
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            check(lib.tether_machine_disconnected(self.m, now_ms(), conn))
            return
        self.socks[conn] = s
        check(lib.tether_machine_connected(self.m, now_ms(), conn))

    def pump(self):
        """Carries out every action and handles every event the machine has."""
        action, event = Action(), Event()
        while True:
            if check(lib.tether_machine_poll_action(self.m, ctypes.byref(action))):
                if action.kind == ACTION_CONNECT:
                    self.connect(action.conn)
                elif action.kind == ACTION_SEND:
                    s = self.socks.get(action.conn)
                    try:
                        if s is not None:
                            s.sendall(ctypes.string_at(action.data, action.len))
                    except OSError:
                        self.lost(action.conn)
                elif action.kind == ACTION_CLOSE:
                    s = self.socks.pop(action.conn, None)
                    if s is not None:
                        s.close()
            elif check(lib.tether_machine_poll_event(self.m, ctypes.byref(event))):
                self.on_event(event)
            else:
                return

    def lost(self, conn):
        s = self.socks.pop(conn, None)
        if s is not None:
            s.close()
            check(lib.tether_machine_disconnected(self.m, now_ms(), conn))

    def on_event(self, e):
        if e.kind == EVENT_ONLINE:
            if self.first_epoch == 0:
                self.first_epoch = e.value
            elif e.value != self.first_epoch:
                self.restarted = True
            say(f"online restarted={int(self.restarted)}")
        elif e.kind == EVENT_OFFLINE:
            say("offline")
        elif e.kind == EVENT_PUSH:
            say(f"push {e.bytes().decode()}")
            check(lib.tether_machine_ack(self.m, now_ms(), e.id))
            self.pushes += 1
            if self.pushes == 1:
                msg = b"hello backend from python"
                check(lib.tether_machine_upstream(self.m, now_ms(), 1, msg, len(msg)))
            elif self.restarted:
                self.finished = True
        elif e.kind == EVENT_UPSTREAM_RESULT:
            status = "accepted" if e.code == 0 else f"refused {e.code}"
            say(f"upstream {e.id} {status} {e.bytes().decode()}")
        elif e.kind == EVENT_STOPPED:
            say(f"stopped {e.code}")
            self.finished = True

    def run(self, seconds):
        deadline = time.monotonic() + seconds
        at = ctypes.c_uint64()
        while not self.finished and time.monotonic() < deadline:
            self.pump()
            if self.finished:
                break
            wait = 0.25
            if check(lib.tether_machine_next_timeout(self.m, ctypes.byref(at))):
                wait = min(wait, max(0, at.value - now_ms()) / 1000)
            ready, _, _ = select.select(list(self.socks.values()), [], [], wait)
            for conn, s in list(self.socks.items()):
                if s not in ready:
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self.lost(conn)
                elif lib.tether_machine_received(self.m, now_ms(), conn, data, len(data)) < 0:
                    self.socks.pop(conn).close()  # undecodable: the machine forgot it
                self.pump()
            if check(lib.tether_machine_next_timeout(self.m, ctypes.byref(at))) and now_ms() >= at.value:
                check(lib.tether_machine_handle_timeout(self.m, now_ms()))
        return self.finished


def main():
    server = need("TETHER_SERVER")
    opts = Options(size=ctypes.sizeof(Options), user=None, device=b"phone", token=b"t")
    m = Machine()
    rc = lib.tether_machine_new(ctypes.byref(opts), ctypes.byref(m))
    say(f"refused {rc} {lib.tether_last_error().decode()}")

    opts = Options(
        size=ctypes.sizeof(Options),
        user=need("TETHER_USER").encode(),
        device=need("TETHER_DEVICE").encode(),
        token=need("TETHER_TOKEN").encode(),
        foreground=True,
        seed=7,
    )
    check(lib.tether_machine_new(ctypes.byref(opts), ctypes.byref(m)))
    say(f"started {lib.tether_version().decode()}")
    try:
        check(lib.tether_machine_network_up(m, now_ms(), b"wifi:desk"))
        finished = App(m, server).run(120)
    finally:
        lib.tether_machine_free(m)
    say("done" if finished else "timed out")
    sys.exit(0 if finished else 1)


if __name__ == "__main__":
    main()
