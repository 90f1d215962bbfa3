import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import re  # noqa: E402

# what long commands write to stderr besides results and errors (common/progress.py, not on a terminal)
PROGRESS_LINE = re.compile(r"^[\w .()-]+: \d+% \([\d,]+/[\d,]+( [\w -]+)?\), \d+:\d{2}(:\d{2})? elapsed"
                           r"(, about \d+:\d{2}(:\d{2})? left)?$|^loading model .* \.\.\.$")


def without_progress(err: str) -> list[str]:
    """The lines of stderr that are not progress or status lines (those may come first, never after)."""
    lines = err.splitlines()
    rest = [line for line in lines if not PROGRESS_LINE.match(line)]
    assert lines[len(lines) - len(rest):] == rest, err   # progress only before the other lines
    return rest
