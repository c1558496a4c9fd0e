"""Plugin discovery and the registries of sources, sinks and manifest writers.

Plugins are found through the entry-point group ``portshift``. ``PORTSHIFT_LOAD_PLUGINS=a,b``
limits loading to those distributions (an empty value loads none). A plugin that fails to
import is a warning naming it, never a crash. Two plugins registering the same name is an error
naming both.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigError
from .settings import read_settings

log = logging.getLogger("portshift.plugins")

pm = pluggy.PluginManager("portshift")
pm.add_hookspecs(hookspecs)

#: Built-in plugins, registered like any other.
DEFAULT_PLUGINS = (
    "portshift.default_plugins.local_sink",
    "portshift.default_plugins.example_source",
    "portshift.default_plugins.sha256sum_manifest",
    "portshift.default_plugins.bagit_manifest",
    "portshift.default_plugins.key_file",
)

_loaded = False
_lock = threading.Lock()
#: plugins that failed to load: (name, one-line reason)
load_failures: list[tuple[str, str]] = []
#: plugin name -> (distribution name, version) for plugins loaded from entry points
distributions: dict[str, tuple[str, str]] = {}


def load_plugins() -> None:
    """Register the built-ins and every installed plugin (once)."""
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        for module_name in DEFAULT_PLUGINS:
            mod = importlib.import_module(module_name)
            if not pm.is_registered(mod):
                pm.register(mod, name=module_name)
        _load_entry_points()


def _load_entry_points() -> None:
    allow_env = read_settings().load_plugins
    allowed: set[str] | None = None
    if allow_env is not None:
        allowed = {p.strip() for p in allow_env.split(",") if p.strip()}
    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group="portshift"):
        dist = ep.dist.name if ep.dist else ep.name
        if allowed is not None and dist not in allowed and ep.name not in allowed:
            continue
        seen.update({dist, ep.name})
        if pm.get_plugin(ep.name) is not None:
            other = distributions.get(ep.name, ("another distribution",))[0]
            if other != dist:
                reason = f"its plugin name {ep.name!r} is already taken by {other}"
                load_failures.append((dist, reason))
                log.warning("plugin %s was not loaded: %s", dist, reason)
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
            if ep.dist is not None:
                distributions[ep.name] = (ep.dist.name, ep.dist.version)
        except Exception as e:  # noqa: BLE001 - a broken plugin must not take the CLI down
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            load_failures.append((dist, reason))
            log.warning("plugin %s failed to load and was skipped (%s)", dist, reason)
            continue
    _warn_missing(allowed, seen)


def _warn_missing(allowed: set[str] | None, seen: set[str]) -> None:
    for name in sorted((allowed or set()) - seen):
        load_failures.append((name, "not installed"))
        log.warning("PORTSHIFT_LOAD_PLUGINS names %s, which is not installed", name)


def call_event(hook_name: str, **kwargs: Any) -> None:
    """Call a lifecycle hook; an exception in one plugin is logged (naming it) and never
    changes the outcome of the export."""
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        try:
            impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
        except Exception as e:  # noqa: BLE001 - an observer must not break the export
            log.warning("plugin %s: %s hook failed (%s); ignored", plugin_distribution(impl.plugin), hook_name, type(e).__name__)


def plugin_distribution(plugin: Any) -> str:
    """The distribution (or built-in module) a registered plugin object comes from."""
    name = pm.get_name(plugin) or repr(plugin)
    if name in distributions:
        return distributions[name][0]
    return name


class _Classes(dict):  # type: ignore[type-arg]
    """name -> class; a value registered as ``"module:Class"`` is imported on first use.

    A plugin whose SDK takes a second and 40 MiB to import registers its classes by reference,
    so `portshift run` imports only the source and sink the job names.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def raw(self, name: str) -> type | str:
        return dict.__getitem__(self, name)

    def __getitem__(self, name: str) -> type:
        value = dict.__getitem__(self, name)
        if isinstance(value, str):
            value = _import_ref(value, f"{self.kind} {name!r}")
            dict.__setitem__(self, name, value)
        return value

    def get(self, name: str, default: Any = None) -> Any:  # noqa: ANN401 - dict's signature
        return self[name] if name in self else default

    def items(self) -> list[tuple[str, type]]:  # type: ignore[override]
        return [(name, self[name]) for name in list(self.keys())]

    def values(self) -> list[type]:  # type: ignore[override]
        return [self[name] for name in list(self.keys())]


def _import_ref(ref: str, what: str) -> type:
    module_name, _, attr = ref.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except Exception as e:  # noqa: BLE001 - one clear line, not an import traceback
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(
            f"the {what} could not be loaded from {ref} ({type(e).__name__}: {first})",
            hint="reinstall the plugin that provides it; `portshift plugins` shows what is installed",
        ) from None
    if not isinstance(value, type):
        raise ConfigError(f"the {what} registered as {ref} is not a class", hint="report this to the plugin's authors")
    return value


@dataclass
class Registry:
    """Named classes contributed by plugins, with the plugin that registered each."""

    kind: str
    classes: _Classes = field(init=False)
    owners: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = _Classes(self.kind)

    def get(self, name: str) -> type:
        if name not in self.classes:
            known = ", ".join(sorted(self.classes)) or "none installed"
            raise ConfigError(
                f"unknown {self.kind} type {name!r}",
                hint=f"installed {self.kind}s: {known}; `portshift plugins` lists them",
            )
        return self.classes[name]


def _collect(hook_name: str, kind: str) -> Registry:
    load_plugins()
    registry = Registry(kind)
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        owner = plugin_distribution(impl.plugin)

        def register(name: str, cls: type | str, _owner: str = owner) -> None:
            if isinstance(cls, str) and cls.count(":") != 1:
                raise ConfigError(
                    f"plugin {_owner} registers the {kind} {name!r} as {cls!r}",
                    hint='a lazy reference is "package.module:ClassName"; report this to the plugin\'s authors',
                )
            if name in registry.classes and registry.classes.raw(name) != cls:
                raise ConfigError(
                    f"two plugins register the {kind} {name!r}: {registry.owners[name]} and {_owner}",
                    hint="uninstall one of them, or limit loading with PORTSHIFT_LOAD_PLUGINS",
                )
            dict.__setitem__(registry.classes, name, cls)
            registry.owners[name] = _owner

        impl.function(**{a: v for a, v in {"register": register}.items() if a in impl.argnames})
    return registry


def sources() -> Registry:
    return _collect("register_sources", "source")


def sinks() -> Registry:
    return _collect("register_sinks", "sink")


def readers() -> Registry:
    return _collect("register_readers", "reader")


def manifest_writers() -> Registry:
    return _collect("register_manifest_writers", "manifest writer")


def key_providers() -> Registry:
    return _collect("register_key_providers", "key provider")
