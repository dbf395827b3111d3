/**
 * Field transforms: values that the database resolves atomically when it applies a write.
 * Each is plain data (a one-key object such as `{"$increment": 1}`), exactly as the Python
 * client's `python_client/transforms.py`, so it crosses the wire as it is.
 * @module
 */

/**
 * Add `n` to the field (a missing or non-numeric field becomes `n`).
 * @param {number} n
 * @returns {{$increment: number}}
 */
export function increment(n) {
  return { $increment: n };
}

/**
 * Keep the larger of the field and `n`: "keep the best score".
 * @param {number} n
 * @returns {{$maximum: number}}
 */
export function maximum(n) {
  return { $maximum: n };
}

/**
 * Keep the smaller of the field and `n`.
 * @param {number} n
 * @returns {{$minimum: number}}
 */
export function minimum(n) {
  return { $minimum: n };
}

/**
 * Append each item the array does not hold yet.
 * @param {...unknown} items
 * @returns {{$arrayUnion: unknown[]}}
 */
export function arrayUnion(...items) {
  return { $arrayUnion: items };
}

/**
 * Remove every occurrence of each item from the array.
 * @param {...unknown} items
 * @returns {{$arrayRemove: unknown[]}}
 */
export function arrayRemove(...items) {
  return { $arrayRemove: items };
}

/**
 * The time the database applies the write, in milliseconds since the epoch.
 * @returns {{$serverTimestamp: true}}
 */
export function serverTimestamp() {
  return { $serverTimestamp: true };
}

/**
 * Remove the field (in `update` only).
 * @returns {{$delete: true}}
 */
export function deleteField() {
  return { $delete: true };
}
