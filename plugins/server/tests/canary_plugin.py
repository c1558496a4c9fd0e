"""The source of a test-only plugin distribution whose source and sink need credentials (the
``canary`` source and the ``canarylocal`` sink); conftest.py installs it on PYTHONPATH."""

CANARY_PLUGIN = '''
"""Test-only plugins: a source and a sink that need a credential (values starting "canary-")."""
import time
from pathlib import Path

from pydantic import Field

from portshift import hookimpl
from portshift.api import Artifact, Recording, Source, Opened
from portshift.default_plugins.example_source import ExampleOptions, ExampleSource, synthetic_chunks
from portshift.default_plugins.local_sink import LocalOptions, LocalSink
from portshift.errors import AuthError
from portshift.secrets import Secret, secret_field


class CanaryOptions(ExampleOptions):
    token: Secret | None = secret_field(env="CANARY_SOURCE_TOKEN")
    token_file: Path | None = None
    delay: float = Field(default=0.0, ge=0, description="seconds to wait before each media file")


class CanarySource(ExampleSource):
    Options = CanaryOptions

    def recordings(self, window):
        if not self.options.token.reveal().startswith("canary-"):
            raise AuthError("the token was refused by the canary service", operation="list")
        yield from super().recordings(window)

    def artifacts(self, recording):
        for art in super().artifacts(recording):
            if art.name == "media" and self.options.delay:
                inner = art.open
                delay = self.options.delay

                def slow(inner=inner, delay=delay):
                    time.sleep(delay)
                    return inner()

                art = Artifact(name=art.name, open=slow, extension=art.extension, size=art.size,
                               content_type=art.content_type)
            yield art


class CanaryLocalOptions(LocalOptions):
    key: Secret | None = secret_field(env="CANARY_SINK_KEY")


class CanaryLocalSink(LocalSink):
    Options = CanaryLocalOptions

    def check(self):
        if not self.options.key.reveal().startswith("canary-"):
            raise AuthError("the key was refused", operation="check")
        super().check()


@hookimpl
def register_sources(register):
    register("canary", CanarySource)


@hookimpl
def register_sinks(register):
    register("canarylocal", CanaryLocalSink)
'''
