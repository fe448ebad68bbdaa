"""`evsys show node:<key>`: the manifest plus a preview the rules render."""

from __future__ import annotations

import json

from .errors import StoreError, UsageError
from .project import frontend
from .store import Store, referenced_objects


def show_node(store: Store, ref: str, as_json: bool = False, rows: int | None = None, color: bool = False) -> str:
    """`node:<key>` shows a node; `node:<key>#<output>` (e.g. `#state`, `#weights`) one of its outputs."""
    ref, _, part = ref.partition("#")
    key = store.resolve_prefix(ref)
    manifest = store.read_manifest(key, label=f"node:{key[:12]}")
    if manifest is None:  # it failed its checksum (now quarantined), or a gc removed it meanwhile
        raise StoreError(f"node:{key[:12]} has no readable manifest in {store.location} (a corrupt one is quarantined); `evsys build` makes it again")
    if part:
        return show_part(store, manifest, part, as_json)
    text, rows_json = frontend().preview(store, manifest, rows if rows is not None else 3, color, text=not as_json)
    if as_json:
        out = {"manifest": manifest}
        if rows is not None:
            out["rows"] = rows_json
        return json.dumps(out, indent=1, ensure_ascii=False)
    return format_manifest(store, manifest) + ("\n\n" + text if text else "")


def format_manifest(store: Store, m: dict) -> str:
    lines = [
        f"node     {m['key']}",
        f"rule     {m['rule']} (version {m['version']})",
        f"name     {m['name']}",
        f"created  {m.get('created')}  ran in {m.get('timings', {}).get('seconds', 0):.2f}s  evsys {m.get('evsys_version')}",
        "params   " + json.dumps(m.get("params", {}), ensure_ascii=False, sort_keys=True)[:400],
    ]
    for i in m.get("inputs", []):
        lines.append(f"input    {i['label']}: {i['name']} ({i['rule']}) node:{i['key'][:12]}")
    names = sorted(referenced_objects(m.get("outputs", {})))
    size = sum(store.object_size(n) for n in names)
    lines.append(f"outputs  {', '.join(sorted(m.get('outputs', {})))} — {len(names)} objects, {size / 1e6:.2f} MB")
    if m.get("built_on"):
        built = dict(m["built_on"])
        host = built.pop("host", "?")
        lines.append(f"built on {host}" + (": " + ", ".join(f"{k} {v}" for k, v in built.items()) if built else ""))
    if m.get("stats"):
        lines.append("stats    " + json.dumps(m["stats"], sort_keys=True))
    if m.get("metrics"):
        lines.append("metrics  " + json.dumps(m["metrics"], sort_keys=True)[:400])
    return "\n".join(lines)


def show_part(store: Store, manifest: dict, part: str, as_json: bool) -> str:
    """One output of a node: its files (name, object, size)."""
    outputs = manifest.get("outputs", {})
    if part not in outputs:
        raise UsageError(f"node:{manifest['key'][:12]} ({manifest.get('name')}) has no output {part!r}; it has: {', '.join(sorted(outputs))}")
    value = outputs[part]
    files = value.get("blobs") if isinstance(value, dict) and isinstance(value.get("blobs"), dict) else {name: name for name in sorted(referenced_objects(value))}
    listing = {name: {"object": obj, "bytes": store.object_size(obj) if store.has_object(obj) else None} for name, obj in sorted(files.items())}
    if as_json:
        return json.dumps({"node": manifest["key"], "output": part, "files": listing}, indent=1)
    lines = [f"node     {manifest['key']}", f"name     {manifest.get('name')} ({manifest.get('rule')})", f"output   {part}: {len(listing)} files"]
    lines += [f"  {name}  {f['object'][:12]}  {f['bytes'] if f['bytes'] is not None else 'missing'} bytes" for name, f in listing.items()]
    return "\n".join(lines)
