"""The README's settings table and the Settings class name the same settings."""
from __future__ import annotations

import re

from app.config import Settings
from tests.helpers import ROOT


def test_every_setting_is_in_the_readme_table_and_every_row_is_a_setting():
    fields = {"SVD_" + name.upper() for name in Settings.model_fields}
    rows = [line for line in (ROOT / "README.md").read_text().splitlines()
            if line.startswith("| `SVD_")]
    documented = {name for row in rows for name in re.findall(r"`(SVD_[A-Z0-9_]+)`",
                                                              row.split("|")[1])}
    assert not fields - documented, f"settings missing from README.md: {sorted(fields - documented)}"
    assert not documented - fields, f"README.md rows that are no setting: {sorted(documented - fields)}"
