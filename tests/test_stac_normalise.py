"""The one normaliser, on every real STAC page in tests/data (Earth Search v0/v1, Planetary Computer)."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from cloud_probability.core.search import SearchRequest, client_side_reason
from cloud_probability.core.stac import ItemError, normalise_item, scene_from_json


def _features(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    if data.get("type") == "Feature":
        return [data]
    return data.get("features") or []


def _pages(realdata: Path) -> list[Path]:
    pages = sorted(
        p
        for folder in ("earthsearch_stac", "planetary_computer_stac")
        for p in (realdata / folder).iterdir()
        if p.suffix in (".json", ".geojson") and _features(p)
    )
    assert len(pages) >= 10, pages
    return pages


def _is_s2(feature: dict) -> bool:
    return str(feature.get("collection", "")).startswith(("sentinel-2", "sentinel-s2"))


def test_every_sentinel2_item_on_every_page_normalises(realdata):
    checked = 0
    for page in _pages(realdata):
        for feature in _features(page):
            if not _is_s2(feature):
                continue
            scene = normalise_item(feature)
            where = f"{page.name}:{scene.item_id}"
            assert scene.mgrs_tile and len(scene.mgrs_tile) == 5, where
            assert scene.epsg in range(32601, 32661) or scene.epsg in range(32701, 32761), where
            assert scene.platform in ("sentinel-2a", "sentinel-2b", "sentinel-2c"), where
            assert scene.datatake_id.startswith(("S2A_", "S2B_", "S2C_")), where
            assert scene.datetime.endswith("Z"), where
            assert scene.processing_baseline and "." in scene.processing_baseline, where
            if "l2a" in str(feature.get("collection")).lower():
                assert scene.asset_href("scl") and scene.asset_href("SCL") == scene.asset_href("scl"), where
                assert scene.asset_href("red") and scene.asset_href("B04") == scene.asset_href("red"), where
                if "scl-jp2" in feature["assets"]:  # Earth Search v1 lists JP2 twins: the COG wins
                    assert scene.asset_href("scl").endswith(".tif"), where
            assert scene_from_json(scene.item_json()) == scene
            checked += 1
    assert checked >= 80


def test_earth_search_v1(realdata):
    page = realdata / "earthsearch_stac" / "es_v1_search_cc-lte-40_2024-08-09_page1.json"
    items = {f["id"]: normalise_item(f) for f in _features(page)}
    s = items["S2B_25LBG_20240809_0_L2A"]
    assert (s.mgrs_tile, s.epsg, s.relative_orbit, s.processing_baseline) == ("25LBG", 32725, 9, "05.11")
    assert s.datatake_id == "S2B_20240809T124259"
    assert s.scene_cloud == pytest.approx(0.548947)
    assert s.asset_href("scl").endswith("/SCL.tif")
    assert s.boa_offset_applied is True
    # the collection-1 reprocessing of the same acquisition is the same datatake
    c1 = items["S2B_T25LBG_20240809T124253_L2A"]
    assert c1.collection == "sentinel-2-c1-l2a" and c1.datatake_id == s.datatake_id


def test_earth_search_v0(realdata):
    page = realdata / "earthsearch_stac" / "es_v0_search_sentinel-s2-l2a-cogs_limit1_2025-07-31.json"
    s = normalise_item(_features(page)[0])
    assert (s.mgrs_tile, s.epsg, s.relative_orbit, s.processing_baseline) == ("20EPT", 32720, 95, "05.11")
    assert s.datatake_id == "S2B_20250731T131909"
    assert s.asset_href("scl").endswith("/SCL.tif") and s.asset_href("red").endswith("/B04.tif")
    assert s.asset_href("visual")
    assert s.boa_offset_applied is True


def test_planetary_computer(realdata):
    page = realdata / "planetary_computer_stac" / "pc_search_sentinel-2-l2a_2019-01-01_33items.json"
    scenes = [normalise_item(f) for f in _features(page)]
    s = next(x for x in scenes if x.item_id.startswith("S2A_MSIL2A_20190101T000001_R116_T60VUK"))
    assert (s.mgrs_tile, s.epsg, s.relative_orbit, s.platform) == ("60VUK", 32660, 116, "sentinel-2a")
    assert s.datatake_id == "S2A_20190101T000001"
    assert s.asset_href("scl").endswith("_SCL_20m.tif")
    # one pass, many tiles: one datatake
    same_pass = [x for x in scenes if x.datetime.startswith("2019-01-01T00:00:01")]
    assert len(same_pass) > 1 and len({x.datatake_id for x in same_pass}) == 1


def test_prerelease_payload_with_old_property_names(realdata):
    page = realdata / "earthsearch_stac" / "es_v1prerelease_payload_sentinel2-l2a-j2k_2022-10.json"
    s = normalise_item(_features(page)[0])
    assert (s.mgrs_tile, s.epsg, s.processing_baseline) == ("52HGH", 32752, "04.00")
    assert s.datatake_id == "S2A_A038080"  # from the granule id's absolute orbit


# eo:cloud_cover as each catalogue published it, typed from the item pages (percent of the product):
# one item per catalogue form the normaliser reads, including a 0 that must stay 0
PUBLISHED_SCENE_CLOUD = [
    ("earthsearch_stac/es_v1_search_cc-lte-40_2024-04-19_page2.json", "S2A_37WDS_20240419_0_L2A", 89.501828),
    ("earthsearch_stac/es_v1_search_cc-lte-40_2024-04-19_page2.json", "S2A_T37WDS_20240419T090557_L2A", 89.501828),
    ("earthsearch_stac/es_v1_search_cc-lte-40_2024-08-09_page1.json", "S2B_25LBG_20240809_0_L2A", 0.548947),
    ("earthsearch_stac/es_v1_search_cc-lte-40_2024-05-17_page1.json", "S2B_34RDT_20240517_0_L2A", 0.060121),
    ("earthsearch_stac/es_v0_search_mixed_10items_2025-05.json", "S2B_55JHN_20241003_0_L2A", 22.11),
    ("earthsearch_stac/es_v0_search_mixed_10items_2025-05.json", "S2B_16PBT_20230506_0_L2A", 100.0),
    ("earthsearch_stac/es_v0_search_sentinel-s2-l2a-cogs_limit1_2025-07-31.json", "S2B_20EPT_20250731_0_L2A", 0.0),
    ("earthsearch_stac/es_v1prerelease_payload_sentinel2-l2a-j2k_2022-10.json", "S2A_52HGH_20221007_0_L2A", 78.295034),
    ("planetary_computer_stac/pc_search_sentinel-2-l2a_2019-01-01_33items.json",
     "S2A_MSIL2A_20190101T000001_R116_T58VFH_20201007T214652", 93.616579),
    ("planetary_computer_stac/pc_item_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json",
     "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531", 0.314306),
    ("planetary_computer_stac/pc_itemcollection_site1-20200606-tall-strip-africa.geojson",
     "S2B_MSIL2A_20200606T080609_R078_T35LNE_20200826T094846", 16.400486),
]


@pytest.mark.parametrize("page, item_id, published", PUBLISHED_SCENE_CLOUD, ids=[i for _, i, _ in PUBLISHED_SCENE_CLOUD])
def test_scene_cloud_is_the_published_cloud_cover_in_percent(realdata, page, item_id, published):
    """scene_cloud is the item's eo:cloud_cover in percent, as the catalogue published it, whatever
    the catalogue's other property names; without eo:cloud_cover it is unknown (None), never 0."""
    feature = next(f for f in _features(realdata / page) if f["id"] == item_id)
    scene = normalise_item(feature)
    assert scene.scene_cloud == pytest.approx(published, abs=1e-9)
    without = json.loads(json.dumps(feature))
    del without["properties"]["eo:cloud_cover"]
    assert normalise_item(without).scene_cloud is None


