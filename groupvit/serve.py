"""`groupvit app` before the app is imported: gradio is there, and weights are fetched while the network is usable.

Importing `groupvit.app` imports gradio and switches huggingface_hub offline (otherwise gradio's lookups stall on a
machine without internet), so both happen here first, in a module that imports the app only when it is time.
"""

from __future__ import annotations

import importlib.util


def serve_app(
    checkpoint: str | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    random_init: str | None = None,
    source: str | None = None,
    short_side: int | None = None,
    max_pixels: int | None = None,
    max_classes: int | None = None,
    max_upload_mb: int | None = None,
) -> None:
    """Serve the app's page until interrupted (`groupvit.app.run_app`), with uploads limited to `max_pixels`
    pixels and `max_upload_mb` MiB and requests to `max_classes` class names (None: `groupvit.app.Limits`'
    defaults, 40,000,000 pixels, 32 MiB, 30 names)."""
    if importlib.util.find_spec("gradio") is None:
        raise ValueError("the app needs gradio: pip install -c constraints.txt -e '.[demo]'")
    if checkpoint:  # fetched first: importing the app switches huggingface_hub offline (for gradio)
        from .pretrained import resolve

        resolve(checkpoint, source)
    from .app import Limits, run_app

    given = {"max_pixels": max_pixels, "max_classes": max_classes,
             "max_file_size": None if max_upload_mb is None else max_upload_mb << 20}  # fmt: skip
    limits = Limits(**{key: value for key, value in given.items() if value is not None})
    run_app(checkpoint, host=host, port=port, device=device, limits=limits, random_init=random_init, source=source,
            short_side=short_side)  # fmt: skip
