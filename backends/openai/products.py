"""Which server speaks the OpenAI dialect at an address: each keeps its own paths beside
``/v1`` (Ollama's "Ollama is running", llama.cpp's ``/props``, the NIM's ``/v1/health/ready``),
and the answer names the product for the operator and for chat users ("Ollama is not running"),
and tells how many answers it generates at once when it says so."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from rtxrelay.core.i18n import N_

from .client import OpenAiClient
from .settings import OpenAiEndpoint

Json = Any

CHATRTX_NIM_MODEL = "meta/llama-3.1-8b-instruct"  # ChatRTX 0.5's default NIM selection
BRIDGE_OWNER = "chatrtx-bridge"  # the owned_by of the ChatRTX 0.4/0.5 bridge's model
RTXRELAY_OWNER = "rtxrelay"  # the owned_by of `rtxrelay serve`'s models (another PC's)


class ProductKind(enum.Enum):
    CHATRTX_NIM = "ChatRTX's model (NIM)"
    CHATRTX_BRIDGE = "the ChatRTX bridge"
    RTXRELAY = "rtxrelay serve"  # another PC joining a pool
    OLLAMA = "Ollama"
    LLAMA_CPP = "llama.cpp"
    LLAMA_CPP_PYTHON = "llama-cpp-python"
    LM_STUDIO = "LM Studio"
    VLLM = "vLLM"
    GENERIC = "an OpenAI-compatible server"


@dataclass(frozen=True)
class Product:
    kind: ProductKind
    version: str | None = None
    parallel: int | None = None  # answers generated at once, when the server tells

    @property
    def label(self) -> str:
        return f"{self.kind.value} {self.version}" if self.version else self.kind.value


# What a chat user reads when it fails ("Ollama is not running…").
_SERVICE = {
    ProductKind.CHATRTX_NIM: "ChatRTX",
    ProductKind.CHATRTX_BRIDGE: "ChatRTX",
    ProductKind.OLLAMA: "Ollama",
    ProductKind.LM_STUDIO: "LM Studio",
}
# Ports the products use by default: a name for the error texts before the first probe.
_DEFAULT_PORTS = {8000: "ChatRTX", 8765: "ChatRTX", 11434: "Ollama", 1234: "LM Studio"}


# A catalogue id: product names are not translated, this is (core/i18n.py).
GENERIC_SERVICE = N_("the model server")


def service_name(endpoint: OpenAiEndpoint, product: Product | None) -> str:
    if product is not None:
        return _SERVICE.get(product.kind, GENERIC_SERVICE)
    if endpoint.is_loopback and endpoint.url.port in _DEFAULT_PORTS:
        return _DEFAULT_PORTS[endpoint.url.port]
    return GENERIC_SERVICE


async def identify(client: OpenAiClient, models: list[str] | None = None) -> Product:
    """Ask the paths only one product answers; best effort, never raises."""
    root = client.endpoint.root
    listing = await client.peek_json(f"{client.endpoint.base}/models")
    owners = {str(m.get("owned_by")) for m in _data(listing)}
    ids = models if models is not None else [str(m.get("id")) for m in _data(listing)]
    if BRIDGE_OWNER in owners:
        return Product(ProductKind.CHATRTX_BRIDGE, parallel=1)
    if RTXRELAY_OWNER in owners:
        return Product(ProductKind.RTXRELAY, parallel=await _rtxrelay_slots(client))
    if await client.peek_json(f"{client.endpoint.base}/health/ready") is not None and \
            CHATRTX_NIM_MODEL in ids:
        return Product(ProductKind.CHATRTX_NIM)
    if (await client.peek_text(root) or "").strip() == "Ollama is running":
        version = await client.peek_json(f"{root}/api/version")
        return Product(ProductKind.OLLAMA, _field(version, "version"))
    props = await client.peek_json(f"{root}/props")
    if isinstance(props, dict) and "total_slots" in props:
        slots = props.get("total_slots")
        return Product(ProductKind.LLAMA_CPP, _field(props, "build_info"),
                       parallel=slots if isinstance(slots, int) and slots > 0 else None)
    if await client.peek_json(f"{root}/api/v0/models") is not None:
        return Product(ProductKind.LM_STUDIO)
    if "vllm" in owners:
        return Product(ProductKind.VLLM, _field(await client.peek_json(f"{root}/version"),
                                                "version"))
    if "me" in owners:
        # llama-cpp-python's server (FastAPI, "🦙 llama.cpp Python API") answers one request
        # at a time.
        info = _field(await client.peek_json(f"{root}/openapi.json"), "info")
        if info is not None and "llama.cpp" in info:
            return Product(ProductKind.LLAMA_CPP_PYTHON, parallel=1)
    return Product(ProductKind.GENERIC)


async def _rtxrelay_slots(client: OpenAiClient) -> int:
    """Another rtxrelay answers as many at once as its backends have slots (/health lists
    them). Sending it more would only queue them in its line while a backend here may be idle,
    so when it does not say, 1 (its Chat with RTX answers one at a time)."""
    health = await client.peek_json(f"{client.endpoint.root}/health")
    backends = health.get("backends") if isinstance(health, dict) else None
    slots = [b.get("slots") for b in backends if isinstance(b, dict) and b.get("state") == "up"] \
        if isinstance(backends, list) else []
    return sum(s for s in slots if isinstance(s, int) and s > 0) or 1


def _data(listing: Json) -> list[dict[str, Json]]:
    data = listing.get("data") if isinstance(listing, dict) else None
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def _field(body: Json, name: str) -> str | None:
    value = body.get(name) if isinstance(body, dict) else None
    return str(value) if value else None
