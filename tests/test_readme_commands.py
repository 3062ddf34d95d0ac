"""Every `scripts/qgis_process` command the README and docs/ show runs as written against the sample
archive, exits 0 and writes the files it names — so the README cannot drift from the plugin.

The commands are taken from the README's ```sh blocks and run by bash in a scratch folder. Two
things are changed, and only these: commands that search a catalogue get ``STAC_URL=`` of the
loopback STAC API serving the sample archive appended (the README's default is Earth Search,
out of reach here), and the README's placeholder small-area layer (``lsoa.gpkg``, id
``LSOA21CD``) becomes the sample archive's (``small_areas.gpkg``, id ``code``).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The shell commands of the README and the user documentation (docs/*.md) that call
    scripts/qgis_process, continuation lines joined."""
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("scripts/qgis_process"):
                commands.append(line)
    return commands


def test_the_readme_shows_the_commands_it_promises():
    commands = readme_commands()
    algorithms = {m for c in commands for m in re.findall(r"cloudprob:\w+", c)}
    assert {"cloudprob:searchscenes", "cloudprob:screenscenes", "cloudprob:cloudmask", "cloudprob:cloudfrequency",
            "cloudprob:annualcloudprobability"} <= algorithms
    assert len(commands) >= 7


def test_every_readme_command_runs_on_the_sample_archive(sample_servers, sample_archive, tmp_path):
    zones = sample_archive / "zones" / "small_areas.gpkg"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    for command in readme_commands():
        run = command.replace("scripts/qgis_process", shlex.quote(str(ROOT / "scripts" / "qgis_process")), 1)
        run = run.replace("ZONES=lsoa.gpkg", f"ZONES={shlex.quote(str(zones))}").replace("LSOA21CD", "code")
        if " run " in run and ("cloudprob:searchscenes" in run or "cloudprob:annualcloudprobability" in run):
            run += f" STAC_URL={sample_servers.stac.url}"
        done = subprocess.run(["bash", "-c", run], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        if " list" in command:
            assert "cloudprob:annualcloudprobability" in done.stdout
        if " help " in command:
            assert "STAC_URL" in done.stdout
        # the files it names (OUTPUT=…, child:OUTPUT=…) are there and not empty
        for name in re.findall(r"[=\s](\w[\w.-]*\.(?:gpkg|tif|csv))\b", command):
            if name in ("lsoa.gpkg", "scenes.gpkg", "clear.gpkg") and f"SCENES={name}" in command:
                continue  # an input of this command, written by an earlier one
            if name == "lsoa.gpkg":
                continue
            path = tmp_path / name
            assert path.exists() and path.stat().st_size > 0, f"{command}: {name} was not written"


@pytest.mark.parametrize("target", ["demo", "test"])
def test_the_two_setup_commands_are_in_the_readme_and_the_makefile(target):
    assert f"make {target}" in (ROOT / "README.md").read_text()
    assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), flags=re.M)


def test_the_model_runs_with_the_readme_parameters_but_target_crs(sample_servers, sample_archive, tmp_path):
    """Issue 23: TARGET_CRS's default (EPSG:27700) was ignored outside the dialog: qgis_process said
    "The following mandatory parameters were not specified: TARGET_CRS". The README's model
    command without it runs, and its grid is the default's."""
    import rasterio

    [command] = [c for c in readme_commands() if "cloudprob:annualcloudprobability" in c and "VARIANT" not in c
                 and "smoothing:ADJUSTED=probability_adjusted.tif" in c]  # the headless page's full command
    assert "TARGET_CRS=EPSG:27700" in command
    run = command.replace(" TARGET_CRS=EPSG:27700", "")
    run = run.replace("scripts/qgis_process", shlex.quote(str(ROOT / "scripts" / "qgis_process")), 1)
    run = run.replace("ZONES=lsoa.gpkg", f"ZONES={shlex.quote(str(sample_archive / 'zones' / 'small_areas.gpkg'))}")
    run = run.replace("LSOA21CD", "code") + f" STAC_URL={sample_servers.stac.url}"
    done = subprocess.run(["bash", "-c", run], cwd=tmp_path, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "mandatory parameters were not specified" not in done.stderr
    with rasterio.open(tmp_path / "probability_adjusted.tif") as ds:
        assert ds.crs.to_epsg() == 27700
    assert (tmp_path / "small_areas.csv").read_text().count("\n") == 301  # the header and the 300 areas
