"""`portshift plugins`: what is installed and what it registers, with option schemas."""

from __future__ import annotations

import json
from typing import Any

import click

from .. import plugins as registry
from ..errors import ConfigError
from . import common_options


def describe() -> dict[str, Any]:
    out: dict[str, Any] = {"plugins": [], "sources": {}, "sinks": {}, "readers": {}, "manifest_writers": {}}
    registry.load_plugins()
    for plugin in registry.pm.get_plugins():
        name = registry.pm.get_name(plugin) or repr(plugin)
        hooks = sorted(h.name for h in registry.pm.get_hookcallers(plugin) or [])
        dist = None
        if name in registry.distributions:
            dist_name, version = registry.distributions[name]
            dist = {"name": dist_name, "version": version}
        out["plugins"].append({"name": name, "distribution": dist, "hooks": hooks})
    out["plugins"].sort(key=lambda p: p["name"])
    for key, reg in (
        ("sources", registry.sources()),
        ("sinks", registry.sinks()),
        ("readers", registry.readers()),
        ("manifest_writers", registry.manifest_writers()),
    ):
        for name in sorted(reg.classes):
            try:
                cls = reg.classes[name]
            except ConfigError as e:  # a reference that cannot be imported: shown, not fatal
                out.setdefault("unloadable", []).append({"plugin": reg.owners[name], "reason": e.message})
                continue
            out[key][name] = {
                "plugin": reg.owners[name],
                "description": getattr(cls, "description", ""),
                "options": cls.Options.model_json_schema(),
            }
    out["failed"] = [{"plugin": n, "reason": r} for n, r in registry.load_failures] + out.pop("unloadable", [])
    return out


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="everything, with each option model's JSON schema")
@common_options
def command(as_json: bool) -> None:
    """List installed plugins and the sources, sinks and manifest writers they register."""
    info = describe()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for kind, title in (
        ("sources", "Sources"),
        ("sinks", "Sinks"),
        ("readers", "Readers (portshift verify --store)"),
        ("manifest_writers", "Manifest writers"),
    ):
        click.echo(f"{title}:")
        for name, d in info[kind].items():
            opts = ", ".join(d["options"].get("properties", {}))
            click.echo(f"  {name:<12} {d['description']}  [{d['plugin']}]")
            if opts:
                click.echo(f"  {'':<12} options: {opts}")
    click.echo("Plugins:")
    for p in info["plugins"]:
        dist = f"{p['distribution']['name']} {p['distribution']['version']}" if p["distribution"] else "built-in"
        click.echo(f"  {p['name']:<44} {dist}")
    for f in info["failed"]:
        click.echo(f"  {f['plugin']:<44} FAILED TO LOAD: {f['reason']}")
