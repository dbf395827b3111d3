"""Access rules and limits: may this principal do this operation on this path with this value.

`rules` in montybase.json maps collection patterns ("scores", "rooms/*/messages", "**" for
any collection) to grants per operation (get, list, create, update, delete; "read" and
"write" are shorthands) and data rules (schema, immutable, serverFields, maxDocBytes, maxDocs,
rate). Deny by default; the most specific pattern wins, with no inheritance. The admin key
passes every rule (limits still apply).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry

from .errors import (
    InvalidArgumentError, LimitExceededError, MontybaseError, PermissionDeniedError, RateLimitedError, ValidationError,
)
from .paths import field_path, pointer
from .query import Query, field_value, parse_query
from .values import json_equal

__all__ = ["GRANTS", "OPERATIONS", "Principal", "RateLimiter", "Rule", "Rules", "dry_run", "parse_rate"]

OPERATIONS = ("get", "list", "create", "update", "delete")
GRANTS = ("none", "public", "user", "owner", "admin")
_SHORTHANDS = {"read": ("get", "list"), "write": ("create", "update", "delete")}
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # a document's stored size
_UNITS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "day": 86400}


@dataclass
class Principal:
    """Who is asking: the key's role, the signed-in user, and where from (for rate limits)."""

    role: str = "client"
    uid: str | None = None
    connection: int = 0
    address: str = ""

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def parse_rate(text: str, where: str) -> tuple[int, float]:
    """A rate like "10/min" as (count, seconds)."""
    count, _, unit = text.partition("/")
    if not count.isdigit() or int(count) < 1 or unit not in _UNITS:
        raise InvalidArgumentError(f"{where}: a rate is like \"10/min\" (per s, min, hour or day), got {text!r}", {"path": where})
    return int(count), float(_UNITS[unit])


