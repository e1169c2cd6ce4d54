"""The Gradio releases the Chat with RTX replica can run on (stdlib only).

Each variant is one Gradio pin plus the transitive pins that keep that old release
working on Python 3.11 today (see docs/gradio-protocol.md). Every variant
gets its own venv under tests/replica/.venvs/<name>/ (built by envs.py).
"""

from __future__ import annotations

from dataclasses import dataclass

# Gradio 4.x breaks with today's releases of its dependencies:
# - huggingface_hub>=0.26 removed HfFolder, which gradio 4.x imports;
# - newer Starlette (via FastAPI) breaks 4.x templates ("unhashable type: 'dict'");
# - uvicorn>=0.30 changed the server config gradio 4.x drives;
# - pydantic>=2.10 makes /info answer 500, so the official gradio_client fails;
# - httpx>=0.28 dropped arguments gradio_client 0.x passes.
# cryptography is ours: chatrtx_app.py generates its self-signed cert with it (no openssl
# binary needed, so https mode also works on Windows).
_PINS_4X: tuple[str, ...] = (
    "huggingface_hub<0.26",
    "fastapi==0.110.3",
    "uvicorn<0.30",
    "pydantic<2.10",
    "httpx<0.28",
    "cryptography",
)

# Gradio 5 is maintained against current dependencies; only cryptography is ours.
_PINS_5X: tuple[str, ...] = ("cryptography",)


@dataclass(frozen=True)
class Variant:
    """One replica flavour: which Gradio runs it and what its wire protocol looks like."""

    name: str
    gradio: str  # exact version, pinned with ==
    extra: tuple[str, ...]
    protocol: str  # what GET /config reports as "protocol"
    api_prefix: str  # where queue/upload routes live ("" or "/gradio_api")
    diffs: bool  # generator updates after the first are edit-operation lists

    @property
    def requirements(self) -> tuple[str, ...]:
        return (f"gradio=={self.gradio}", *self.extra)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("4.16", "4.16.0", _PINS_4X, "sse_v1", "", diffs=False),
        Variant("4.20", "4.20.0", _PINS_4X, "sse_v2", "", diffs=True),
        # sse_v2.1 lived in 4.21 only: 4.22.0 already reports sse_v3.
        Variant("4.21", "4.21.0", _PINS_4X, "sse_v2.1", "", diffs=True),
        # ChatRTX 0.3 ships gradio 4.26.0.
        Variant("4.26", "4.26.0", _PINS_4X, "sse_v3", "", diffs=True),
        # The last Gradio line that still has tuple-format chatbots (6.x dropped them).
        Variant("5", "5.50.0", _PINS_5X, "sse_v3", "/gradio_api", diffs=True),
    )
}

DEFAULT_VARIANT = "4.26"
# The variants the test suite must always cover; the others are optional extras.
REQUIRED_VARIANTS: tuple[str, ...] = ("4.16", "4.26", "5")


def get_variant(name: str | Variant) -> Variant:
    """Look a variant up by name; a Variant passes through unchanged."""
    if isinstance(name, Variant):
        return name
    try:
        return VARIANTS[name]
    except KeyError:
        known = ", ".join(VARIANTS)
        raise KeyError(f"unknown replica variant {name!r} (known: {known})") from None
