"""A scripted Montybase server for the JS client's tests: the real MBSC1 handshake (psk mode,
the client key given as argv[1]), then canned frames that mix notifications and answers in
one JSON-RPC batch, as a server may. Prints `port N` once it listens on 127.0.0.1."""

from __future__ import annotations

import json
import sys

from websockets.sync.server import serve

from server.channel import ServerHandshake

KEY = sys.argv[1]
A = {"id": "a", "value": {"n": 1}}
B = {"id": "b", "value": {"n": 2}}


def answer(request: dict, result: dict) -> dict:
    return {"jsonrpc": "2.0", "id": request["id"], "result": result}


def news(sub: int, snapshot: dict) -> dict:
    return {"jsonrpc": "2.0", "method": "snapshot", "params": {"subs": [sub], "snapshot": snapshot}}


def change(kind: str, doc: dict, old: int, new: int) -> dict:
    return {"type": kind, **doc, "oldIndex": old, "newIndex": new}


def handler(ws) -> None:
    handshake = ServerHandshake({"client": KEY})
    hello = json.loads(ws.recv())
    ws.send(json.dumps(answer(hello, handshake.hello(hello["params"]))))
    auth = json.loads(ws.recv())
    result, session = handshake.auth(auth["params"])
    ws.send(json.dumps(answer(auth, result)))
    subs: list[int] = []
    docs = [A]

    def send(message) -> None:
        ws.send(session.seal(json.dumps(message).encode()))

    for frame in ws:
        request = json.loads(session.open(frame))
        method, params = request["method"], request["params"]
        if method == "subscribe":  # the answer, then the first snapshot, in one batch
            subs.append(params["sub"])
            send([answer(request, {"sub": params["sub"]}),
                  news(params["sub"], {"docs": docs, "changes": [change("added", d, -1, i) for i, d in enumerate(docs)]})])
        elif method == "get":  # news for every listener and an unknown one, a stray answer, the answer, more news
            send([*(news(sub, {"changes": [change("added", B, -1, 1)]}) for sub in subs),
                  news(999, {"changes": [change("added", B, -1, 0)]}),
                  {"jsonrpc": "2.0", "id": 123456, "result": {"value": None}},
                  answer(request, {"value": B["value"]}),
                  *(news(sub, {"changes": [change("removed", A, 0, -1)]}) for sub in subs)])
            docs = [B]
        elif method == "set":  # one lone notification frame per listener, then the answer on its own
            doc = {"id": params["path"][-1], "value": params["value"]}
            index = sum(1 for d in docs if d["id"] < doc["id"])
            for sub in subs:
                send(news(sub, {"changes": [change("added", doc, -1, index)]}))
            docs = sorted([*docs, doc], key=lambda d: d["id"])
            send(answer(request, {"id": doc["id"]}))
        elif method == "unsubscribe":  # acknowledged, but the news keeps coming: the client must drop it
            send(answer(request, {"found": True}))
        else:
            send({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "not scripted",
                                                                    "data": {"reason": "METHOD_NOT_FOUND"}}})


with serve(handler, "127.0.0.1", 0, compression=None) as server:
    print(f"port {server.socket.getsockname()[1]}", flush=True)
    server.serve_forever()
