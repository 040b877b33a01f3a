"""The documentation builds strictly, and the README stays a short entry point into it.

`mkdocs build --strict` fails on a broken link or anchor, a page missing from the nav
or a nav entry without its page (mkdocs.yml's `validation`), so a stale link fails CI.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_the_site_builds_strictly(tmp_path):
    # no --quiet: it hides the warnings --strict counts (a page left out of the nav passed)
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_the_readme_fits_on_a_few_screens():
    lines = len(README.read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines: move detail into docs/"


def test_every_relative_link_of_the_readme_resolves():
    targets = [m.group(1) for m in LINK.finditer(README.read_text())
               if not m.group(1).startswith(("http://", "https://", "mailto:"))]
    assert targets, "the README links into docs/"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert missing == []


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([a-z][\w-]*)", README.read_text()))
    assert named and named <= targets, sorted(named - targets)
