"""Shared helpers for the deployment validators (run from .dev/venv, see scripts/pyenv.sh).

Every validator prints one `ok: ...` line per artifact that passed and one
`error: <file>: <where>: <what>` line per problem, and exits 1 if there was any
problem, so `cargo test --test deploy` can assert both outcomes.
"""

import importlib
import json
import os
import pkgutil
import sys

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCHEMAS = os.path.join(os.path.dirname(__file__), "schemas")


class Report:
    def __init__(self):
        self.errors = []

    def error(self, path, where, what):
        self.errors.append(f"error: {rel(path)}: {where}: {what}")

    def check(self, cond, path, where, what):
        if not cond:
            self.error(path, where, what)
        return cond

    def ok(self, what):
        print(f"ok: {what}")

    def finish(self):
        for e in self.errors:
            print(e, file=sys.stderr)
        if self.errors:
            print(f"{len(self.errors)} problem(s)", file=sys.stderr)
            return 1
        return 0


def rel(path):
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_schema(name):
    with open(os.path.join(SCHEMAS, name)) as f:
        return json.load(f)


def schema_errors(schema, doc):
    """Every JSON Schema (2020-12) violation in doc, as (json path, message)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        out.append((where, err.message))
    return out


_ENVOY_IMPORTED = False


def import_envoy_protos():
    """Imports every generated module of Envoy's API (xds-protos), so that the
    default descriptor pool knows every message a `typed_config` `@type` can
    name; json_format resolves Any values only against known descriptors."""
    global _ENVOY_IMPORTED
    if _ENVOY_IMPORTED:
        return
    import envoy

    for mod in pkgutil.walk_packages(envoy.__path__, "envoy."):
        if mod.name.endswith("_pb2"):
            importlib.import_module(mod.name)
    _ENVOY_IMPORTED = True


def parse_envoy(type_name, doc):
    """Parses doc (a dict from YAML) as the Envoy proto message type_name,
    rejecting unknown fields and unknown Any types. Returns the message or
    raises json_format.ParseError naming the field."""
    from google.protobuf import descriptor_pool, json_format, message_factory

    import_envoy_protos()
    desc = descriptor_pool.Default().FindMessageTypeByName(type_name)
    msg = message_factory.GetMessageClass(desc)()
    json_format.ParseDict(doc, msg, ignore_unknown_fields=False)
    return msg


def read(path):
    with open(path) as f:
        return f.read()
