/**
 * The client for Node, which package.json "exports" selects under the "node" condition: index.js,
 * with the records' AES-256-GCM by node:crypto (records-node.js). Browsers load index.js itself
 * (server/web.py serves it as /montybase.js), which keeps WebCrypto's.
 * @module
 */

import { setRecordCipher } from "./channel.js";
import { nodeAesGcm } from "./records-node.js";

setRecordCipher(nodeAesGcm);

export * from "./index.js";
