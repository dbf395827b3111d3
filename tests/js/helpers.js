// Test helpers: a real Montybase server (`python3 -m server`) in a temporary folder, and
// small utilities shared by the node:test suites and the browser tests.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import WebSocket from "ws";

import { publicKeyFromPkcs8 } from "../../js_client/channel.js";
// The Node entry (package.json "exports", condition "node"), as Node programs load it: every test
// process that uses these helpers seals its records with node:crypto. The browser tests run WebCrypto.
import { Montybase } from "montybase";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** The Python that runs servers: $PYTHON (scripts/test sets it), else the project's .venv, else python3. */
export const PYTHON = process.env.PYTHON || (existsSync(join(ROOT, ".venv", "bin", "python")) ? join(ROOT, ".venv", "bin", "python") : "python3");
const START_TIMEOUT = 20_000;
const STOP_TIMEOUT = 15_000;
/**
 * PostgreSQL mode: `MONTYBASE_TEST_STORAGE=postgresql://…` (a PostgreSQL where the tests may make
 * databases, as `python3 tests/pg.py serve` prints; scripts/test sets it for its second run):
 * every server the tests start is then a node of a fresh database there.
 */
export const STORAGE = process.env.MONTYBASE_TEST_STORAGE || "";
if (STORAGE && !STORAGE.startsWith("postgresql://")) {
  throw new Error(`MONTYBASE_TEST_STORAGE=${STORAGE}: a postgresql:// URL (python3 tests/pg.py serve prints one)`);
}

/** The environment for Python children: the repository's packages importable from anywhere. */
export function pythonEnv() {
  const path = process.env.PYTHONPATH ? `${ROOT}:${process.env.PYTHONPATH}` : ROOT;
  return { ...process.env, PYTHONPATH: path, PYTHONUNBUFFERED: "1" };
}

/** `python -m server admins add EMAIL --password-stdin` in `dir` (before a server starts there). */
export async function addAdmin(dir, email, password) {
  await useStorage(dir);
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, ["-m", "server", "admins", "add", email, "--password-stdin"], { cwd: dir, env: pythonEnv() });
    let output = "";
    child.stdout.on("data", (text) => (output += text));
    child.stderr.on("data", (text) => (output += text));
    child.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`admins add failed: ${output}`))));
    child.stdin.end(`${password}\n`);
  });
}

/** A fresh temporary folder. */
export function tempDir(prefix = "montybase-js-") {
  return mkdtemp(join(tmpdir(), prefix));
}