def test_client_side_filter_drops_what_the_server_let_through(realdata):
    """These searches asked the server for eo:cloud_cover <= 40 and still hold 42–89.5 % items."""
    request = SearchRequest("https://x", "sentinel-2-l2a", (-180, -90, 180, 90), date(2020, 1, 1), date(2026, 1, 1), 40.0)
    kept, dropped = [], []
    for page in _pages(realdata):
        if "cc-lte-40" not in page.name:
            continue
        for f in _features(page):
            if f.get("collection") != "sentinel-2-l2a":
                continue
            s = normalise_item(f)
            (kept if client_side_reason(s, request) is None else dropped).append(s.scene_cloud)
    assert kept and all(c <= 40 for c in kept)
    assert sorted(round(c, 1) for c in dropped) == [42.0, 43.9, 51.9, 57.3, 89.5]


@pytest.mark.parametrize("bad", [{}, {"type": "Feature"}, {"type": "Feature", "id": "x", "properties": {}}])
def test_unusable_items_are_refused_with_a_reason(bad):
    with pytest.raises(ItemError):
        normalise_item(bad)


def test_mgrs_zone_is_zero_padded(realdata):
    """grid:code 'MGRS-5CNL' and the product name's 'T05CNL' are the same tile."""
    page = realdata / "earthsearch_stac" / "es_v1prerelease_payload_sentinel2-l2a-j2k_2022-10.json"
    s = next(normalise_item(f) for f in _features(page) if f["id"] == "S2B_5CNL_20221009_0_L2A")
    assert s.mgrs_tile == "05CNL" and s.epsg == 32705
