// Access rules through every door from the JS client: each row of tests/cases/doors.json
// (operation × grant × principal, written by tests/make_doors.py) against a real server, one
// server per grant (tests/test_doors.py is the Python twin).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import { Montybase, MontybaseError, Query, doc } from "../../js_client/index.js";
import { Server, firstSnapshot, readJson, tempDir, writeConfig } from "./helpers.js";

/** A collection's get() (a Map in id order) as a plain object, to compare with JSON. */
function plain(value) {
  return value instanceof Map ? Object.fromEntries([...value].map(([key, item]) => [key, plain(item)])) : value;
}

const CASES = await readJson("tests", "cases", "doors.json");
const { ops: OPS, seed: SEED } = CASES;
const PASSWORD = "correct horse battery";
const GRANTS = [...new Set(CASES.rows.map((row) => row.grant))];

/** "allowed" if the promise fulfils, else the reason of the Montybase error it rejects with. */
async function reason(promise) {
  try {
    await promise;
  } catch (error) {
    if (!(error instanceof MontybaseError)) throw error;
    return error.reason;
  }
  return "allowed";
}

const segments = (path) => path.split("/");

/** The server of one grant, a handle per principal, and the table's placeholders. */
class Door {
  static async start(grant) {
    const door = new Door();
    const dir = await tempDir();
    const rules = JSON.parse(JSON.stringify(CASES.rules).replaceAll('"$grant"', JSON.stringify(grant)));
    await writeConfig(dir, { rules, storageBucket: ":memory:" });
    door.server = await Server.start({ dir });
    const client = await door.server.clientConfig();
    door.handles = { admin: new Montybase(await door.server.adminConfig(), { WebSocket, endpoint: door.server.endpoint }) };
    door.placeholders = {};
    for (const name of ["anonymous", "owner", "other"]) door.handles[name] = new Montybase(client, { WebSocket });
    for (const name of ["owner", "other"]) {
      door.placeholders[`$${name}`] = (await door.handles[name].signUp(`${name}@doors.example`, PASSWORD)).uid;
    }
    door.dirty = true;
    return door;
  }

  sub(value) {
    if (typeof value === "string") return Object.hasOwn(this.placeholders, value) ? this.placeholders[value] : value;
    if (Array.isArray(value)) return value.map((item) => this.sub(item));
    if (value !== null && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, this.sub(item)]));
    return value;
  }

  async reset() {
    const admin = this.handles.admin;
    const batch = admin.batch();
    batch.delete(doc(admin, "docs"));
    batch.delete(doc(admin, "log"));
    for (const [path, value] of Object.entries(SEED)) batch.set(doc(admin, ...segments(path)), this.sub(value));
    await batch.commit();
    this.dirty = false;
  }

  /** Everything a write could change, read with the admin key. */
  async state() {
    const paths = ["docs", "log", ...Object.keys(SEED)];
    return Object.fromEntries(await Promise.all(paths.map(async (path) => [path, plain(await doc(this.handles.admin, ...segments(path)).get())])));
  }

  async close() {
    await Promise.all(Object.values(this.handles ?? {}).map((handle) => handle.close()));
    await this.server?.cleanup();
  }
}

/** Run a read door: the document, the ids it returned (in order), or the count. */
async function read(handle, op, spec) {
  const ref = doc(handle, ...segments(spec.path));
  const query = new Query(ref, spec.query ?? {});
  if (op === "get") return ref.get();
  if (op === "list") return [...(await ref.get()).keys()].sort();
  if (op === "query") return (await query.stream()).map((entry) => entry.id);
  if (op === "aggregate") return query.count();
  return (await firstSnapshot(query)).docs.map((entry) => entry.id);
}

/** What an allowed read door returns, as `read` gives it. */
function expected(door, row) {
  if (row.op === "get") return door.sub(SEED[OPS.get.path]);
  if (row.op === "list") return [...row.ids].sort();
  if (row.op === "aggregate") return row.ids.length;
  return row.ids;
}

/** The call of a write door. */
function write(door, handle, op, spec) {
  const path = segments(spec.path);
  const ref = doc(handle, ...path);
  if (op === "add") return doc(handle, ...path.slice(0, -1)).add(door.sub(spec.value), path.at(-1));
  if (op === "set") return ref.set(door.sub(spec.value));
  if (op === "update") return ref.update(spec.fields);
  if (op === "delete" || op === "cascadeDelete") return ref.delete();
  if (op === "batch") {
    const batch = handle.batch();
    batch.set(ref, door.sub(spec.value));
    batch.update(doc(handle, "docs", "d1"), spec.fields);
    return batch.commit();
  }
  return handle.transaction(async (tx) => {
    await tx.get(doc(handle, "log", "anchor"));
    tx.update(ref, spec.fields);
  });
}

/** A commit whose reads hold `path` with `value` (a transaction's commit, sent as it is). */
function commitReading(handle, path, value) {
  const writes = [{ op: "add", path: ["log"], value: { n: 1 } }];
  return handle._backend.call("commit", { reads: [{ path: segments(path), value }], writes });
}

for (const grant of GRANTS) {
  describe(`every door under the grant ${grant}`, () => {
    let door;
    before(async () => (door = await Door.start(grant)));
    after(() => door?.close());

    for (const row of CASES.rows.filter((each) => each.grant === grant)) {
      test(`${row.principal} ${row.op}: ${row.expect}`, async () => {
        if (door.dirty) await door.reset();
        const { op, expect } = row;
        const handle = door.handles[row.principal];
        const spec = OPS[op];
        if (!("after" in spec)) {
          let got;
          assert.equal(await reason(read(handle, op, spec).then((value) => (got = value))), expect, JSON.stringify(row));
          if (expect === "allowed") assert.deepEqual(got, expected(door, row), JSON.stringify(row));
          return;
        }

        const before = await door.state();
        door.dirty = true; // until the data is known to be unchanged
        const reads = op === "transactionRead" || op === "transactionList";
        let action;
        if (reads) {
          const right = door.sub(spec.value ?? Object.fromEntries((row.ids ?? []).map((id) => [id, SEED[`docs/${id}`]])));
          const wrong = await reason(commitReading(handle, spec.path, door.sub(spec.wrong)));
          assert.equal(wrong, expect === "allowed" ? "CONFLICT" : expect, `a wrong guess: ${JSON.stringify(row)}`);
          assert.deepEqual(await door.state(), before);
          action = commitReading(handle, spec.path, right);
        } else {
          action = write(door, handle, op, spec);
        }
        assert.equal(await reason(action), expect, JSON.stringify(row));
        const afterwards = await door.state();
        if (expect !== "allowed") {
          assert.deepEqual(afterwards, before, `a refused ${op} changed the data`);
          door.dirty = false;
          return;
        }
        for (const [path, value] of Object.entries(spec.after)) {
          assert.deepEqual(plain(await doc(door.handles.admin, ...segments(path)).get()), door.sub(value), path);
        }
        if (reads) assert.equal(Object.keys(afterwards.log).length, Object.keys(before.log).length + 1);
      });
    }
  });
}
