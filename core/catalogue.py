"""Where a scene's item came from, and asset hrefs that remember it: the data of the rule that a
catalogue's items may point only to its own kind of place (core.reading applies it, core.planetary
signs what its catalogue signs). Below the STAC model (core.stac) and the readers, which both use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .planetary import signing_for

# the link the search adds to each item it returns: the STAC API it was found in, which decides what
# the item's assets may point to (core.reading.catalogue_of), whatever links the item carries itself
CATALOGUE_REL = "cloudprob:catalogue"


def with_catalogue(item: dict, api_url: str) -> dict:
    """``item`` with its catalogue recorded as a link of :data:`CATALOGUE_REL` (any such link it
    brought itself removed: only the search says where an item came from)."""
    links = [link for link in item.get("links") or [] if not (isinstance(link, dict) and link.get("rel") == CATALOGUE_REL)]
    return dict(item, links=links + [{"rel": CATALOGUE_REL, "href": api_url}])


@dataclass(frozen=True)
class Catalogue:
    """Where a scene's item came from: ``url`` of the STAC API or catalogue, or None for items
    made on this machine (a script, a file). Decides which hrefs may be read
    (:func:`core.reading.check_href`) and how they are signed: ``signing`` is a
    :class:`core.planetary.Signing` (Planetary Computer's SAS tokens), None, or ``"auto"`` (decided
    when read, by :func:`core.planetary.signing_for`), so that a pickled href (a Dask task) signs on
    a worker as it would here."""

    url: str | None
    signing: object = field(default="auto", compare=False)  # the same catalogue, however it signs

    def describe(self) -> str:
        return "a catalogue on this computer" if self.url is None else f"the catalogue at {self.url}"


LOCAL = Catalogue(None)


class Href(str):
    """An asset href that remembers the :class:`Catalogue` it came from (see :func:`asset_href`);
    every read function checks it against it."""

    catalogue: Catalogue

    def __new__(cls, value: str, catalogue: Catalogue):
        self = super().__new__(cls, value)
        self.catalogue = catalogue
        return self

    def __reduce__(self):  # pickled with its catalogue (tiles run as Dask tasks)
        return (Href, (str(self), self.catalogue))


def catalogue_of(scene) -> Catalogue:
    """The catalogue a :class:`~core.stac.Scene` came from: its ``catalogue`` (the API the search
    asked, when the scene carries it), else the search's own record of that API in the item
    (:data:`CATALOGUE_REL`, kept through the scenes layer), else its item's ``root``/``self``/``parent``/
    ``collection`` links (a STAC API gives every item these; any web address among them makes
    it that catalogue's item), else :data:`LOCAL` (an item made on this machine). How its assets
    are signed is decided here (:func:`core.planetary.signing_for`) and travels with the href: a
    Dask worker signs as this process would, whatever its own environment."""
    url = getattr(scene, "catalogue", None)
    if url:
        return Catalogue(str(url), signing_for(str(url)))
    links = getattr(scene, "links", None)
    if links is None:  # not a core.stac.Scene: its item's links
        links = [(link.get("rel"), link.get("href")) for link in (getattr(scene, "item", None) or {}).get("links") or []
                 if isinstance(link, dict)]
    for rel in (CATALOGUE_REL, "root", "self", "parent", "collection"):
        for link_rel, link_href in links:
            if link_rel == rel and isinstance(link_href, str):
                href = link_href.strip()
                if "://" in href and not href.lower().startswith("file:"):
                    return Catalogue(href, signing_for(href))
    return Catalogue(None, signing_for(None))