function b64url(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** The rule a freshly generated montybase.json carries: documents open to the client key. */
export const OPEN_RULES = { "**": { read: "public", write: "public" } };

/**
 * Write a montybase.json with fresh keys (WebCrypto), the open rule of a generated config, and
 * `extra` settings, for servers that need settings before their first start (a static folder).
 */
export async function writeConfig(dir, extra = {}) {
  const pair = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
  const random = (n) => b64url(crypto.getRandomValues(new Uint8Array(n)));
  const config = {
    projectName: "montybase-js-tests",
    apiKey: `mb-${random(24)}`,
    adminKey: `mba-${random(32)}`,
    serverKey: b64url(new Uint8Array(await crypto.subtle.exportKey("pkcs8", pair.privateKey))),
    rules: OPEN_RULES,
    ...extra,
  };
  await writeFile(join(dir, "montybase.json"), JSON.stringify(config, null, 2));
  return config;
}

/**
 * One `python3 -m server --config <dir>/montybase.json --port <port>` child, cwd `dir`.
 */
export class Server {
  constructor(dir, child, endpoint, output) {
    this.dir = dir;
    this.child = child;
    this.endpoint = endpoint;
    this.port = Number(new URL(endpoint).port);
    this.http = `http://127.0.0.1:${this.port}`;
    this.output = output;
  }

  /**
   * Start a server in `dir` (a new temporary folder by default); resolves once it prints
   * `endpoint: ws://…`.
   * @param {{dir?: string, port?: number}} [options]
   */
  static async start({ dir, port = 0 } = {}) {
    dir ??= await tempDir();
    await useStorage(dir);
    const child = spawn(PYTHON, ["-m", "server", "--config", join(dir, "montybase.json"), "--port", String(port)], {
      cwd: dir,
      env: pythonEnv(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    // If this test process ends without its after hooks (a crash, a timeout), take the server along.
    const reap = () => child.kill("SIGKILL");
    process.once("exit", reap);
    child.once("exit", () => process.removeListener("exit", reap));
    const output = { stdout: "", stderr: "" };
    child.stderr.setEncoding("utf8").on("data", (text) => (output.stderr += text));
    const endpoint = await new Promise((resolvePromise, reject) => {
      const timer = setTimeout(() => fail(`no endpoint line within ${START_TIMEOUT} ms`), START_TIMEOUT);
      function fail(why) {
        clearTimeout(timer);
        child.kill("SIGKILL");
        reject(new Error(`server did not start: ${why}\n--- stdout ---\n${output.stdout}\n--- stderr ---\n${output.stderr}`));
      }
      child.stdout.setEncoding("utf8").on("data", (text) => {
        output.stdout += text;
        const match = /^endpoint: (\S+)$/m.exec(output.stdout);
        if (match) {
          clearTimeout(timer);
          resolvePromise(match[1]);
        }
      });
      child.on("exit", (code, signal) => fail(`exited with ${code ?? signal}`));
      child.on("error", (error) => fail(error.message));
    });
    return new Server(dir, child, endpoint, output);
  }

  /** Whether the process still runs. */
  get running() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /**
   * The parsed client-config.json the server keeps in step with it at every start (or, should
   * it be missing, the same built from montybase.json).
   */
  async clientConfig() {
    try {
      return JSON.parse(await readFile(join(this.dir, "client-config.json"), "utf8"));
    } catch (error) {
      if (error.code !== "ENOENT") throw error;
    }
    const { projectName, apiKey, serverKey } = await this.adminConfig();
    return { projectName, apiKey, endpoint: this.endpoint, serverKey: await publicKeyFromPkcs8(serverKey) };
  }

  /** The parsed montybase.json (holds the admin key). */
  async adminConfig() {
    return JSON.parse(await readFile(join(this.dir, "montybase.json"), "utf8"));
  }

  /** Send `signal` (SIGTERM: a clean stop) and wait for the exit; SIGKILL if it hangs. */
  async stop(signal = "SIGTERM") {
    if (!this.running) return;
    const exited = new Promise((resolvePromise) => this.child.once("exit", resolvePromise));
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), STOP_TIMEOUT);
    await exited;
    clearTimeout(timer);
  }

  /** Stop the server and remove its folder. */
  async cleanup() {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}

/**
 * Run a Python snippet with the repository importable; resolves with its stdout.
 * @param {string} code
 * @param {{cwd?: string, timeout?: number}} [options]
 */
export function runPython(code, { cwd = ROOT, timeout = 30_000 } = {}) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(PYTHON, ["-c", code], { cwd, env: pythonEnv(), stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (text) => (stdout += text));
    child.stderr.setEncoding("utf8").on("data", (text) => (stderr += text));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeout);
    child.on("error", reject);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolvePromise(stdout);
      else reject(new Error(`python exited with ${code ?? signal}\n--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`));
    });
  });
}

/**
 * Run Python with an admin handle `db` on `server` (the admin key, as a server-side program has
 * it; `json`, `time`, `doc` and `increment` imported); resolves with its stdout.
 * @param {{endpoint: string, dir: string}} server
 * @param {string} code
 * @param {{timeout?: number}} [options]
 */
export function runAdminPython(server, code, { timeout = 120_000 } = {}) {
  return runPython(`
import json, time
from python_client import Montybase, doc, increment
db = Montybase(api=${JSON.stringify(server.endpoint)}, config=${JSON.stringify(join(server.dir, "montybase.json"))})
try:
${code.trim().split("\n").map((line) => `    ${line}`).join("\n")}
finally:
    db.close()
`, { timeout });
}

/** Read and parse a JSON file of the repository. */
export async function readJson(...parts) {
  return JSON.parse(await readFile(join(ROOT, ...parts), "utf8"));
}

let counter = 0;
/** A collection name no other test uses. */
export function unique(name = "c") {
  counter += 1;
  return `${name}-${process.pid}-${counter}`;
}

/** Kill the server at once (SIGKILL, as a crash) and start it again on the same port and folder. */
Server.prototype.restart = async function restart({ signal = "SIGKILL" } = {}) {
  await this.stop(signal);
  const again = await Server.start({ dir: this.dir, port: this.port });
  Object.assign(this, { child: again.child, endpoint: again.endpoint, output: again.output });
  return this;
};

/**
 * In PostgreSQL mode, make the storageBucket of `dir`'s montybase.json (written first if there is
 * none) a fresh database, unless it names one already: a server started again on its folder finds
 * its data there, one whose bucket a test set to ":memory:" starts empty, as in memory.
 */
