"""The python-socketio client from PyPI against a real Switchboard.

Run by `cargo test` (tests/socket_io.rs starts the server, installs the client into a virtual
environment under target/, and passes the server's address, API key and JWT secret in the
environment). By hand: SWITCHBOARD_URL=… SWITCHBOARD_API_KEY=… SWITCHBOARD_JWT_SECRET=…
python tests/socketio/python_client.py
"""

import base64
import hashlib
import hmac
import json
import os
import socket
import threading
import time
import unittest
import uuid

import requests
import socketio

BASE = os.environ["SWITCHBOARD_URL"]
API_KEY = os.environ["SWITCHBOARD_API_KEY"]
SECRET = os.environ["SWITCHBOARD_JWT_SECRET"]
WAIT = 10.0


def token(account, user, ttl=3600, secret=SECRET):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"sub": user, "account_id": account, "exp": int(time.time()) + ttl}
    body = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}"
    signature = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def unique(name):
    return f"{name}-{uuid.uuid4().hex[:8]}"


def publish(account, event, data, user=None):
    body = {"account_id": account, "event": event, "data": data}
    if user:
        body["user_id"] = user
    response = requests.post(
        f"{BASE}/api/v1/publish",
        json=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=WAIT,
    )
    assert response.status_code == 200, response.text
    return response.json()["seq"]


def until(check, what):
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Recorder:
    """A python-socketio client that records every event it receives, with its arguments."""

    def __init__(self, **options):
        self.client = socketio.Client(
            reconnection_delay=0.1, reconnection_delay_max=0.5, **options
        )
        self.received = []
        self.connects = 0
        self.lock = threading.Lock()
        self.client.on("*", self._record)
        self.client.on("connect", self._connected)

    def _record(self, name, *args):
        with self.lock:
            self.received.append([name, *args])

    def _connected(self):
        self.connects += 1

    def events(self, name=None):
        with self.lock:
            return [e for e in self.received if name is None or e[0] == name]

    def connect(self, **options):
        self.client.connect(BASE, wait_timeout=WAIT, **options)
        return self

    def close(self):
        self.client.disconnect()


class PythonSocketIoClient(unittest.TestCase):
    def setUp(self):
        self.clients = []

    def tearDown(self):
        for client in self.clients:
            client.close()

    def recorder(self, **options):
        client = Recorder(**options)
        self.clients.append(client)
        return client

    def test_auth_token_default_transports_own_account_only(self):
        acme, globex = unique("acme"), unique("globex")
        agent = self.recorder().connect(auth={"token": token(acme, "agent")})
        outsider = self.recorder().connect(auth={"token": token(globex, "agent")})
        until(lambda: agent.client.transport() == "websocket", "the upgrade to websocket")

        seq = publish(acme, "new-message", {"text": "Do you ship to Hanoi?"})
        theirs = publish(globex, "order-paid", {"total": 12})
        until(lambda: agent.events() and outsider.events(), "both events")
        time.sleep(0.2)
        self.assertEqual(
            agent.events(), [["new-message", {"text": "Do you ship to Hanoi?"}, str(seq)]]
        )
        self.assertEqual(outsider.events(), [["order-paid", {"total": 12}, str(theirs)]])

    def test_websocket_only_with_the_authorization_header(self):
        account = unique("acme")
        client = self.recorder().connect(
            transports=["websocket"],
            headers={"Authorization": f"Bearer {token(account, 'u1')}"},
        )
        self.assertEqual(client.client.transport(), "websocket")
        seq = publish(account, "ticket-assigned", {"id": "t-1"}, user="u1")
        until(lambda: client.events(), "the event")
        self.assertEqual(client.events(), [["ticket-assigned", {"id": "t-1"}, str(seq)]])

    def test_polling_only(self):
        account = unique("acme")
        client = self.recorder().connect(
            transports=["polling"], auth={"token": token(account, "u1")}
        )
        self.assertEqual(client.client.transport(), "polling")
        seqs = [publish(account, "tick", {"i": i}) for i in range(5)]
        until(lambda: len(client.events()) == 5, "five events by polling")
        self.assertEqual(
            client.events(), [["tick", {"i": i}, str(seq)] for i, seq in enumerate(seqs)]
        )

    def test_bad_tokens_reach_connect_error_with_a_code(self):
        cases = [
            ({"token": token("acme", "u1", ttl=-3600)}, "token-expired"),
            ({"token": token("acme", "u1", secret="x" * 40)}, "invalid-signature"),
            ({"account_id": "acme"}, "missing-token"),
        ]
        for auth, code in cases:
            client = self.recorder(reconnection=False)
            errors = []
            client.client.on("connect_error", errors.append)
            with self.assertRaises(socketio.exceptions.ConnectionError):
                client.connect(auth=auth)
            self.assertEqual(len(errors), 1, errors)
            self.assertEqual(errors[0]["data"]["code"], code, errors[0])
            self.assertTrue(errors[0]["message"], errors[0])
            self.assertFalse(client.client.connected)

    def test_emits_with_acknowledgements(self):
        account = unique("acme")
        client = self.recorder().connect(auth={"token": token(account, "u1")})
        presence = client.client.call("presence", {}, timeout=WAIT)
        self.assertEqual((presence["type"], presence["users"]), ("presence", ["u1"]))
        error = client.client.call("join_room", {"room": "account:globex"}, timeout=WAIT)
        self.assertEqual((error["type"], error["code"]), ("error", "unknown-type"))
        self.assertEqual(client.client.call("ping", {}, timeout=WAIT)["type"], "pong")

    def test_reconnect_and_resume_loses_nothing(self):
        # python-socketio does not recover connection state by itself; the native `resume`
        # command, sent first on reconnecting, replays what was missed.
        account = unique("acme")
        client = self.recorder(reconnection=True)

        def resume():
            ticks = client.events("tick")
            if ticks:
                client.client.emit("resume", {"since": int(ticks[-1][2])})

        client.client.on("connect", lambda: (client._connected(), resume()))
        client.connect(transports=["websocket"], auth={"token": token(account, "u1")})
        expected = [["tick", {"i": i}, str(publish(account, "tick", {"i": i}))] for i in range(5)]
        until(lambda: len(client.events("tick")) == 5, "the first five")

        # The socket drops (as a network does); events go on being published meanwhile.
        client.client.eio.ws.sock.shutdown(socket.SHUT_RDWR)
        until(lambda: not client.client.connected, "the disconnect")
        expected += [["tick", {"i": i}, str(publish(account, "tick", {"i": i}))] for i in range(5, 10)]
        until(lambda: client.connects == 2, "the reconnect")
        until(lambda: len(client.events("tick")) >= 10, "all ten")
        time.sleep(0.2)
        self.assertEqual(client.events("tick"), expected)
        self.assertEqual(len(client.events("resumed")), 1, client.events())


if __name__ == "__main__":
    unittest.main(verbosity=2)
