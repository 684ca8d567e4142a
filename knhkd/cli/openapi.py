"""``python -m knhkd.cli.openapi``: print the OpenAPI 3.1 document of the HTTP
API under the default configuration (the committed docs/openapi.json:
``python -m knhkd.cli.openapi > docs/openapi.json``).

Must never: read a configuration file or the environment (the committed copy
is the same on every machine), or start anything.
"""

from __future__ import annotations

import sys

from knhkd.api.http import route_app
from knhkd.api.openapi import document, encode
from knhkd.config import build


def generate() -> bytes:
    cfg = build({}, env={})
    return encode(document(route_app(cfg), cfg))


def main() -> int:
    sys.stdout.buffer.write(generate())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
