"""`__gt` and `__lt`, as docs/rest.md documents them: strict range filters on the orderable
fields (the ones `__gte`/`__lte` accept), on SQLite and PostgreSQL, and in the OpenAPI document."""

from __future__ import annotations

import pytest


def _skus(page) -> list[str]:
    return sorted(p["sku"] for p in page["items"])


def test_strict_range_filters(api, world):
    for price in ("5.00", "7.50", "12.00"):
        api.ok("POST", "/product", {"sku": f"SKU{price}", "name": "x", "category": "agro", "unit_price": price})
    assert _skus(api.ok("GET", "/product?unit_price__gt=5")) == ["SKU12.00", "SKU7.50"]
    assert _skus(api.ok("GET", "/product?unit_price__gte=5")) == ["SKU12.00", "SKU5.00", "SKU7.50"]
    assert _skus(api.ok("GET", "/product?unit_price__lt=2.50")) == ["OLD"]
    assert _skus(api.ok("GET", "/product?unit_price__gt=2.50&unit_price__lt=12")) == ["SKU5.00", "SKU7.50"]
    assert _skus(api.ok("GET", "/product?sku__gt=SKU5&sku__lt=SKU7.50")) == ["SKU5.00"]    # strings: by value
    page = api.ok("GET", "/product?unit_price__gt=1&sort=-unit_price&total=true")
    assert [p["unit_price"] for p in page["items"]] == ["12.00", "7.50", "5.00", "2.50"] and page["total"] == 4
    # datetimes and system columns order too
    first = api.ok("GET", "/product?sort=created_at&limit=1")["items"][0]
    later = api.ok("GET", f"/product?created_at__gt={first['created_at']}&total=true")
    assert later["total"] == 4 and first["id"] not in {p["id"] for p in later["items"]}
    assert api.ok("GET", "/product?version__lt=1&total=true")["total"] == 0


@pytest.mark.parametrize("query", ["unit_price__gt=cheap", "active__gt=true", "description__lt=x",
                                   "unit_price__gt=1&unit_price__gt=2"])
def test_range_filters_refuse_what_has_no_order(api, world, query):
    r = api.get(f"/product?{query}")
    assert r.status_code == 400 and r.get_json()["type"].endswith("/bad-query"), r.get_data(as_text=True)


def test_the_openapi_document_lists_them(api):
    doc = api.ok("GET", "/openapi.json")
    names = {p["name"] for p in doc["paths"]["/api/v1/product"]["get"]["parameters"] if "name" in p}
    assert {"unit_price__gt", "unit_price__lt", "unit_price__gte", "unit_price__lte"} <= names
    assert "active__gt" not in names
