"""A deterministic write workload, an independent model of what it must leave, and a writer process.

Imported by the durability tests (`workload`, `Model`, `apply_write`); run as a script it is the
process the kill -9 test kills:

    python tests/writer.py STORAGE_PATH HOT(0|1) SEED NAMESPACE

It opens the storage, prints `R` once ready, then runs `workload(SEED, NAMESPACE)` for ever and
prints `A <i>` (flushed) after write number i has been acknowledged.
"""

from __future__ import annotations

import copy
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Collections = dict[str, dict[str, Any]]  # "c/d1/sub" -> {id: document}


class Model:
    """What the database must hold after a sequence of writes: written without Montybase code."""

    def __init__(self, collections: Collections | None = None):
        self.collections: Collections = copy.deepcopy(collections or {})

    def copy(self) -> Model:
        return Model(self.collections)

    def document(self, path: list[str]) -> Any:
        return self.collections.get("/".join(path[:-1]), {}).get(path[-1])

    def _put(self, path: list[str], document: dict) -> None:
        self.collections.setdefault("/".join(path[:-1]), {})[path[-1]] = copy.deepcopy(document)

    def _delete(self, path: list[str]) -> None:
        collection, doc_id = "/".join(path[:-1]), path[-1]
        self.collections.get(collection, {}).pop(doc_id, None)
        below = "/".join(path) + "/"  # a deleted document takes its subcollections with it
        for name in [name for name in self.collections if name.startswith(below) or not self.collections[name]]:
            del self.collections[name]

    def apply(self, write: dict) -> None:
        """One write as the database receives it: {"op": set|update|delete, "path", ...}."""
        path = write["path"]
        if write["op"] == "set":
            self._put(path, write["value"])
        elif write["op"] == "update":
            document = copy.deepcopy(self.document(path))
            assert document is not None, f"the workload updates a missing document {path}"
            for field, value in write["fields"]:
                if isinstance(value, dict) and "$increment" in value:
                    document[field] = document.get(field, 0) + value["$increment"]
                else:
                    document[field] = value
            self._put(path, document)
        elif write["op"] == "delete":
            self._delete(path)
        else:
            raise AssertionError(write)

    def apply_item(self, item: list[dict]) -> None:
        for write in item:
            self.apply(write)


def workload(seed: int, namespace: str, keys: int = 24) -> Iterator[list[dict]]:
    """For ever: the next write, as a list of writes (one = a single call, more = a batch commit).

    Every document written carries values unique to its write (`w`, `s`), so a document that was
    never written is recognised. Updates increment `n` and only target documents that exist by
    then, so every write of the sequence succeeds when applied in order.
    """
    rng = random.Random(f"{seed}/{namespace}")
    model = Model()
    i = 0

    def pick_path() -> list[str]:
        j = rng.randrange(keys)
        if rng.random() < 0.25:  # a subcollection below one of the documents
            return [namespace, f"d{j % 6}", "sub", f"s{j}"]
        return [namespace, f"d{j}"]

    def one(state: Model, used: set[str]) -> dict:
        nonlocal i
        for _ in range(50):
            path = pick_path()
            if "/".join(path) not in used:
                break
        used.add("/".join(path))
        exists = state.document(path) is not None
        roll = rng.random()
        if exists and roll < 0.35:
            write = {"op": "update", "path": path,
                     "fields": [["n", {"$increment": rng.randint(1, 9)}], ["tag", f"t{i}"]]}
        elif exists and roll < 0.5:
            write = {"op": "delete", "path": path}
        else:
            write = {"op": "set", "path": path, "value": {"n": rng.randint(0, 1000), "w": i, "s": f"{namespace}-{i}"}}
        state.apply(write)
        i += 1
        return write

    while True:
        if rng.random() < 0.2:
            used: set[str] = set()
            item = [one(model, used) for _ in range(rng.randint(2, 4))]
        else:
            item = [one(model, set())]
        yield item


def apply_write(db: Any, item: list[dict]) -> None:
    """Apply one workload item to a `server.database.Database` as a session does: the write,
    then the wait for its durability."""
    if len(item) == 1:
        params = {key: value for key, value in item[0].items() if key != "op"}
        _, seq = db.write(item[0]["op"], copy.deepcopy(params), None)
    else:
        _, seq = db.transact({"writes": copy.deepcopy(item)}, None)
    if seq:
        db.wait_durable(seq)


def expected_states(seed: int, namespace: str, count: int) -> tuple[Collections, Collections]:
    """The model's state after `count` items of the workload, and after `count + 1`."""
    model = Model()
    items = workload(seed, namespace)
    for _, item in zip(range(count), items):
        model.apply_item(item)
    before = copy.deepcopy(model.collections)
    model.apply_item(next(items))
    return before, model.collections


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from server.database import Database
    from server.storage import FileStorage

    path, hot, seed, namespace = argv[0], argv[1] == "1", int(argv[2]), argv[3]
    # A tick of 20 ms (the Montybase() default is 1 s) so that snapshots, journal rotation and
    # journal deletion happen many times during a run of a few hundred milliseconds.
    db = Database(FileStorage(path), hot=hot, snapshot_changes=50, snapshot_seconds=0, sync_interval=0.02)
    out = sys.stdout
    out.write("R\n")
    out.flush()
    for i, item in enumerate(workload(seed, namespace)):
        apply_write(db, item)
        out.write(f"A {i}\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
