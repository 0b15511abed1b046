# Helper for xtask/src/lava.rs: LAVA is Python, so its own schema and its
# own YAML reader are used from here. Run as `python3 -c <this file> MODE ...`.
#
#   validate KIND=FILE...  KIND is job or device; prints one JSON object per
#                          file: {"file", "ok", "path", "msg"}
#   results LOG            LAVA's stdout (one YAML record a line); prints the
#                          `results`, `target` and `error` records as JSON lines
#   tojson FILE            prints FILE's YAML as JSON (round-trip tests)
import json
import sys

import yaml

try:
    from yaml import CSafeLoader as Loader
except ImportError:  # pragma: no cover - libyaml is optional
    from yaml import SafeLoader as Loader


def field(path):
    # lava_common names an action's schema module in the path
    # (actions[1].boot.qemu.prompts): keep the job's own field names.
    path = list(path)
    if len(path) >= 3 and str(path[0]).startswith("actions["):
        path = path[:2] + path[3:]
    out = ""
    for part in path:
        if isinstance(part, int):
            out += "[%d]" % part
        else:
            part = str(part)
            out += ("." if out and not part.startswith("[") else "") + part
    return out


def unknown_action(data, path, msg):
    # lava_common reports an unknown boot method or deploy target as
    # path actions.boot.<method>: point at the action and field instead.
    key = {"boot": "method", "deploy": "to"}.get(path[1] if len(path) == 3 else None)
    if path[:1] != ["actions"] or msg != "unknown action type" or key is None:
        return field(path), msg
    for index, action in enumerate(data.get("actions", [])):
        value = str(action.get(path[1], {}).get(key, ""))
        if value.replace("-", "_") == path[2]:
            return "actions[%d].%s.%s" % (index, path[1], key), "unknown %s %s %r" % (
                path[1],
                key,
                value,
            )
    return field(path), msg


def validate(args):
    from voluptuous import Invalid, MultipleInvalid

    from lava_common.schemas import device as device_schema
    from lava_common.schemas import validate as job_validate

    for arg in args:
        kind, _, path = arg.partition("=")
        record = {"file": path, "kind": kind, "ok": True, "path": "", "msg": ""}
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.load(f, Loader=Loader)
            if kind == "job":
                job_validate(data, strict=True, extra_context_variables=[])
            else:
                device_schema.validate(data)
        except MultipleInvalid as exc:
            first = exc.errors[0]
            record.update(ok=False, path=field(first.path), msg=first.msg)
        except Invalid as exc:
            path, msg = unknown_action(data, list(exc.path), exc.msg)
            record.update(ok=False, path=path, msg=msg)
        except yaml.YAMLError as exc:
            record.update(ok=False, msg="not YAML: %s" % exc)
        except Exception as exc:  # a job that is not even a mapping
            record.update(ok=False, msg="%s: %s" % (type(exc).__name__, exc))
        print(json.dumps(record), flush=True)


def results(log):
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rec = yaml.load(line, Loader=Loader)
            except yaml.YAMLError:
                continue
            if isinstance(rec, dict) and rec.get("lvl") in ("results", "target", "error"):
                print(json.dumps({"lvl": rec["lvl"], "msg": rec.get("msg")}, default=str))


def tojson(path):
    with open(path, encoding="utf-8") as f:
        print(json.dumps(yaml.load(f, Loader=Loader)))


MODES = {"validate": lambda a: validate(a), "results": lambda a: results(a[0]), "tojson": lambda a: tojson(a[0])}

if __name__ == "__main__":
    MODES[sys.argv[1]](sys.argv[2:])
