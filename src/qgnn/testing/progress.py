"""A tqdm that records how it was advanced, for tests of progress bars ("one bar, advanced epoch by epoch")."""

from __future__ import annotations

import io


def recording_tqdm() -> tuple[type, list]:
    """(a tqdm subclass, the list every instance appends itself to). Each bar draws into a string buffer (never
    the terminal, never disabled) and keeps ``steps``: the non-zero ``update(n)`` amounts in order. Patch it in
    where the code under test looks tqdm up, e.g. ``monkeypatch.setattr("qgnn.compare.run.tqdm", cls)``."""
    from tqdm.auto import tqdm

    bars: list = []

    class RecordingTqdm(tqdm):
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "disable": False, "file": io.StringIO()})
            self.steps = []
            bars.append(self)

        def update(self, n=1):
            if n:
                self.steps.append(n)
            return super().update(n)

    return RecordingTqdm, bars