async function useStorage(dir) {
  if (!STORAGE) return;
  const path = join(dir, "montybase.json");
  const config = existsSync(path) ? JSON.parse(await readFile(path, "utf8")) : null;
  if (config?.storageBucket?.startsWith("postgresql://")) return;
  const made = await runPython(`from pg import create_database\nprint(create_database(${JSON.stringify(STORAGE)}))`, {
    cwd: join(ROOT, "tests"),
  });
  const storageBucket = made.trim();
  await (config ? updateConfig(dir, { storageBucket }) : writeConfig(dir, { storageBucket }));
}

/** Write `extra` settings into an existing montybase.json (for the next start). */
export async function updateConfig(dir, extra) {
  const path = join(dir, "montybase.json");
  const config = { ...JSON.parse(await readFile(path, "utf8")), ...extra };
  await writeFile(path, JSON.stringify(config, null, 2));
  return config;
}

/** The bound of every wait for a snapshot, in ms. */
export const WAIT = 10_000;

/**
 * A listener callback that keeps every snapshot; `next()` reads them in order and `waitFor`
 * waits (bounded) until the list satisfies a predicate.
 */
export class Snapshots {
  constructor() {
    this.items = [];
    this.read = 0;
    this.errors = [];
    this.waiters = new Map(); // check → its timer
    this.callback = (snapshot) => {
      this.items.push(snapshot);
      this.#wake();
    };
    this.onError = (error) => {
      this.errors.push(error);
      this.#wake();
    };
  }

  #wake() {
    for (const waiter of [...this.waiters.keys()]) waiter();
  }

  /** Stop waiting (clears the timers of waits still pending, which then never settle). */
  dispose() {
    for (const timer of this.waiters.values()) clearTimeout(timer);
    this.waiters.clear();
  }

  /** Wait until `predicate(items)` holds; the items. */
  waitFor(predicate, what = "a snapshot", timeout = WAIT) {
    if (predicate(this.items)) return Promise.resolve(this.items);
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!predicate(this.items)) return;
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(this.items);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no ${what} within ${timeout} ms; got ${this.items.length} snapshots, last ${JSON.stringify(this.items.at(-1))}`));
      }, timeout);
      this.waiters.set(check, timer);
    });
  }

  /** The next snapshot not read yet. */
  async next(timeout = WAIT) {
    const index = this.read;
    await this.waitFor((items) => items.length > index, `snapshot ${index + 1}`, timeout);
    this.read = index + 1;
    return this.items[index];
  }

  /** The snapshots not read yet (and mark them read). */
  pending() {
    const out = this.items.slice(this.read);
    this.read = this.items.length;
    return out;
  }

  /** Wait for the listener's first error (a refused subscription). */
  async error(timeout = WAIT) {
    await this.waitFor(() => this.errors.length > 0, "an error", timeout);
    return this.errors[0];
  }
}

/** Start `target.onSnapshot`, resolve with its first snapshot (or reject with its refusal), stop it. */
export function firstSnapshot(target) {
  const got = new Snapshots();
  const stop = target.onSnapshot(got.callback, got.onError);
  const refused = stop.ready.then(() => new Promise(() => {}));
  return Promise.race([got.next(), refused]).finally(() => {
    stop();
    got.dispose();
  });
}

/**
 * A document listener used as a barrier: `sync()` writes it and waits for its snapshot. The
 * snapshots of one handle arrive in commit order, so once the marker's arrives, every snapshot
 * of earlier writes has arrived too.
 */
export class Marker {
  constructor(ref) {
    this.ref = ref;
    this.snapshots = new Snapshots();
    this.count = 0;
    this.stop = ref.onSnapshot(this.snapshots.callback);
  }

  async ready() {
    await this.snapshots.next();
    return this;
  }

  async sync() {
    this.count += 1;
    const token = `${process.pid}-${this.count}`;
    await this.ref.set({ step: token });
    await this.snapshots.waitFor((items) => items.some((s) => s.value && s.value.step === token), `marker ${this.count}`);
  }
}

/**
 * A server for one test file, with a handle on the client key (`db`) and one on the admin key.
 * @returns {Promise<{server: Server, db: Montybase, admin: Montybase}>}
 */
export async function openServer() {
  const server = await Server.start();
  const db = new Montybase(await server.clientConfig(), { WebSocket });
  const admin = new Montybase(await server.adminConfig(), { WebSocket, endpoint: server.endpoint });
  return { server, db, admin };
}

/** Close what openServer opened (whatever of it was opened). */
export async function closeServer({ server, db, admin }) {
  await db?.close();
  await admin?.close();
  await server?.cleanup();
}
