from pathlib import Path

from kdlab.methods import list_methods
from kdlab.methods.catalog import markdown_table, readme_with_table

README = Path(__file__).resolve().parents[2] / "README.md"

EXPECTED = {"kd", "dkd", "dist", "lskd", "tfkd_self", "tfkd_virtual", "srd", "srd_dist", "fitnet", "at", "nst",
            "fsp", "ab", "ft", "vid", "od", "kdsvd", "reviewkd", "rkd", "sp", "pkt", "cc", "mhgd", "crd"}


def test_every_published_method_in_the_catalog_is_registered():
    assert EXPECTED <= set(list_methods())


def test_readme_method_table_is_current():
    text = README.read_text()
    assert readme_with_table(text) == text, "refresh it: python -m kdlab.methods.catalog README.md"
    for name in list_methods():
        assert f"| `{name}` |" in markdown_table()
