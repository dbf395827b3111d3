/**
 * Where a JSON Pointer (RFC 6901) points in a JSON text: the console marks the field a server
 * error names (`data.path`, e.g. "/value/score") in the document being edited.
 * @module
 */

/**
 * The pointer inside the document for an error about a write's `value`: "/value/a/0" → "/a/0";
 * null when the error is not about the value.
 * @param {unknown} path an error's `data.path`
 * @returns {string | null}
 */
export function valuePointer(path) {
  if (typeof path !== "string") return null;
  if (path === "/value") return "";
  return path.startsWith("/value/") ? path.slice("/value".length) : null;
}

/** "/a~1b/c" → ["a/b", "c"] */
export function segments(pointer) {
  return pointer === "" ? [] : pointer.slice(1).split("/").map((part) => part.replaceAll("~1", "/").replaceAll("~0", "~"));
}

/**
 * The span of `text` (valid JSON) that `pointer` names: the member's key and value for an
 * object member, the element for an array item, the whole text for "". Null if not found
 * (the span of the nearest existing parent is still useful: see `locateNearest`).
 * @param {string} text
 * @param {string} pointer
 * @returns {{start: number, end: number, line: number} | null}
 */
export function locate(text, pointer) {
  const spans = new Map();
  let at = 0;
  const space = () => { while (at < text.length && " \t\r\n".includes(text[at])) at++; };
  const string = () => {
    const start = at++;
    while (at < text.length && text[at] !== '"') at += text[at] === "\\" ? 2 : 1;
    at++;
    return JSON.parse(text.slice(start, at));
  };
  const value = (path, start) => {
    space();
    const from = start ?? at;
    if (text[at] === "{") {
      at++; space();
      while (text[at] !== "}" && at < text.length) {
        space();
        const keyStart = at;
        const key = string();
        space(); at++; // the colon
        value(`${path}/${key.replaceAll("~", "~0").replaceAll("/", "~1")}`, keyStart);
        space();
        if (text[at] === ",") at++;
        space();
      }
      at++;
    } else if (text[at] === "[") {
      at++; space();
      for (let index = 0; text[at] !== "]" && at < text.length; index++) {
        value(`${path}/${index}`);
        space();
        if (text[at] === ",") at++;
        space();
      }
      at++;
    } else if (text[at] === '"') {
      string();
    } else {
      while (at < text.length && !",}] \t\r\n".includes(text[at])) at++;
    }
    spans.set(path, { start: from, end: at, line: text.slice(0, from).split("\n").length });
  };
  try {
    JSON.parse(text);
    value("");
  } catch {
    return null;
  }
  return spans.get(pointer) ?? null;
}

/**
 * The span of `pointer`, or of its nearest parent that exists (a missing required field is
 * reported at its object), with the pointer found.
 * @param {string} text
 * @param {string} pointer
 * @returns {{start: number, end: number, line: number, pointer: string} | null}
 */
export function locateNearest(text, pointer) {
  for (let parts = segments(pointer); ; parts = parts.slice(0, -1)) {
    const found = parts.map((part) => part.replaceAll("~", "~0").replaceAll("/", "~1"));
    const at = found.length ? "/" + found.join("/") : "";
    const span = locate(text, at);
    if (span) return { ...span, pointer: at };
    if (!parts.length) return null;
  }
}
