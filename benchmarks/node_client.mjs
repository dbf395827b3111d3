#!/usr/bin/env node
// The JS client's round trips against a running Montybase server, for benchmarks/bench.py:
//
//   node benchmarks/node_client.mjs ws://127.0.0.1:8765 client-config.json [--requests N] [--seconds S]
//
// `client-config.json` may also be a server's montybase.json (the admin key). It writes one
// small document (bench/node-client), then times sequential `get`s of it (N at most, S seconds
// at most), then 16 loops of `get`s in flight together on the same connection (N in all, S
// seconds at most), and prints ONE JSON line:
//   {"sequential_rps": …, "p50_ms": …, "p99_ms": …, "concurrent16_rps": …}
// The WebSocket comes from the `ws` devDependency (npm ci). Errors go to stderr, exit code 1.

import { readFile } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import WebSocket from "ws";

import { Montybase, doc } from "montybase"; // the package as Node resolves it: js_client/node.js (node:crypto records)

const USAGE = "usage: node benchmarks/node_client.mjs ENDPOINT CONFIG [--requests N] [--seconds S]";
const LOOPS = 16;
const WARMUP = 200;

function parseArgs(argv) {
  const positional = [];
  const options = { requests: 5000, seconds: 10 };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--requests" || arg === "--seconds") {
      const value = Number(argv[++i]);
      if (!(value > 0) || (arg === "--requests" && !Number.isInteger(value))) throw new Error(`${arg} takes a positive number\n${USAGE}`);
      options[arg.slice(2)] = value;
    } else if (arg === "-h" || arg === "--help") {
      console.log(USAGE);
      process.exit(0);
    } else {
      positional.push(arg);
    }
  }
  if (positional.length !== 2) throw new Error(USAGE);
  [options.endpoint, options.config] = positional;
  return options;
}

/** The value at fraction `q` of sorted `values` (nearest rank). */
function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

const round = (value, digits) => Number(value.toFixed(digits));

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const config = JSON.parse(await readFile(options.config, "utf8"));
  const db = new Montybase(config, { WebSocket, endpoint: options.endpoint });
  try {
    const ref = doc(db, "bench", "node-client");
    await ref.set({ name: "node client", score: 42, tags: ["a", "b"] });
    for (let i = 0; i < WARMUP; i++) await ref.get();

    // Sequential: one request in flight.
    const latencies = [];
    const capMs = options.seconds * 1000;
    let started = performance.now();
    while (latencies.length < options.requests && performance.now() - started < capMs) {
      const t0 = performance.now();
      await ref.get();
      latencies.push(performance.now() - t0);
    }
    const sequentialMs = performance.now() - started;

    // Concurrent: 16 loops, each with one request in flight, over the one connection.
    let sent = 0;
    let done = 0;
    started = performance.now();
    const loop = async () => {
      while (sent < options.requests && performance.now() - started < capMs) {
        sent += 1;
        await ref.get();
        done += 1;
      }
    };
    await Promise.all(Array.from({ length: LOOPS }, loop));
    const concurrentMs = performance.now() - started;

    latencies.sort((a, b) => a - b);
    const result = {
      sequential_rps: round((latencies.length * 1000) / sequentialMs, 1),
      p50_ms: round(quantile(latencies, 0.5), 3),
      p99_ms: round(quantile(latencies, 0.99), 3),
      concurrent16_rps: round((done * 1000) / concurrentMs, 1),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    await db.close();
  }
}

main().catch((error) => {
  process.stderr.write(`node_client: ${error.reason ? `${error.reason}: ` : ""}${error.message}\n`);
  process.exit(1);
});