def _remote_ref(schema: Any) -> str | None:
    """The first `$ref` that leaves the schema, if any."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return ref
        schema = list(schema.values())
    if isinstance(schema, list):
        for item in schema:
            found = _remote_ref(item)
            if found is not None:
                return found
    return None


# Keywords that mean the same in draft 7 and 2020-12: a schema made only of these is also
# compiled by fastjsonschema (about 20x faster), with the reference validator behind it.
_PORTABLE = frozenset({
    "type", "properties", "required", "additionalProperties", "patternProperties", "propertyNames",
    "minProperties", "maxProperties", "items", "minItems", "maxItems", "uniqueItems", "contains",
    "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "enum", "const", "allOf", "anyOf", "oneOf", "not", "if", "then", "else",
    "$ref", "$defs", "$schema", "$id", "$comment", "title", "description", "default", "examples",
    "format",  # checked by neither: jsonschema without a format checker, fastjsonschema without formats
})
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs")  # their values are schemas, keyed by name


def _portable(schema: Any) -> bool:
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, dict) or not _PORTABLE.issuperset(schema):
        return False
    if isinstance(schema.get("items"), list):  # tuple items: a 2020-12 error, a draft-7 feature
        return False
    for key, value in schema.items():
        if key in _SCHEMA_MAPS:
            if not isinstance(value, dict) or not all(_portable(sub) for sub in value.values()):
                return False
        elif key in ("allOf", "anyOf", "oneOf"):
            if not isinstance(value, list) or not all(_portable(sub) for sub in value):
                return False
        elif key in ("additionalProperties", "propertyNames", "items", "contains", "not", "if", "then", "else"):
            if not _portable(value):
                return False
    return True


def _no_remote(uri: str) -> Any:
    raise ValueError(f"remote $ref refused: {uri}")


@dataclass(frozen=True)
class Rule:
    """The rule of one collection pattern."""

    pattern: str
    grants: dict[str, str]
    owner: tuple[str, ...] | None = None  # None: the document id is the owner's uid ("$id")
    schema: Draft202012Validator | None = None
    fast_check: Callable[[Any], Any] | None = None  # raises when the document may be invalid
    immutable: tuple[tuple[str, ...], ...] = ()
    server_fields: dict[str, str] = field(default_factory=dict)
    max_doc_bytes: int | None = None
    max_docs: int | None = None
    rates: dict[str, tuple[int, float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, pattern: str, spec: dict[str, Any]) -> Rule:
        where = pointer("/rules", pattern)  # in montybase.json
        grants = dict.fromkeys(OPERATIONS, "none")
        for name, ops in _SHORTHANDS.items():
            if name in spec:
                grants.update(dict.fromkeys(ops, spec[name]))
        grants.update({op: spec[op] for op in OPERATIONS if op in spec})
        for op, grant in grants.items():
            if grant not in GRANTS:
                at = pointer(where, op)
                raise InvalidArgumentError(f"{at}: grant must be one of {', '.join(GRANTS)}, got {grant!r}", {"path": at})
        owner_spec = spec.get("owner", "$id")
        owner = None if owner_spec == "$id" else field_path(owner_spec, pointer(where, "owner"))
        schema = fast_check = None
        if "schema" in spec:
            try:
                Draft202012Validator.check_schema(spec["schema"])
            except SchemaError as exc:
                at = pointer(where, "schema")
                raise InvalidArgumentError(f"{at}: not a valid JSON Schema: {exc.message}", {"path": at}) from None
            remote = _remote_ref(spec["schema"])
            if remote is not None:
                at = pointer(where, "schema")
                raise InvalidArgumentError(
                    f"{at}: $ref {remote!r} is not local; only references inside the schema (\"#/…\") are allowed",
                    {"path": at},
                )
            # An empty registry that refuses to fetch, should any other reference slip through.
            schema = Draft202012Validator(spec["schema"], registry=Registry(retrieve=_no_remote))
            if _portable(spec["schema"]):
                fast_check = fastjsonschema.compile(
                    {key: value for key, value in spec["schema"].items() if key != "$schema"}
                    if isinstance(spec["schema"], dict) else spec["schema"],
                    handlers={"http": _no_remote, "https": _no_remote, "file": _no_remote}, use_formats=False,
                )
        rates = {}
        for op, text in (spec.get("rate") or {}).items():
            for name in _SHORTHANDS.get(op, (op,)):
                rates[name] = parse_rate(text, pointer(where, "rate", op))
        return cls(
            pattern,
            grants,
            owner,
            schema,
            fast_check,
            tuple(field_path(name, pointer(where, "immutable")) for name in spec.get("immutable", ())),
            dict(spec.get("serverFields") or {}),
            spec.get("maxDocBytes"),
            spec.get("maxDocs"),
            rates,
        )

    @property
    def fixed(self) -> tuple[tuple[str, ...], ...]:
        """The fields a client may never change: the immutable ones and the server-set ones."""
        return tuple(dict.fromkeys((*self.immutable, *(field_path(name) for name in self.server_fields))))

    @property
    def open(self) -> bool:
        """Grants the public anything on every collection: worth a warning at every start."""
        return self.pattern == "**" and any(grant == "public" for grant in self.grants.values())

    def owns(self, principal: Principal, doc_id: str, document: Any) -> bool:
        if principal.uid is None:
            return False
        if self.owner is None:
            return doc_id == principal.uid
        return document is not None and field_value(document, self.owner) == principal.uid

    def allows(self, principal: Principal, op: str, doc_id: str | None, document: Any) -> bool:
        """Whether `principal` may do `op` on this document (`doc_id` None: a whole collection)."""
        grant = self.grants[op]
        if grant == "public":
            return True
        if grant == "user":
            return principal.uid is not None
        if grant == "owner":
            return doc_id is not None and self.owns(principal, doc_id, document)
        return False


def _kept(new: dict, old: dict, fields: tuple[tuple[str, ...], ...]) -> dict:
    """A set's document with each of `fields` that it leaves out and `old` holds taken from `old`
    (copying only what changes; a field whose place in `new` is not an object stays out)."""
    for field in fields:
        value: Any = old
        for key in field:
            if type(value) is not dict or key not in value:
                break
            value = value[key]
        else:
            out = parent = dict(new)
            for key in field[:-1]:
                child = parent.get(key, {})
                if type(child) is not dict:
                    break
                parent[key] = child = dict(child)
                parent = child
            else:
                if field[-1] not in parent:
                    parent[field[-1]] = value
                    new = out
    return new


def _specificity(pattern: str) -> tuple[int, int]:
    parts = pattern.split("/")
    return (sum(part not in ("*", "**") for part in parts), len(parts))


def _passes(fast_check: Callable[[Any], Any] | None, document: Any) -> bool:
    """Whether the compiled check accepts the document (False: ask the reference validator)."""
    if fast_check is None:
        return False
    try:
        fast_check(document)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


class Rules:
    """Every rule of a config, matched to collection paths, plus the size limits."""

    def __init__(self, rules: dict[str, Any] | None, *, max_doc_bytes: int = 65536, max_results: int = 1000):
        self.configured = rules is not None
        self.rules = [Rule.parse(pattern, spec) for pattern, spec in (rules or {}).items()]
        self.rules.sort(key=lambda rule: _specificity(rule.pattern), reverse=True)
        self.max_doc_bytes = max_doc_bytes
        self.max_results = max_results
        self._cache: dict[tuple[str, ...], Rule | None] = {}

    @property
    def open(self) -> bool:
        return any(rule.open for rule in self.rules)

    def match(self, collection: tuple[str, ...]) -> Rule | None:
        """The most specific rule for a collection path, or None (deny)."""
        if collection in self._cache:
            return self._cache[collection]
        found = None
        for rule in self.rules:
            parts = rule.pattern.split("/")
            if parts == ["**"] or (
                len(parts) == len(collection) and all(p == "*" or p == c for p, c in zip(parts, collection))
            ):
                found = rule
                break
        if len(self._cache) < 10_000:
            self._cache[collection] = found
        return found

    # Reads

    def check_read(self, principal: Principal, path: tuple[str, ...], document: Any) -> None:
        """A `get` of a document (or a field inside it): PERMISSION_DENIED whether or not it exists."""
        if principal.admin:
            return
        rule = self.match(path[:-1])
        if rule is None or not rule.allows(principal, "get", path[-1], document):
            raise PermissionDeniedError(f"{principal.role} may not get {'/'.join(path)}", {"document": list(path)})

    def owner_filter(self, principal: Principal, path: tuple[str, ...]) -> tuple[tuple[str, ...], str | None] | None:
        """For a listener of the document at `path` that `principal` may read only while it owns
        it: the owner field and the uid it must hold; None when ownership does not matter."""
        if principal.admin:
            return None
        rule = self.match(path[:-1])
        if rule is not None and rule.grants["get"] == "owner" and rule.owner is not None:
            return rule.owner, principal.uid
        return None

    def narrow(self, principal: Principal, query: Query) -> Query:
        """A `list`: the query limited to what the caller may read, or PERMISSION_DENIED."""
        if principal.admin:
            return query
        one_document = len(query.path) % 2 == 0  # a query on one document reads that document
        rule = self.match(query.path[:-1] if one_document else query.path)
        grant = rule.grants["get" if one_document else "list"] if rule else "none"
        if grant == "public" or (grant == "user" and principal.uid is not None):
            return query
        if grant == "owner" and principal.uid is not None:
            return replace(query, owner=(rule.owner, principal.uid))
        raise PermissionDeniedError(f"{principal.role} may not list {'/'.join(query.path)}", {"document": list(query.path)})

    def check_results(self, principal: Principal, count: int, asked: int | None = None) -> None:
        """At most maxResults documents per client read; `asked` is the read's limit (or
        limitToLast), None when it has none."""
        if principal.admin or count <= self.max_results:
            return
        if asked is None:
            fix = f"add a limit of at most {self.max_results}, or a where that matches fewer"
        else:
            fix = f"the query asked for up to {asked} (its limit): lower it to {self.max_results} or less"
        raise LimitExceededError(
            f"the read matches {count} documents and at most {self.max_results} may be read at once: {fix}",
            {"limit": self.max_results, "actual": count},
        )

    # Writes

    def check_write(
        self, principal: Principal, op: str, path: tuple[str, ...], old: Any, new: Any, now_ms: int,
        collection_size: int, *, replacing: bool = False,
    ) -> Any:
        """Check a create, update or delete of the document at `path`; for create and update,
        return the document to store (server fields filled in), after every data rule. An update
        `replacing` the document (a set) keeps the immutable and server-set fields it leaves out."""
        collection = path[:-1]
        if len(path) % 2:
            if principal.admin:
                return new
            raise PermissionDeniedError(f"only the admin key may delete the whole collection {'/'.join(path)}", {"document": list(path)})
        if principal.admin:  # the admin key passes every rule; size limits still apply
            return self._sized(new, None)
        rule = self.match(collection)
        if op == "create" and rule is not None and rule.server_fields:
            new = {**new, **{name: principal.uid if source == "uid" else now_ms for name, source in rule.server_fields.items()}}
        elif replacing and rule is not None and old is not None:  # before the owner check: an owner field may be fixed
            new = _kept(new, old, rule.fixed)
        subject = new if op == "create" else old
        if rule is None or not rule.allows(principal, op, path[-1], subject):
            raise PermissionDeniedError(f"{principal.role} may not {op} {'/'.join(path)}", {"document": list(path)})
        if new is not None and op == "update" and rule.grants["update"] == "owner" and not rule.owns(principal, path[-1], new):
            raise PermissionDeniedError(f"{principal.role} may not give {'/'.join(path)} to another owner", {"document": list(path)})
        if new is None or rule is None:
            return self._sized(new, None)
        if op == "create":
            if rule.max_docs is not None and collection_size >= rule.max_docs:
                raise LimitExceededError(
                    f"{'/'.join(collection)} holds at most {rule.max_docs} documents",
                    {"limit": rule.max_docs, "actual": collection_size + 1},
                )
        else:
            changed = [name for name in rule.fixed if not json_equal(field_value(old, name), field_value(new, name))]
            if changed:
                errors = [{"path": "/" + "/".join(name), "keyword": "immutable", "message": f"{'.'.join(name)} may not change"}
                          for name in changed]
                raise ValidationError(f"{'/'.join(path)}: {errors[0]['message']}", {"errors": errors})
        if rule.schema is not None and not _passes(rule.fast_check, new):
            errors = [
                {"path": "/" + "/".join(str(part) for part in error.absolute_path), "keyword": error.validator,
                 "message": error.message}
                for error in rule.schema.iter_errors(new)
            ]
            if errors:
                raise ValidationError(f"{'/'.join(path)} breaks the data rules: {errors[0]['path']}: {errors[0]['message']}",
                                      {"errors": errors})
        return self._sized(new, rule)

    def check_cascade(self, principal: Principal, path: tuple[str, ...], below: list[tuple[tuple[str, ...], Any]]) -> None:
        """A delete of the document at `path` also deletes `below` (every document of its
        subcollections, [(path, document)]): each must pass its own `delete` rule, whether or
        not the document at `path` exists."""
        if principal.admin:
            return
        for doc_path, document in below:
            rule = self.match(doc_path[:-1])
            if rule is None or not rule.allows(principal, "delete", doc_path[-1], document):
                raise PermissionDeniedError(
                    f"{principal.role} may not delete {'/'.join(path)}: it would also delete {'/'.join(doc_path)}, "
                    "which the rules protect", {"document": list(doc_path)},
                )

    def _sized(self, document: Any, rule: Rule | None) -> Any:
        if document is None:
            return document
        limit = min(self.max_doc_bytes, rule.max_doc_bytes or self.max_doc_bytes) if rule else self.max_doc_bytes
        size = len(_compact(document).encode())
        if size > limit:
            raise LimitExceededError(f"the document is {size} bytes; at most {limit} are allowed",
                                     {"limit": limit, "actual": size})
        return document


class RateLimiter:
    """Token buckets per (connection or address, collection pattern, operation), and any others
    a caller names (sign-ups). Thread-safe: sign-ups are counted on executor threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._buckets: dict[tuple[Any, ...], tuple[float, float, float]] = {}  # key → (tokens, when, full again at)
        self._lock = threading.Lock()
        self._recording = threading.local()  # per thread: the list `recorded` keeps the tokens spent in

    @contextmanager
    def recorded(self) -> Iterator[list[tuple[tuple[Any, ...], int, float]]]:
        """The buckets this thread spends a token of meanwhile, for `refund` (a write computed
        once more counts once)."""
        spent: list[tuple[tuple[Any, ...], int, float]] = []
        self._recording.spent = spent
        try:
            yield spent
        finally:
            self._recording.spent = None

    def refund(self, spent: list[tuple[tuple[Any, ...], int, float]]) -> None:
        """Give back the tokens `recorded` saw spent."""
        with self._lock:
            for key, count, seconds in spent:
                if key in self._buckets:
                    tokens, when, full = self._buckets[key]
                    self._buckets[key] = (min(float(count), tokens + 1), when, full - seconds / count)

    def take(self, principal: Principal, rule: Rule | None, op: str) -> None:
        """Spend one token of each bucket the operation falls in, or raise RATE_LIMITED."""
        if principal.admin or rule is None or op not in rule.rates:
            return
        count, seconds = rule.rates[op]
        keys = [("connection", principal.connection, rule.pattern, op), ("address", principal.address, rule.pattern, op)]
        self.spend([(key, count, seconds) for key in keys], op)

    def spend(self, buckets: list[tuple[tuple[Any, ...], int, float]], what: str) -> None:
        """Spend one token of each bucket (key, count, per seconds), or none of them and raise
        RATE_LIMITED with the wait until the emptiest has one again."""
        with self._lock:
            now = self.clock()
            levels = []
            for key, count, seconds in buckets:
                tokens, last, _ = self._buckets.get(key, (float(count), now, now))
                tokens = min(float(count), tokens + (now - last) * count / seconds)
                if tokens < 1:
                    wait_ms = int((1 - tokens) * seconds / count * 1000) + 1
                    raise RateLimitedError(f"at most {count} {what} per {seconds:g}s here; retry in {wait_ms} ms",
                                           {"retryAfterMs": wait_ms})
                levels.append((key, tokens - 1, now + (count - tokens + 1) * seconds / count))
            for key, tokens, full in levels:
                self._buckets[key] = (tokens, now, full)
            if (recording := getattr(self._recording, "spent", None)) is not None:
                recording.extend(buckets)
            if len(self._buckets) > 100_000:  # forget the buckets that are full again: a new one is the same
                self._buckets = {k: v for k, v in self._buckets.items() if v[2] > now}


