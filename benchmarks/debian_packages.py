"""A second labelled text set, unlike the tweets: Debian package descriptions by section.

Built offline from the package lists `apt-get update` fetched (public metadata of the
Debian archive): each package's description (its one-line summary and the start of its
long text), labelled with its section, for five topical sections. Packages with the same
description (split binaries of one source) are kept once.

Run: apt-get update && .venv/bin/python benchmarks/debian_packages.py OUT.csv
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

SECTIONS = ("games", "graphics", "net", "science", "sound")
MAX_CHARS = 400


def records(text: str) -> list[dict[str, str]]:
    """The stanzas of `apt-cache dumpavail`: field -> value, continuation lines joined."""
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        last = ""
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and last:
                fields[last] += " " + line.strip().removeprefix(".")
            elif ":" in line:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
        if fields:
            out.append(fields)
    return out


def main(out: Path) -> None:
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True,
                          check=True).stdout
    seen, rows = set(), []
    for fields in records(dump):
        section = fields.get("Section", "").rpartition("/")[2]
        text = " ".join(fields.get("Description", "").split())[:MAX_CHARS]
        if section in SECTIONS and text and text not in seen:
            seen.add(text)
            rows.append((text, section))
    rows.sort()
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("text", "label"))
        writer.writerows(rows)
    counts = {s: sum(label == s for _, label in rows) for s in SECTIONS}
    print(f"wrote {out}: {len(rows)} rows, {counts}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
