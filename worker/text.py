"""Text made safe to print on one line: file names and server answers can hold anything."""

from __future__ import annotations

# Escapes that read as what they are; everything else unprintable becomes \xNN or \uNNNN.
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` on one line, unambiguous and valid UTF-8: backslashes doubled, and whatever
    str.isprintable() refuses escaped: control characters (`\\n`, `\\x1b`, `\\u0085`), line
    separators, invisible spaces and format characters such as bidi overrides (`\\u202e`).

    Bytes of a file name that are not UTF-8 arrive as surrogate escapes U+DC80-U+DCFF and are
    shown as the byte itself (`\\xff`); a real character is shown as `\\xNN` only below
    U+0080, so the two never read alike."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, and no copy
    out = []
    for char in text:
        code = ord(char)
        if char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


# Fields read back from a file in RUN_DIR (anyone who can write there wrote it) for `status`:
# only values of the right type and range are shown.
MAX_FIELD_TEXT = 600  # a last_error is at most this long (worker/rasa/sync.py)
LATEST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: the last time gmtime() can show


def shown_text(value) -> str | None:
    """A text field as `status` prints it (one line, at most MAX_FIELD_TEXT characters and
    "..."), or None when it is not a text."""
    if not isinstance(value, str):
        return None
    shown = printable(value[:MAX_FIELD_TEXT])
    return shown + ("..." if len(value) > MAX_FIELD_TEXT else "")


def shown_time(value) -> float | None:
    """A wall-clock time `status` can print (seconds since 1970), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 <= value <= LATEST_TIME else None