Stored = Callable[[Rule, str, tuple[str, ...], Any], tuple[Any, int]]


def dry_run(rules: Rules, principal: Principal, op: str, path: tuple[str, ...], value: Any,
            stored: Stored) -> tuple[bool, str]:
    """Would `rules` allow `principal` to `op` `path` (with `value`, the document as the write
    leaves it)? Whether, and a line that says so with the rule that decided. `stored(rule, op,
    path, value)` gives the stored document and its collection's size when the answer needs them.
    The same answer for `montybase rules test` and the console's rules form."""
    if (op == "list") != (len(path) % 2 == 1):
        kind = "a collection" if op == "list" else "a document"
        raise InvalidArgumentError(f"{op} takes {kind} path, got {'/'.join(path)!r}", {"path": "/path"})
    collection = path if op == "list" else path[:-1]
    rule = rules.match(collection)
    who = "admin" if principal.admin else f"user:{principal.uid}" if principal.uid else "anonymous"
    asked = f"{op} {'/'.join(path)} as {who}"
    if principal.admin:
        return True, f"ALLOW {asked} (the admin key passes every rule)"
    if rule is None:
        return False, f"DENY {asked} (no rule matches {'/'.join(collection)}: denied by default)"
    decided = f'rule "{rule.pattern}": {op} is {rule.grants[op]}'
    old, size = stored(rule, op, path, value)
    try:
        if op == "get":
            rules.check_read(principal, path, old)
        elif op == "list":
            if rules.narrow(principal, parse_query({"path": list(path)})).owner is not None:
                decided += ", so only the documents this user owns"
        elif value is None and op != "delete":  # the grant alone: no document to check the data rules on
            if not rule.allows(principal, op, path[-1], old if op == "update" else None):
                raise PermissionDeniedError(f"{op} is {rule.grants[op]}")
            decided += "; give a value to check the data rules too"
        else:
            now_ms = int(time.time() * 1000)
            rules.check_write(principal, op, path, old, value, now_ms, size, replacing=op == "update")
    except MontybaseError as exc:
        reason = "" if exc.reason == "PERMISSION_DENIED" else f"; {exc.reason}: {exc.message}"
        return False, f"DENY {asked} ({decided}{reason})"
    return True, f"ALLOW {asked} ({decided})"
