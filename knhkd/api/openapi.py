"""The OpenAPI 3.1 description of the HTTP API, generated from the app itself.

Guarantees:
- Every route of the app (its ``url_map``, every method but HEAD and
  OPTIONS) is in the document: each is described by the ``RouteDoc`` beside
  its handler (api/routes/doc.py), and ``document`` raises ``LookupError``
  naming a route that has none, so none can be forgotten.
- Schemas are msgspec's own (``msgspec.json.schema_components``) of the very
  types the handlers decode and encode, bounds included (``maxLength``,
  ``maximum`` …); the ``[limits]`` of the configuration the document is made
  for are written into the observation's schema.
- Every response a route can give is listed: its success answers, and each
  status its problems (``application/problem+json``, the ``Problem`` schema)
  may have, with the problem types named (``x-problem-types``): the route's
  own, and those every route of its kind can give (the edge guard's 403s and
  415, 413 for a body, storage, read-only and draining 503s and 507 for a
  write, 500).
- ``GET /openapi.json`` serves the document of the running configuration;
  ``python -m knhkd.cli.openapi`` prints that of the defaults, committed as
  docs/openapi.json (tests hold the two equal).

Must never: describe a route from anything but the app and the types.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

import msgspec
from quart import Blueprint, Response, current_app
from quart_trio import QuartTrio

from knhkd.api.authn import PUBLIC, ROUTE_PERMISSIONS
from knhkd.api.problems import PROBLEM_JSON
from knhkd.api.routes.base import JSON, front
from knhkd.api.routes.doc import Answer, RouteDoc, doc_of, documented
from knhkd.config import Config
from knhkd.errors import PROBLEM_PREFIX
from knhkd.model import Problem

REF = "#/components/schemas/{name}"
CACHE_KEY = "KNHKD_OPENAPI"
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PATH_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

bp = Blueprint("openapi", __name__)

DESCRIPTION = """\
knhkd's HTTP API. Every error is `application/problem+json` (RFC 9457) with a
`urn:knhkd:problem:*` type; invalid input names each field in `errors`.
Requests must name this daemon in `Host`; a browser page's mutating request
(an `Origin` header) is refused unless its origin is configured; a request
body must be JSON (`application/json`, `application/*+json`; NDJSON where
listed), at most `http.max_body_bytes` ({max_body_bytes}) bytes. In an
observation's `value`, integers fit int64, floats are finite, nesting is at
most 32 arrays/objects deep, each string (and object key) holds at most
{value_max_string_length} characters and each array/object at most
{value_max_members} members."""


def _types_of(t: Any) -> tuple[Any, ...]:
    return t if isinstance(t, tuple) else (t,)


def _problems_of(doc: RouteDoc, methods: set[str], public: bool) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    # Any request may meet a draining server (api/server.py).
    common: list[tuple[int, str]] = [
        (403, "host-not-allowed"), (500, "internal-error"), (503, "draining"),
    ]
    if not public:
        # api/authn.py: who is asking, may they, and not too often.
        common += [(401, "unauthorized"), (403, "forbidden"), (429, "too-many-requests")]
    if methods & MUTATING:
        common.append((403, "origin-not-allowed"))
    if doc.body is not None:
        # api/server.py: a body that does not fit the in-flight budget.
        common += [(400, "malformed-json"), (413, "payload-too-large"),
                   (415, "unsupported-media-type"), (503, "overloaded")]
    if doc.writes:
        common += [(503, "storage-unavailable"), (503, "read-only"),
                   (507, "storage-full")]
    for status, slug in (*common, *doc.problems):
        found.setdefault(status, set()).add(slug)
    return found


def _schema_types(docs: dict[str, RouteDoc]) -> list[Any]:
    types: list[Any] = [Problem]
    for doc in docs.values():
        if doc.body is not None:
            types.append(doc.body)
        for answer in doc.answers:
            types.extend(t for t in _types_of(answer.type) if t is not None)
    return types


def _rules(app: QuartTrio) -> list[tuple[str, str, list[str], list[str]]]:
    """(OpenAPI path, endpoint, methods, path parameters) of every route, in
    path order."""
    rules = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        methods = sorted((rule.methods or set()) - IGNORED_METHODS)
        path = _PATH_PARAM.sub(r"{\1}", rule.rule)
        rules.append((path, rule.endpoint, methods, _PATH_PARAM.findall(rule.rule)))
    return sorted(rules)


def _docs(app: QuartTrio) -> dict[str, RouteDoc]:
    docs: dict[str, RouteDoc] = {}
    for path, endpoint, methods, _ in _rules(app):
        doc = doc_of(app.view_functions.get(endpoint))
        if doc is None:
            raise LookupError(
                f"route {' '.join(methods)} {path} ({endpoint}) has no RouteDoc "
                "(api/routes/doc.py): it would be missing from the OpenAPI document"
            )
        docs[endpoint] = doc
    return docs


def _content(answer: Answer, schema_of: Any) -> dict[str, Any]:
    schemas = [schema_of(t) for t in _types_of(answer.type)]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {answer.media: {"schema": schema}}


def document(app: QuartTrio, cfg: Config) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` serving with ``cfg``."""
    docs = _docs(app)
    schema_types = _schema_types(docs)
    schemas_list, components = msgspec.json.schema_components(schema_types, ref_template=REF)
    by_type = {id(t): s for t, s in zip(schema_types, schemas_list, strict=True)}

    def schema_of(t: Any) -> Any:
        return by_type[id(t)]

    _apply_limits(components, cfg)
    problem_ref = schema_of(Problem)
    paths: dict[str, dict[str, Any]] = {}
    for path, endpoint, methods, params in _rules(app):
        doc = docs[endpoint]
        for method in methods:
            op: dict[str, Any] = {
                "operationId": f"{endpoint}.{method.lower()}" if len(methods) > 1 else endpoint,
                "summary": doc.summary,
                "tags": list(doc.tags),
            }
            parameters = [
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
                }
                for name in params
            ]
            for p in doc.params:
                spec: dict[str, Any] = {
                    "type": "integer", "minimum": p.minimum, "maximum": p.maximum
                }
                if p.default is not None:
                    spec["default"] = p.default
                parameters.append(
                    {"name": p.name, "in": "query", "required": False,
                     "description": p.description, "schema": spec}
                )
            if parameters:
                op["parameters"] = parameters
            if doc.body is not None:
                content: dict[str, Any] = {JSON: {"schema": schema_of(doc.body)}}
                for media in doc.extra_media:
                    content[media] = {"schema": {"type": "string"}}
                op["requestBody"] = {"required": not doc.body_optional, "content": content}
            responses: dict[str, Any] = {}
            for answer in doc.answers:
                responses[str(answer.status)] = {
                    "description": answer.description,
                    "content": _content(answer, schema_of),
                }
            public = ROUTE_PERMISSIONS.get(endpoint) == PUBLIC
            for status, slugs in sorted(_problems_of(doc, set(methods), public).items()):
                types = sorted(PROBLEM_PREFIX + s for s in slugs)
                entry = responses.setdefault(
                    str(status), {"description": "Problem: " + ", ".join(types), "content": {}}
                )
                if entry["description"] and not entry["description"].startswith("Problem"):
                    entry["description"] += "; or a problem: " + ", ".join(types)
                entry["content"][PROBLEM_JSON] = {"schema": problem_ref}
                entry["x-problem-types"] = types
            op["responses"] = dict(sorted(responses.items()))
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "knhkd",
            "version": version("knhkd"),
            "description": DESCRIPTION.format(
                max_body_bytes=cfg.http.max_body_bytes,
                value_max_string_length=cfg.limits.value_max_string_length,
                value_max_members=cfg.limits.value_max_members,
            ),
        },
        "paths": paths,
        "components": {"schemas": dict(sorted(components.items()))},
    }


