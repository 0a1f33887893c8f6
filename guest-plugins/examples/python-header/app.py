"""Example wasmgate plugin in Python (componentize-py): sets a request header.

Config (the manifest's [config]): {"name": "x-python", "value": "hello from python"}.
Build: componentize-py -d ../../../wit -w gateway-plugin componentize app -o python-header.wasm
"""
import json

import wit_world
from wit_world.imports import request, types

# componentize-py may create the export class more than once: keep state at module level.
SETTINGS = {"name": "x-python", "value": "hello from python"}


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> types.PluginInfo:
        cfg = json.loads(config or "{}")
        if not isinstance(cfg, dict):
            raise wit_world.Err("config must be a JSON object")
        SETTINGS.update({k: str(v) for k, v in cfg.items() if k in ("name", "value")})
        return types.PluginInfo(
            name="python-header",
            version="0.1.0",
            phases=[types.Phase.REQUEST_HEADERS],
            capabilities=[],
        )

    def on_request_headers(self) -> types.Action:
        request.set_header(SETTINGS["name"], SETTINGS["value"])
        return types.Action_Continue()

    def on_request_body(self, chunk: bytes, end_of_stream: bool) -> types.Action:
        return types.Action_Continue()

    def on_response_headers(self) -> types.Action:
        return types.Action_Continue()

    def on_response_body(self, chunk: bytes, end_of_stream: bool) -> bytes:
        return chunk

    def on_log(self) -> None:
        pass
