"""The Gradio releases the Chat with RTX replica can run on (stdlib only).

Each variant is one Gradio pin plus the transitive pins that keep that old release
working on Python 3.11-3.13 today (see docs/gradio-protocol.md). Every variant gets its own
venv per Python minor version under tests/replica/.venvs/<name>-py3.X/ (built by envs.py).
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
    # Python 3.13 removed audioop, which pydub (imported by every gradio 4.x) needs.
    # Gradio 5 declares this itself.
    'audioop-lts; python_version >= "3.13"',
)

# On Python 3.13+, what gradio 4.x declares has no wheels: numpy~=1.0 (1.26.4 is the last
# 1.x, wheels up to cp312; from source it takes ~7 min on 2 cores) and markupsafe~=2.0
# (2.1.5, wheels up to cp312). These replace gradio's own requirements (uv --overrides),
# with releases that ship cp313 wheels; gradio 4.x runs fine on both (the suite passes).
# Everything else gradio 4.x pulls in (pillow 10.4, pydantic-core 2.23, pandas 2.3, orjson,
# websockets 11 ...) already has 3.13 wheels.
_OVERRIDES_4X_PY313: tuple[str, ...] = (
    "numpy>=2.1,<3",
    "markupsafe>=3,<4",
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
    # Replace what gradio declares, on Python 3.13+ only (needs uv; see envs.py).
    overrides_py313: tuple[str, ...] = ()

    @property
    def requirements(self) -> tuple[str, ...]:
        return (f"gradio=={self.gradio}", *self.extra)

    def overrides(self, python: tuple[int, int]) -> tuple[str, ...]:
        """The dependency overrides for a venv built on Python ``python`` (major, minor)."""
        return self.overrides_py313 if python >= (3, 13) else ()


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("4.16", "4.16.0", _PINS_4X, "sse_v1", "", diffs=False,
                overrides_py313=_OVERRIDES_4X_PY313),
        Variant("4.20", "4.20.0", _PINS_4X, "sse_v2", "", diffs=True,
                overrides_py313=_OVERRIDES_4X_PY313),
        # sse_v2.1 lived in 4.21 only: 4.22.0 already reports sse_v3.
        Variant("4.21", "4.21.0", _PINS_4X, "sse_v2.1", "", diffs=True,
                overrides_py313=_OVERRIDES_4X_PY313),
        # ChatRTX 0.3 ships gradio 4.26.0.
        Variant("4.26", "4.26.0", _PINS_4X, "sse_v3", "", diffs=True,
                overrides_py313=_OVERRIDES_4X_PY313),
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