def _apply_limits(components: dict[str, Any], cfg: Config) -> None:
    """Write the configured ``[limits]`` into the schemas they bound."""
    limits = cfg.limits
    obs = components.get("ObservationIn")
    if obs is not None:
        obs["properties"]["metadata"]["maxProperties"] = limits.metadata_max_entries
    rdf = components.get("RdfPayload")
    if rdf is not None:
        rdf["properties"]["data"]["maxLength"] = limits.rdf_max_length


def encode(doc: dict[str, Any]) -> bytes:
    """The committed form: sorted keys, indented, one trailing newline."""
    return msgspec.json.format(msgspec.json.encode(doc, order="sorted"), indent=2) + b"\n"


@bp.get("/openapi.json")
@documented(
    RouteDoc(
        summary="This document (OpenAPI 3.1) for the running configuration",
        answers=(Answer(200, "The OpenAPI document", dict[str, Any]),),
        tags=("operations",),
    )
)
async def openapi_json() -> Response:
    cfg = front().cfg
    cached = current_app.config.get(CACHE_KEY)
    if cached is None or cached[0] is not cfg:
        # Built once per configuration: a reload (SIGHUP) may change the limits.
        cached = (cfg, encode(document(current_app, cfg)))  # type: ignore[arg-type]
        current_app.config[CACHE_KEY] = cached
    return Response(cached[1], status=200, content_type=JSON)
