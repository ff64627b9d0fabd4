"""Compiles the translations: each locale/<language>/LC_MESSAGES/*.po to
the .mo that Django reads (README, "Languages").

Pure Python (polib), so that `make run` and `make test` work on a fresh
machine without GNU gettext; updating the .po files from the code
(`manage.py makemessages`) does need it (`make system` installs it). Run by
make before the server or the tests start (`python -m chatsite.translations`),
and by the test suite's start-up, so a direct `pytest` run reads the current
words too. Untranslated and fuzzy entries are left out, as msgfmt does: they
show in English.
"""

import sys
from pathlib import Path

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"


def compile_translations(locale_dir: Path = LOCALE_DIR, *, force: bool = False) -> list[Path]:
    """Write the .mo of each .po under `locale_dir` that has none or an
    older one (every one with `force`); returns the .mo files written.
    Raises OSError or ValueError (polib's) for a file it cannot read."""
    import polib

    written = []
    for po_path in sorted(locale_dir.glob("*/LC_MESSAGES/*.po")):
        mo_path = po_path.with_suffix(".mo")
        if not force and mo_path.exists() and mo_path.stat().st_mtime >= po_path.stat().st_mtime:
            continue
        polib.pofile(str(po_path)).save_as_mofile(str(mo_path))
        written.append(mo_path)
    return written


if __name__ == "__main__":
    for path in compile_translations(force="--force" in sys.argv[1:]):
        print(f"compiled {path.relative_to(LOCALE_DIR.parent)}")
