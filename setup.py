"""Build step beyond pyproject.toml: the chat texts' catalogues (core/i18n.py).

``core/locales/<language>/LC_MESSAGES/rtxrelay.po`` are the translations; the standard library's
gettext reads them compiled (``.mo``). Every build compiles them: into the wheel, or, for an
editable install (``pip install -e .``), beside the ``.po`` files, where the installed package
finds them. Babel (a build requirement only) reads and writes the files.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

LOCALES = Path("core") / "locales"


class BuildWithCatalogues(build_py):
    def run(self) -> None:
        super().run()
        from babel.messages.mofile import write_mo
        from babel.messages.pofile import read_po

        for po in sorted(LOCALES.glob("*/LC_MESSAGES/*.po")):
            if self.editable_mode:
                target = po.with_suffix(".mo")
            else:
                relative = po.relative_to("core").with_suffix(".mo")
                target = Path(self.build_lib, "rtxrelay", "core", relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            with po.open("rb") as source:
                catalogue = read_po(source)
            with target.open("wb") as compiled:
                write_mo(compiled, catalogue)


setup(cmdclass={"build_py": BuildWithCatalogues})
