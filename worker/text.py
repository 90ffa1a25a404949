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
