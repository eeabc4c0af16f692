"""Deterministic generator for the bundled MMC4 sample.

    python -m mmc4_assets.sample.build [--out DIR]

rewrites ``DIR`` (default: ``mmc4_assets/sample/data``) with:

* ``c4/c4-sample.00000-of-00001.json.gz``  C4-format shard, including broken lines
* ``pages/sample-pages.warc.gz``           WARC with the HTML pages of most documents
* ``pages/sample-pages.wat.gz``            Common Crawl WAT (JSON metadata) for a few others
* ``images/...``                           files served for ``https://img.mmc4-sample.test/...``
* ``expected.json``                        ground truth for every shard line

Everything comes from the case tables below (``IMAGES``, the ``Page``/``Doc``
definitions and ``LINES``). ``expected.json`` is derived from those tables, never written
by hand, and the builder cross-checks the near-duplicate design against real
perceptual hashes of the rendered images.

Determinism: images use seeds derived from their path, WARC record ids and dates are
fixed, and every gzip member has mtime 0. Rebuilding with the same library versions
gives identical bytes; across Pillow/zlib versions only the compressed bytes may differ.
"""

from __future__ import annotations

import argparse
import gzip
import html
import io
import json
import shutil
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import imagehash
import numpy as np
from PIL import Image, ImageDraw
from warcio.warcwriter import WARCWriter

from mmc4_assets.sample.server import (
    EXPECTED_RELPATH,
    IMAGE_URL_PREFIX,
    IMAGES_RELPATH,
    SAMPLE_DIR,
    SHARD_RELPATH,
    WARC_RELPATH,
    WAT_RELPATH,
)

IMG = IMAGE_URL_PREFIX

# MMC4 filter settings the ground truth is computed with.
ALLOWED_EXTENSIONS = (".png", ".jpg", ".jpeg")
URL_KEYWORDS = ("logo", "button", "icon", "plugin", "widget")
MIN_SIDE = 150
MAX_ASPECT = 2.0
MAX_SIDE = 800
PHASH_THRESHOLD = 5
# Distinct images in one document must be far apart, so a pipeline using a slightly
# different hash implementation or resizing first still agrees with the ground truth.
PHASH_MIN_DISTINCT = 12

WARC_FILENAME = "sample-pages.warc.gz"
WAT_FILENAME = "sample-pages.wat.gz"
_ID_NAMESPACE = uuid.UUID("6b1f3c1e-8a4e-4a57-9a53-4d6d3c2e0a01")


# ---------------------------------------------------------------------------
# Image case table
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    """One file under images/ (or a deliberately missing one).

    kind: jpeg | png | gif | webp     a rendered picture of ``size``
          copy                        identical bytes to ``source``
          requality                   ``source`` re-encoded at ``quality``
          resized                     ``source`` resized to ``size``
          html                        an HTML page behind an image-looking URL
          truncated                   first half of a valid JPEG of ``size``
          missing                     no file at all (the server answers 404)
    """

    kind: str
    size: tuple[int, int] = (0, 0)
    source: str | None = None
    quality: int = 88
    seed: int | None = None  # override when the path-derived seed looks too similar


def jpeg(w: int, h: int, **kw: Any) -> ImageSpec:
    return ImageSpec("jpeg", (w, h), **kw)


def png(w: int, h: int, **kw: Any) -> ImageSpec:
    return ImageSpec("png", (w, h), **kw)


MISSING = ImageSpec("missing")
HTML_PAGE = ImageSpec("html")

# Path below images/ == URL path below IMAGE_URL_PREFIX.
IMAGES: dict[str, ImageSpec] = {
    "garden/tomato-01.jpg": jpeg(640, 480),
    "garden/tomato-02.png": png(480, 480),
    "garden/seedling-tray.gif": ImageSpec("gif", (320, 240)),
    "herbs/basil-pots.jpg": jpeg(600, 400),
    "herbs/rosemary.png": png(400, 400),
    "bread/crumb-shot.jpg": jpeg(600, 450, quality=92),
    "bread/crumb-shot-compressed.jpg": ImageSpec("requality", source="bread/crumb-shot.jpg", quality=30),
    "bread/starter-jar.png": png(400, 520),
    "bread/share-button.png": png(200, 200),
    "cookies/brown-butter.jpg": jpeg(600, 450),
    "cookies/cookie-stack.png": png(400, 400),
    "bikes/drivetrain-large.jpg": jpeg(1600, 1200, quality=80),
    "bikes/chain-tool.jpeg": jpeg(480, 360),
    "bikes/tiny-thumb.jpg": jpeg(100, 90),
    "touring/loaded-bike.jpg": jpeg(640, 480),
    "touring/toolkit.png": png(450, 450),
    "commute/winter-lights.jpg": jpeg(600, 400),
    "commute/studded-tire.png": png(400, 400),
    "travel/lisbon/tram-28.jpg": jpeg(640, 426),
    "travel/lisbon/azulejo.png": png(500, 500),
    "travel/lisbon/miradouro-view.jpg": MISSING,
    "iceland/waterfall.jpg": jpeg(500, 700),
    "iceland/lava-field.jpg": jpeg(700, 420),
    "coffee/kettle-pour.jpg": jpeg(520, 640),
    "coffee/bloom.png": png(450, 450),
    "tea/green-tea.jpg": jpeg(500, 500),
    "tea/tea-tin.png": png(360, 480),
    "hiking/ridge-panorama.jpg": jpeg(900, 300),
    "hiking/summit-cairn.jpg": jpeg(500, 650),
    "hiking/boots.png": png(420, 420),
    "kitchen/fresh-pasta.jpg": jpeg(600, 400),
    "kitchen/sauce-simmer.webp": ImageSpec("webp", (400, 300)),
    "kitchen/basil.png": png(380, 380),
    "lemon/lemon-bars.jpg": jpeg(600, 450),
    "lemon/zest.png": png(400, 400),
    "soup/squash-soup.jpg": jpeg(600, 450),
    "soup/roasted-squash.png": png(500, 375),
    "birds/warbler-branch.jpg": jpeg(640, 480),
    "birds/feeder-cam.jpg": HTML_PAGE,
    "birds/marsh-sunrise.png": png(600, 340),
    "icons/binoculars-icon.png": png(200, 200),
    "wood/walnut-box.jpg": jpeg(600, 450),
    "wood/dovetail-closeup.jpg": ImageSpec("truncated", (500, 375)),
    "wood/finish-coats.png": png(400, 300),
    "widgets/share-widget.png": png(240, 240),
    "astro/orion-wide.jpg": jpeg(600, 600),
    "mirror/orion-wide-copy.jpg": ImageSpec("copy", source="astro/orion-wide.jpg"),
    "astro/telescope-setup.png": png(450, 600),
    "knit/scarf-flat.jpg": jpeg(560, 420),
    "knit/scarf-flat-resized.jpg": ImageSpec("resized", (554, 416), source="knit/scarf-flat.jpg"),
    "knit/yarn-basket.png": png(420, 420),
    "shared/golden-hour.jpg": jpeg(640, 427),
    "sailing/knots.png": png(500, 375),
    "paddling/kayak-bow.jpg": jpeg(640, 400),
    "running/finish-line.jpg": MISSING,
    "running/medal.jpg": MISSING,
    "running/route-map.jpg": HTML_PAGE,
    "aquarium/nano-front.jpg": jpeg(600, 400),
    "aquarium/dragon-stone.png": png(400, 400),
    "aquarium/ember-tetras.jpg": jpeg(640, 360),
    "aquarium/cherry-shrimp.jpeg": jpeg(500, 500),
    "aquarium/moss-detail.png": png(360, 480),
    "pottery/celadon-bowl.jpg": jpeg(500, 500),
    "camping/tent-pitch.JPG": jpeg(640, 480),
    "camping/stakes.png": png(400, 300),
    "bees/frame-inspection.gif": ImageSpec("gif", (300, 300)),
    "bees/comb.webp": ImageSpec("webp", (400, 400)),
    "climbing/slab-route.jpg": jpeg(480, 640),
    "climbing/chalk-bag.png": png(400, 400),
    "climbing/belay-anim.gif": ImageSpec("gif", (300, 300)),
    "ferment/kimchi-jar.jpg": jpeg(450, 600),
    "ferment/cabbage-salt.png": png(500, 400),
    "autumn/leaves-01.jpg": jpeg(600, 450),
    "gallery/leaves-02.png": png(450, 450),
    "gallery/beech-stream.jpg": jpeg(600, 400),
    "museum/ship-model.jpg": jpeg(600, 450),
    "museum/sextant.png": png(400, 500),
    "railway/cliff-line.jpg": jpeg(700, 400),
    "railway/signal-box.png": png(400, 400),
    "photo/rim-light.jpg": jpeg(500, 650),
    "photo/reflector.png": png(480, 360),
    "forage/chanterelles.jpg": jpeg(600, 450),
    "forage/ridges.png": png(420, 420),
    "plants/monstera.jpg": jpeg(480, 640),
    "plants/moss-pole.png": png(400, 400),
}

# Files that exist but carry no picture (``kind == "html"``).
HTML_IMAGE_BODIES = {
    "birds/feeder-cam.jpg": "Feeder cam offline",
    "running/route-map.jpg": "Page not found",
}


# ---------------------------------------------------------------------------
# Page and document case table
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Img:
    """An <img> tag (WARC pages) or an ``IMG@/src`` link (WAT pages), as written in the page."""

    src: str | None  # None: <img> without src (lazy placeholder), never a candidate
    alt: str = ""
    srcset: str | None = None
    data_src: str | None = None


@dataclass(frozen=True)
class A:
    """A hyperlink; readers must ignore these even when they point at a .jpg."""

    href: str
    text: str


@dataclass(frozen=True)
class Page:
    url: str
    archive: str  # "warc" or "wat"
    title: str
    items: tuple[Img | A, ...]
    base_href: str | None = None
    with_request: bool = False  # also write the crawler's request record (to be ignored)


@dataclass(frozen=True)
class Doc:
    slug: str
    timestamp: str
    text: str
    page: Page | None = None
    url: str | None = None  # only for documents without a page record

    @property
    def doc_url(self) -> str:
        return self.page.url if self.page is not None else str(self.url)


def _img(path: str, alt: str = "", **kw: Any) -> Img:
    return Img(IMG + path, alt=alt, **kw)


TOMATOES = Page(
    "https://www.garden-notes.test/blog/tomatoes",
    "warc",
    "Growing tomatoes from seed | Garden Notes",
    (
        Img("/static/garden-notes-logo.png", alt="Garden Notes"),
        _img("garden/tomato-01.jpg", "Ripe tomatoes on the vine", srcset="tomato-01-2x.jpg 2x"),
        _img("garden/seedling-tray.gif", "Seedling tray"),
        _img("garden/tomato-02.png", "Staked tomato plants"),
    ),
    with_request=True,
)
HERBS = Page(
    "https://www.garden-notes.test/blog/kitchen-herbs",
    "warc",
    "Kitchen herbs in pots | Garden Notes",
    (_img("herbs/basil-pots.jpg", "Basil in terracotta pots"), _img("herbs/rosemary.png", "Rosemary")),
)
SOURDOUGH = Page(
    "https://breadcraft.test/recipes/country-sourdough",
    "warc",
    "Country sourdough - Breadcraft",
    (
        _img("bread/crumb-shot.jpg", "Open crumb"),
        _img("bread/starter-jar.png", "Starter jar", data_src=IMG + "bread/starter-jar-lazy.png"),
        _img("bread/crumb-shot-compressed.jpg", "Open crumb (again)"),
        _img("bread/share-button.png", "Share"),
    ),
)
COOKIES = Page(
    "https://breadcraft.test/recipes/brown-butter-cookies",
    "warc",
    "Brown butter cookies - Breadcraft",
    (_img("cookies/brown-butter.jpg", "Browning butter"), _img("cookies/cookie-stack.png", "Cookie stack")),
)
CHAIN = Page(
    "https://www.spoke-and-chain.test/guides/chain-cleaning",
    "warc",
    "How to clean a bike chain | Spoke & Chain",
    (
        _img("bikes/drivetrain-large.jpg", "Drivetrain", srcset=IMG + "bikes/drivetrain-640.jpg 640w"),
        _img("bikes/tiny-thumb.jpg", "Thumbnail"),
        _img("bikes/chain-tool.jpeg", "Chain tool", data_src=IMG + "bikes/chain-tool-hd.jpeg"),
    ),
    with_request=True,
)
TOURING = Page(
    "https://www.spoke-and-chain.test/touring/packing-list",
    "warc",
    "Touring packing list | Spoke & Chain",
    (_img("touring/loaded-bike.jpg", "Loaded touring bike"), _img("touring/toolkit.png", "Toolkit")),
)
COMMUTE = Page(
    "https://www.city-cycling.test/commute/winter-riding",
    "warc",
    "Winter commuting by bike",
    (_img("commute/winter-lights.jpg", "Bike lights"), _img("commute/studded-tire.png", "Studded tire")),
)
# Relative srcs resolve against <base href>, not against the page URL.
LISBON = Page(
    "https://wanderlust-diaries.test/europe/lisbon-three-days",
    "warc",
    "Three days in Lisbon",
    (
        Img("tram-28.jpg", alt="Tram 28 on a hill"),
        Img(None, alt="Loading..."),
        Img("/travel/lisbon/azulejo.png", alt="Azulejo tiles"),
        Img("miradouro-view.jpg", alt="View from a miradouro"),
    ),
    base_href=IMG + "travel/lisbon/",
)
ICELAND = Page(
    "https://wanderlust-diaries.test/europe/ring-road",
    "warc",
    "Driving the Ring Road",
    (_img("iceland/waterfall.jpg", "Waterfall"), _img("iceland/lava-field.jpg", "Lava field")),
)
COFFEE = Page(
    "https://brewlab.test/methods/pour-over",
    "wat",
    "Pour-over basics - Brewlab",
    (
        A("https://brewlab.test/", "Home"),
        A("https://brewlab.test/methods/", "Methods"),
        # Thumbnail linking to a full-size file: the A@/href must not become a candidate.
        A(IMG + "coffee/kettle-pour-full.jpg", ""),
        _img("coffee/kettle-pour.jpg", "Pouring from a gooseneck kettle"),
        Img("//img.mmc4-sample.test/coffee/bloom.png", alt="Coffee bloom"),
        A("https://brewlab.test/methods/aeropress", "AeroPress guide"),
    ),
)
TEA = Page(
    "https://leaf-and-kettle.test/guides/green-tea",
    "warc",
    "Brewing green tea",
    (_img("tea/green-tea.jpg", "A cup of green tea"), _img("tea/tea-tin.png", "Tea tin")),
)
RIDGE = Page(
    "https://trailhead-journal.test/2019/ridge-walk",
    "warc",
    "Ridge walk to Pike Summit",
    (
        _img("hiking/ridge-panorama.jpg", "Ridge panorama"),
        _img("hiking/summit-cairn.jpg", "Summit cairn"),
        _img("hiking/boots.png", "Muddy boots"),
    ),
)
PASTA = Page(
    "https://kitchen-table.test/recipes/fresh-egg-pasta",
    "warc",
    "Fresh egg pasta | Kitchen Table",
    (
        _img("kitchen/fresh-pasta.jpg", "Fresh pasta"),
        _img("kitchen/sauce-simmer.webp", "Sauce"),
        _img("kitchen/basil.png", "Basil"),
    ),
)
LEMON_BARS = Page(
    "https://kitchen-table.test/recipes/lemon-bars",
    "warc",
    "Lemon bars | Kitchen Table",
    (_img("lemon/lemon-bars.jpg", "Lemon bars"), _img("lemon/zest.png", "Lemon zest")),
)
SOUP = Page(
    "https://soup-season.test/recipes/roasted-squash-soup",
    "warc",
    "Roasted squash soup",
    (_img("soup/squash-soup.jpg", "Squash soup"), _img("soup/roasted-squash.png", "Roasted squash")),
)
BIRDS = Page(
    "https://www.birdsong-field.test/notes/spring-warblers",
    "warc",
    "Spring warblers - field notes",
    (
        _img("birds/warbler-branch.jpg", "Warbler on a branch"),
        _img("birds/feeder-cam.jpg", "Feeder cam"),
        _img("icons/binoculars-icon.png", ""),
        _img("birds/marsh-sunrise.png", "Marsh at sunrise"),
    ),
)
WALNUT_BOX = Page(
    "https://workshop-shavings.test/projects/walnut-box",
    "wat",
    "A walnut box with hand-cut dovetails",
    (
        A("https://workshop-shavings.test/", "Workshop Shavings"),
        _img("wood/walnut-box.jpg", "Walnut box"),
        _img("wood/dovetail-closeup.jpg", "Dovetail close-up"),
        _img("widgets/share-widget.png", "Share"),
        Img("//img.mmc4-sample.test/wood/finish-coats.png", alt="Oil finish"),
        A("https://workshop-shavings.test/projects/", "More projects"),
    ),
)
ORION = Page(
    "https://stargazer-weekly.test/observing/orion-nebula",
    "warc",
    "Observing the Orion Nebula",
    (
        _img("astro/orion-wide.jpg", "M42 wide field"),
        Img("/wp-content/plugins/lightbox/spinner.png", alt=""),
        _img("mirror/orion-wide-copy.jpg", "M42 (mirror)"),
        _img("astro/telescope-setup.png", "Telescope setup"),
    ),
)
SCARF = Page(
    "https://yarn-and-needles.test/patterns/autumn-scarf",
    "warc",
    "Autumn scarf pattern",
    (
        _img("knit/scarf-flat.jpg", "Scarf laid flat"),
        _img("knit/yarn-basket.png", "Yarn basket"),
        _img("knit/scarf-flat-resized.jpg", "Scarf laid flat (resized)"),
    ),
)
SAILING = Page(
    "https://harbor-sailing.test/log/first-solo-sail",
    "warc",
    "First solo sail",
    (_img("shared/golden-hour.jpg", "Golden hour on the water"), _img("sailing/knots.png", "Knots")),
)
KAYAK = Page(
    "https://paddle-stories.test/trips/river-bends",
    "warc",
    "River bends by kayak",
    (_img("paddling/kayak-bow.jpg", "Kayak bow"), _img("shared/golden-hour.jpg", "Evening light")),
)
HALF_MARATHON = Page(
    "https://run-club-notes.test/races/city-half-marathon",
    "warc",
    "City half marathon report",
    (
        _img("running/finish-line.jpg", "Finish line"),
        _img("running/route-map.jpg", "Route map"),
        _img("running/medal.jpg", "Medal"),
    ),
)
NANO_TANK = Page(
    "https://aquarium-corner.test/tanks/planted-nano",
    "warc",
    "Planted nano tank",
    (
        _img("aquarium/nano-front.jpg", "Front view"),
        _img("aquarium/dragon-stone.png", "Dragon stone"),
        _img("aquarium/ember-tetras.jpg", "Ember tetras"),
        _img("aquarium/cherry-shrimp.jpeg", "Cherry shrimp"),
        _img("aquarium/moss-detail.png", "Moss detail"),
    ),
)
BOWL = Page(
    "https://clay-and-kiln.test/gallery/celadon-bowl",
    "warc",
    "Celadon bowl",
    (_img("pottery/celadon-bowl.jpg", "Celadon bowl"),),
)
TENT = Page(
    "https://campfire-guides.test/gear/tent-pitching",
    "warc",
    "How to pitch a tent",
    (
        _img("camping/tent-pitch.JPG?w=600&fit=crop", "Pitched tent"),
        _img("camping/stakes.png?v=3", "Tent stakes"),
    ),
)
SQUEAKY_DOOR = Page(
    "https://fixit-home.test/howto/squeaky-door",
    "warc",
    "Fix a squeaky door",
    (Img(None, alt="Hinge diagram"),),
)
BEES = Page(
    "https://hive-keepers.test/journal/spring-inspection",
    "warc",
    "Spring hive inspection",
    (
        Img("/theme/img/hive-keepers-logo.png", alt="Hive Keepers"),
        _img("bees/frame-inspection.gif", "Frame inspection"),
        _img("bees/comb.webp", "Comb"),
    ),
)
SLABS = Page(
    "https://crag-reports.test/areas/granite-slabs",
    "wat",
    "Granite slabs - Crag Reports",
    (
        A("https://crag-reports.test/areas/", "All areas"),
        _img("climbing/slab-route.jpg", "Slab route"),
        _img("climbing/belay-anim.gif", "Belay animation"),
        A("https://crag-reports.test/ethics", "Access and ethics"),
        _img("climbing/chalk-bag.png", "Chalk bag"),
    ),
)
KIMCHI = Page(
    "https://ferment-lab.test/recipes/kimchi",
    "wat",
    "Easy kimchi - Ferment Lab",
    (
        _img("ferment/kimchi-jar.jpg", "Kimchi jar"),
        A("https://ferment-lab.test/recipes/", "Recipes"),
        Img("//img.mmc4-sample.test/ferment/cabbage-salt.png", alt="Salted cabbage"),
    ),
)
# A gallery page on the image host itself: plain relative srcs resolve against the page URL.
AUTUMN_GALLERY = Page(
    "https://img.mmc4-sample.test/gallery/autumn-walk.html",
    "warc",
    "Autumn walk - gallery",
    (
        Img("../autumn/leaves-01.jpg", alt="Beech leaves"),
        Img("leaves-02.png", alt="Leaf litter"),
        Img("beech-stream.jpg", alt="Stream"),
        # Same URL again (absolute this time): de-duplicated, the first occurrence wins.
        _img("gallery/leaves-02.png", "Leaf litter (again)"),
    ),
)
MUSEUM = Page(
    "https://museum-walks.test/reviews/maritime-museum",
    "wat",
    "Maritime museum review",
    (
        Img("/assets/spinner.gif", alt=""),
        _img("museum/ship-model.jpg", "Ship model"),
        A("https://museum-walks.test/reviews/", "All reviews"),
        Img("//img.mmc4-sample.test/museum/sextant.png", alt="Sextant"),
    ),
)
RAILWAY = Page(
    "https://railway-letters.test/lines/coastal-branch",
    "wat",
    "The coastal branch line",
    (
        _img("railway/cliff-line.jpg", "Line along the cliffs"),
        A("https://railway-letters.test/timetable", "Timetable"),
        _img("railway/signal-box.png", "Signal box"),
        _img("railway/cliff-line.jpg", "Line along the cliffs"),
    ),
    with_request=True,
)
PORTRAITS = Page(
    "https://shutter-school.test/lessons/golden-hour-portraits",
    "warc",
    "Golden hour portraits",
    (
        _img("photo/rim-light.jpg", "Rim light", srcset="rim-light-1x.jpg 1x, rim-light-2x.jpg 2x"),
        _img("photo/reflector.png", "Reflector"),
    ),
)
CHANTERELLES = Page(
    "https://forest-forager.test/field-notes/chanterelles",
    "warc",
    "Chanterelles",
    (_img("forage/chanterelles.jpg", "Chanterelles in moss"), _img("forage/ridges.png", "False gills")),
)
MONSTERA = Page(
    "https://windowsill-jungle.test/care/monstera",
    "warc",
    "Monstera care",
    (_img("plants/monstera.jpg", "Monstera"), _img("plants/moss-pole.png", "Moss pole")),
)


def _doc(slug: str, timestamp: str, page: Page | None, *paragraphs: str, url: str | None = None) -> Doc:
    # C4 separates paragraphs with single newlines.
    return Doc(slug, timestamp, "\n".join(paragraphs), page=page, url=url)


DOCS: dict[str, Doc] = {
    d.slug: d
    for d in [
        _doc(
            "tomatoes",
            "2019-04-25T12:57:54Z",
            TOMATOES,
            "Tomatoes are the crop that gets most of us into vegetable gardening in the first place. "
            "Start seeds indoors about six to eight weeks before your last frost date, and keep them "
            "under bright light so they don't get leggy.",
            "When the seedlings have two sets of true leaves, pot them up into deeper containers. "
            "Dr. Ellen Marsh, who runs the county extension office, recommends burying the stem up to "
            "the first leaves at transplant time. The buried stem grows extra roots, which helps the "
            "plant survive dry spells in July.",
            "Water deeply once or twice a week rather than a little every day. Mulch with straw or "
            "shredded leaves, e.g. whatever you raked up last autumn, to keep soil splashes off the "
            "lower leaves.",
            "Is it worth pinching off suckers? For indeterminate varieties it usually is, but leave "
            "them alone on bush types!",
        ),
        _doc(
            "sourdough",
            "2019-04-19T08:12:03Z",
            SOURDOUGH,
            "A good country loaf needs only flour, water, salt and a lively starter. Feed your starter "
            "4 to 6 hrs. before mixing so it is at its peak.",
            "Mix 450 g of bread flour with 50 g of whole wheat and 375 g of water, then let it rest "
            "for 30 minutes. Add 100 g of starter and 10 g of salt, squeezing the dough between your "
            "fingers until everything is incorporated. Over the next three hours, do a set of stretch "
            "and folds every half hour.",
            "Shape the loaf, place it in a floured banneton, and refrigerate it overnight. Bake in a "
            "preheated Dutch oven at 250 °C for 20 minutes with the lid on, then 25 minutes uncovered.",
            "Wait at least an hour before cutting, no matter how good it smells!",
        ),
        _doc(
            "chain-cleaning",
            "2019-04-21T17:40:11Z",
            CHAIN,
            "A clean chain shifts better, runs quieter and lasts a lot longer. Start by shifting into "
            "the smallest cog so the chain sits with the least tension.",
            "Wipe the outside of the chain with a rag while backpedaling for a minute or so. For a "
            "deep clean, use a chain-cleaning box filled with a citrus degreaser, i.e. not kerosene or "
            "gasoline. Rinse with warm soapy water and let it dry completely before you lube it.",
            "Apply one small drop of lube to each roller, then wipe off the excess from the outside plates.",
            "How often should you do this? Roughly every 300 km in dry weather, and after every wet ride.",
        ),
        _doc(
            "lisbon",
            "2019-04-23T10:05:47Z",
            LISBON,
            "Lisbon rewards anyone willing to climb a few hills. On our first morning we rode the "
            "famous Tram 28 from Martim Moniz up through Graça and Alfama. Get on early, before 9 a.m., "
            "or you will spend the whole ride pressed against the door.",
            "The city's tiled façades, the azulejos, are worth a slow walk on their own. In the "
            "afternoon we crossed to Belém for pastéis de nata at the original bakery. The queue "
            "looked hopeless, but it moved surprisingly fast.",
            "We ended each day at a miradouro, watching the light turn gold over the Tagus.",
        ),
        _doc(
            "pour-over",
            "2019-04-20T06:31:29Z",
            COFFEE,
            "Pour-over coffee is mostly about controlling how fast the water moves through the "
            "grounds. Use about 15 g of coffee for every 250 g of water, ground roughly as fine as sea "
            "salt.",
            "Rinse the paper filter with hot water first, which removes the papery taste and warms "
            "the dripper. Pour just enough water to wet all the grounds and wait 30 to 45 seconds "
            "while the coffee blooms. Then pour slowly in small circles, keeping the water level steady.",
            "The whole brew should take around three minutes. If it tastes sour, grind finer; if it "
            "tastes bitter, grind coarser.",
        ),
        _doc(
            "ridge-walk",
            "2019-04-24T19:22:15Z",
            RIDGE,
            "The ridge walk from Saddle Gap to Pike Summit is about 11.5 km one way. We left the "
            "trailhead at 6:30 a.m. to beat the afternoon thunderstorms.",
            "The first hour climbs steadily through pine forest, then the trees thin out and the views "
            "open up. Above the tree line the path follows a narrow spine of rock with steep drops on "
            "both sides. A stone cairn marks the summit, and on a clear day you can see three separate "
            "lakes.",
            "Bring more water than you think you need, since there is none on the ridge itself. We "
            "were back at the car by 2 p.m., tired and sunburned but very happy.",
        ),
        _doc(
            "fresh-pasta",
            "2019-04-18T13:44:50Z",
            PASTA,
            "Fresh egg pasta takes less time than most people expect. Make a well in 300 g of flour, "
            "crack three eggs into it and whisk them with a fork.",
            "Slowly pull flour into the eggs until a shaggy dough forms, then knead for about eight "
            "minutes. Wrap the dough and let it rest for half an hour so the gluten relaxes.",
            "Roll it out thin enough that you can almost see your hand through it. Cut wide ribbons "
            "for pappardelle or narrow ones for tagliatelle. Cook for just two minutes in well-salted "
            "water and toss with a simple tomato and basil sauce.",
        ),
        _doc(
            "plum-cake",
            "2019-04-22T15:09:38Z",
            None,
            "This plum cake recipe came from my grandmother's handwritten notebook. Halve the plums, "
            "remove the stones, and arrange them cut side up on the batter.",
            "Bake at 180 °C for about 45 minutes, until a skewer comes out clean. It is even better "
            "the next day, e.g. with a spoonful of whipped cream.",
            url="https://www.lost-recipes.test/archive/plum-cake",
        ),
        _doc(
            "spring-warblers",
            "2019-04-26T05:58:02Z",
            BIRDS,
            "Warbler season is short, so plan your mornings carefully. Most migrants move at night "
            "and drop into woodland edges just after sunrise.",
            "Listen before you look: a high, buzzy song often gives a bird away long before you see "
            "it. The yellow warbler is the easiest to find, singing from willows near open water.",
            "Bring a notebook and jot down the time, the weather, and the exact spot of every "
            "sighting. After a few seasons those notes become a surprisingly useful record of local "
            "change.",
        ),
        _doc(
            "walnut-box",
            "2019-04-19T21:16:44Z",
            WALNUT_BOX,
            "This small walnut box was my first project with hand-cut dovetails. I resawed a single "
            "board into 10 mm stock, which kept the grain continuous around all four corners.",
            "Marking the tails with a sharp knife rather than a pencil made a big difference to the "
            "fit. The first corner took me nearly two hours; the last took forty minutes.",
            "For the finish I used three thin coats of oil, rubbed out with fine steel wool between "
            "coats. The lid is a simple floating panel in a groove, so it can move with the seasons.",
            "Would I do it again? Absolutely, though next time I'll make a practice joint in pine first.",
        ),
        _doc(
            "lemon-bars",
            "2019-04-18T09:27:31Z",
            LEMON_BARS,
            "These lemon bars have a buttery shortbread base and a sharp, silky filling. Press the "
            "crust into a lined tin and bake it until it is just golden.",
            "Whisk four eggs with sugar, lemon juice, zest and a little flour. Pour the filling over "
            "the hot crust and bake for another 20 minutes.",
            "Cool completely, then dust with powdered sugar before slicing.",
        ),
        _doc(
            "orion-nebula",
            "2019-04-22T02:48:19Z",
            ORION,
            "The Orion Nebula, also known as M42, is one of the easiest deep-sky objects to find. "
            "Look just below the three stars of Orion's belt for a fuzzy patch in the sword.",
            "Even a pair of 10x50 binoculars will show its glow from a suburban backyard. Through a "
            "small telescope you can pick out the four bright stars of the Trapezium at its heart.",
            "The best views come on moonless winter nights after your eyes have adapted for 20 "
            "minutes or more. Light from the nebula left it roughly 1,300 years ago.",
        ),
        _doc(
            "autumn-scarf",
            "2019-04-25T16:03:57Z",
            SCARF,
            "This scarf uses a simple slipped-stitch pattern that looks far more complicated than it "
            "is. You will need about 300 m of worsted-weight wool and a pair of 5 mm needles.",
            "Cast on 41 stitches and knit four rows of garter stitch for a firm edge. On every "
            "right-side row, slip every other stitch purlwise with the yarn in back.",
            "Keep going until the scarf is as long as you are tall, or until you run out of patience. "
            "Block it gently with steam so the pattern opens up.",
        ),
        _doc(
            "first-solo-sail",
            "2019-04-20T18:35:26Z",
            SAILING,
            "I finally took the dinghy out alone last Saturday. The forecast said 8 to 10 knots from "
            "the southwest, which felt just right for a first solo sail.",
            "Rigging took longer than usual because I checked every shackle twice. Once I was off the "
            "dock, the nerves faded and the boat felt lighter and quicker than ever. I practiced "
            "tacking back and forth across the harbor mouth for an hour.",
            "Coming back in, I misjudged the current and bumped the pontoon, but nothing was damaged "
            "except my pride. I'm already planning the next trip!",
        ),
        _doc(
            "half-marathon",
            "2019-04-23T12:14:08Z",
            HALF_MARATHON,
            "Forty-two members of the club ran the city half marathon on Sunday. Conditions were cool "
            "and overcast, close to perfect for racing.",
            "Several people set personal bests, including Mr. O'Neill, who finished in 1:29:58. The "
            "new course avoids the long bridge climb that made last year's race so hard.",
            "Thanks to everyone who volunteered at the water station near mile 9.",
        ),
        _doc(
            "planted-nano",
            "2019-04-24T07:49:42Z",
            NANO_TANK,
            "This planted nano tank holds just 30 liters but has been stable for over a year. The "
            "hardscape is two pieces of dragon stone with java fern and moss tied to driftwood. A small "
            "school of ember tetras and a few cherry shrimp keep the algae in check.",
        ),
        _doc(
            "celadon-bowl",
            "2019-04-21T11:20:33Z",
            BOWL,
            "This celadon bowl came out of the last glaze firing with a soft green sheen and a fine "
            "crackle across the inside.",
        ),
        _doc(
            "tent-pitching",
            "2019-04-26T14:37:21Z",
            TENT,
            "Pitching a tent in the dark is much easier if you practice at home first. Lay out the "
            "footprint, then the tent body, with the door facing away from the wind.",
            "Push the stakes in at a 45 degree angle, leaning away from the tent. Clip the body to the "
            "poles before you attach the rain fly. Tension the guy lines last, and check them again "
            "before you go to sleep.",
            "A well-pitched tent should barely move in a stiff breeze.",
        ),
        _doc(
            "squeaky-door",
            "2019-04-19T10:52:14Z",
            SQUEAKY_DOOR,
            "A squeaky door hinge is usually just a dry hinge pin. Close the door, then tap the pin up "
            "and out with a nail set and a hammer. Clean off old grease and rust with steel wool.",
            "Coat the pin lightly with white lithium grease or petroleum jelly, and tap it back in. "
            "Swing the door a few times to spread the grease along the pin. If it still squeaks, "
            "repeat the process with the other hinges.",
        ),
        _doc(
            "spring-inspection",
            "2019-04-25T15:26:49Z",
            BEES,
            "Our first full hive inspection of the year happened on a warm afternoon in April. Both "
            "colonies came through the winter, which is always a relief.",
            "The stronger hive already had brood on seven frames and fresh nectar coming in. The weaker "
            "one needs watching, since we only found a small patch of capped brood.",
            "We added a super to the strong hive to give them room and reduce the urge to swarm.",
        ),
        _doc(
            "granite-slabs",
            "2019-04-22T09:01:55Z",
            SLABS,
            "The granite slabs above the reservoir offer some of the best friction climbing in the "
            "region. Most routes are bolted, with anchors at the top of each pitch.",
            "Expect runouts of 4 to 6 m between bolts on the easier grades. Sticky rubber shoes are "
            "essential, and the rock is best on cool, dry mornings.",
            "Please use the marked approach trail to protect the fragile vegetation at the base.",
        ),
        _doc(
            "river-bends",
            "2019-04-21T20:11:37Z",
            KAYAK,
            "We spent two days paddling the slow river bends below the old mill. The water was low, so "
            "we had to walk the kayaks over a couple of gravel bars.",
            "Herons followed us for most of the first afternoon, always staying one bend ahead. We "
            "camped on a sandy island and cooked dinner as the sun went down.",
            "The second day was calm and warm, with barely a ripple on the water. It was the kind of "
            "trip that makes you forget to check your phone.",
        ),
        _doc(
            "kimchi",
            "2019-04-23T17:58:24Z",
            KIMCHI,
            "Homemade kimchi needs a few days of patience but very little skill. Cut a napa cabbage "
            "into pieces, salt it generously, and let it sit for two hours.",
            "Rinse the cabbage well, then mix it with a paste of garlic, ginger, fish sauce and chili "
            "flakes. Pack everything tightly into a clean jar, pressing down until the brine covers "
            "the vegetables.",
            "Leave it at room temperature for two to five days, tasting it daily. Once it is as sour "
            "as you like, move it to the fridge.",
        ),
        _doc(
            "autumn-walk",
            "2019-04-20T12:42:10Z",
            AUTUMN_GALLERY,
            "These photos are from an autumn walk through the old beech woods north of town. The "
            "leaves turned late this year, but when they did, the colors were spectacular.",
            "A thick layer of leaves covered the path, and every step crunched. We stopped by the "
            "stream for tea and watched leaves drift past on the current.",
        ),
        _doc(
            "maritime-museum",
            "2019-04-24T11:33:06Z",
            MUSEUM,
            "The maritime museum is small, but it punches well above its weight. The highlight is a "
            "room full of detailed ship models, some more than 200 years old.",
            "Upstairs, a gallery of navigation instruments shows how sailors found their way before "
            "GPS. Allow about two hours, and check the website for free entry on the first Sunday of "
            "each month.",
            "The café on the top floor has a great view of the harbor.",
        ),
        _doc(
            "coastal-branch",
            "2019-04-26T09:15:44Z",
            RAILWAY,
            "The coastal branch line runs for 27 miles between the junction and the fishing town at "
            "its end. It opened in 1879 and very nearly closed in the 1960s.",
            "Today a local trust runs heritage trains at weekends from Easter to October. The best "
            "seats are on the left side going out, where the track runs right along the cliffs.",
            "Dr. Hughes, the trust's chairman, says the next goal is to restore the old signal box.",
        ),
        _doc(
            "golden-hour-portraits",
            "2019-04-18T18:50:12Z",
            PORTRAITS,
            "The hour after sunrise and the hour before sunset give the softest, warmest light for "
            "portraits. Place your subject with the sun behind them to get a gentle rim of light in "
            "their hair.",
            "Use a reflector, or even a white sheet of card, to bounce some light back onto the face. "
            "Shoot at a wide aperture, e.g. f/2.8 or wider, to blur busy backgrounds. Expose for the "
            "skin, not the sky.",
            "Above all, keep talking to your subject so they stay relaxed.",
        ),
        _doc(
            "chanterelles",
            "2019-04-25T07:07:58Z",
            CHANTERELLES,
            "Chanterelles usually appear in late summer after a few days of warm rain. Look for them "
            "under oaks and beeches, often half hidden in moss.",
            "True chanterelles have blunt, forking ridges instead of sharp gills. Never eat any wild "
            "mushroom unless an experienced forager has confirmed the identification.",
            "Clean them with a soft brush rather than washing them, since they soak up water like "
            "sponges. A quick sauté in butter with a little thyme is all they need.",
        ),
        _doc(
            "winter-riding",
            "2019-04-19T16:24:35Z",
            COMMUTE,
            "Riding to work through the winter is easier than it sounds. Good lights matter more than "
            "anything else, since it will be dark for at least one leg of the trip.",
            "Fenders keep road spray off your back and your bag. Dress in layers and expect to feel a "
            "little cold for the first ten minutes.",
            "Studded tires are worth it if your streets stay icy for weeks at a time. Wipe salt off "
            "the chain and derailleur at least once a week.",
        ),
        _doc(
            "green-tea",
            "2019-04-22T20:39:17Z",
            TEA,
            "Green tea turns bitter quickly if the water is too hot. Aim for about 75 to 80 °C, which "
            "is roughly when small bubbles start to form on the bottom of the kettle.",
            "Use 2 to 3 g of leaves per cup and steep for just one or two minutes. Good leaves can be "
            "steeped three or four times, and each infusion tastes a little different.",
            "Store the rest in an airtight tin away from light and strong smells.",
        ),
        _doc(
            "monstera",
            "2019-04-23T08:46:29Z",
            MONSTERA,
            "A monstera will grow happily in most living rooms if it gets bright, indirect light. "
            "Water it when the top few centimeters of soil are dry, and let the excess drain away.",
            "Yellow leaves usually mean too much water, while brown, crispy edges mean too little "
            "humidity. Give it a moss pole to climb, and the new leaves will grow larger with more "
            "splits.",
            "Wipe the leaves with a damp cloth now and then so they can photosynthesize efficiently.",
        ),
        _doc(
            "squash-soup",
            "2019-04-24T13:18:51Z",
            SOUP,
            "Roasting the squash first gives this soup a deep, sweet flavor. Halve a butternut squash, "
            "scoop out the seeds, and roast it at 200 °C for 45 minutes.",
            "Meanwhile, soften an onion and two cloves of garlic in olive oil. Scoop the squash flesh "
            "into the pot, add a liter of stock, and simmer for ten minutes.",
            "Blend until smooth and season with salt, pepper and a pinch of nutmeg. Serve with toasted "
            "pumpkin seeds and crusty bread.",
        ),
        _doc(
            "kitchen-herbs",
            "2019-04-21T09:54:06Z",
            HERBS,
            "Most kitchen herbs are easy to grow in pots on a sunny balcony. Basil, thyme and rosemary "
            "all want at least six hours of direct sun.",
            "Mint is the exception; it tolerates shade and will take over any bed you plant it in. "
            "Pinch out the flowering tips of basil to keep the leaves coming.",
            "Harvest in the morning, when the oils are strongest.",
        ),
        _doc(
            "ring-road",
            "2019-04-25T22:03:13Z",
            ICELAND,
            "Driving Iceland's Ring Road takes about a week if you want to stop and look around. We "
            "rented a small 4x4, which was plenty for the main road in summer.",
            "Gas stations can be 100 km apart in the east, so fill up whenever you can. The waterfalls "
            "along the south coast are spectacular but very crowded by midday.",
            "In the north, the lava fields near Lake Mývatn felt like another planet. Bring rain gear, even in July!",
        ),
        _doc(
            "packing-list",
            "2019-04-20T10:28:40Z",
            TOURING,
            "A loaded touring bike handles very differently from an empty one. Put heavy items low in "
            "the rear panniers and keep the front bags light.",
            "My basic toolkit is a multi-tool, tire levers, a spare tube, a patch kit and a mini pump. "
            "Pack a few zip ties and a roll of electrical tape; they fix more problems than you'd think.",
            "Test-ride the fully loaded bike for a day before the real trip starts.",
        ),
        _doc(
            "brown-butter-cookies",
            "2019-04-26T19:41:02Z",
            COOKIES,
            "Browning the butter is the secret to these chocolate chip cookies. Melt the butter over "
            "medium heat and keep cooking until it smells nutty and the solids turn golden.",
            "Let it cool slightly before mixing it with brown sugar, an egg and a splash of vanilla. "
            "Fold in flour, a little baking soda and plenty of chopped dark chocolate.",
            "Chill the dough for at least an hour, or overnight if you can wait. Bake at 180 °C for "
            "10 to 12 minutes, until the edges are set but the centers still look soft.",
        ),
        # A later crawl of the same URL: C4 keeps both, and both map to the same page record.
        _doc(
            "lemon-bars-updated",
            "2019-04-26T08:02:19Z",
            LEMON_BARS,
            "These lemon bars have a buttery shortbread base and a sharp, silky filling. Press the "
            "crust into a lined tin and bake it until it is just golden.",
            "Whisk four eggs with sugar, lemon juice, zest and a little flour. Pour the filling over "
            "the hot crust and bake for another 20 to 25 minutes.",
            "Cool completely, then dust with powdered sugar. Update: several readers asked, and yes, "
            "limes work just as well!",
        ),
    ]
}


@dataclass(frozen=True)
class RawLine:
    """A shard line that is not a well-formed document."""

    outcome: str  # raw_c4 outcome: malformed_json | missing_field | blank_line
    content: str


MALFORMED = RawLine(
    "malformed_json",
    # A truncated object, as left behind by an interrupted write.
    '{"text": "The night ferry leaves the harbor at 11 p.m. and arrives just after dawn.\\n'
    'Cabins sell out early in summer, so book", "timestamp": "2019-04-2',
)
MISSING_URL = RawLine(
    "missing_field",
    json.dumps(
        {
            "text": "Compost needs a balance of greens and browns. Turn the pile every couple of "
            "weeks to keep air moving through it.\nA healthy pile smells earthy, never sour.",
            "timestamp": "2019-04-22T06:55:41Z",
        },
        ensure_ascii=False,
    ),
)
BLANK = RawLine("blank_line", "")

# Shard line order; the broken lines sit in the middle so readers must skip and go on.
LINES: list[str | RawLine] = [
    "tomatoes",
    "sourdough",
    "chain-cleaning",
    "lisbon",
    "pour-over",
    "ridge-walk",
    "fresh-pasta",
    "plum-cake",
    "spring-warblers",
    "walnut-box",
    "lemon-bars",
    "orion-nebula",
    MALFORMED,
    "autumn-scarf",
    "first-solo-sail",
    "half-marathon",
    "planted-nano",
    "celadon-bowl",
    MISSING_URL,
    "tent-pitching",
    "squeaky-door",
    "spring-inspection",
    "granite-slabs",
    "river-bends",
    "kimchi",
    BLANK,
    "autumn-walk",
    "maritime-museum",
    "coastal-branch",
    "golden-hour-portraits",
    "chanterelles",
    "winter-riding",
    "green-tea",
    "monstera",
    "squash-soup",
    "kitchen-herbs",
    "ring-road",
    "packing-list",
    "brown-butter-cookies",
    "lemon-bars-updated",
]


# ---------------------------------------------------------------------------
# Ground truth derived from the tables
# ---------------------------------------------------------------------------


def url_filter_reason(url: str) -> str | None:
    """MMC4's URL-level image filter: extension on the lower-cased path, then keywords."""
    if not urlsplit(url).path.lower().endswith(ALLOWED_EXTENSIONS):
        return "bad_extension"
    if any(word in url.lower() for word in URL_KEYWORDS):
        return "keyword"
    return None


def image_path_for(url: str) -> str:
    """images/ relative path behind a sample image URL (query string ignored)."""
    if not url.startswith(IMG):
        raise ValueError(f"not a sample image URL: {url}")
    return unquote(urlsplit(url).path).lstrip("/")


def resized_size(w: int, h: int) -> tuple[int, int]:
    """Longer side capped at MAX_SIDE, aspect kept, never upscaled."""
    scale = min(1.0, MAX_SIDE / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _spec_dims(path: str) -> tuple[int, int]:
    """Pixel size of the file at ``path`` (copies and re-encodes keep their source's size)."""
    spec = IMAGES[path]
    if spec.kind in ("copy", "requality"):
        return _spec_dims(str(spec.source))
    return spec.size


def fetch_outcome(path: str) -> str:
    spec = IMAGES.get(path, MISSING)
    if spec.kind == "missing":
        return "http_404"
    if spec.kind == "html":
        return "not_an_image"
    if spec.kind == "truncated":
        return "undecodable"
    if spec.kind in ("gif", "webp"):
        raise ValueError(f"{path}: gif/webp must be dropped by the URL filter, never fetched")
    w, h = _spec_dims(path)
    if min(w, h) < MIN_SIDE:
        return "too_small"
    if max(w, h) / min(w, h) > MAX_ASPECT:
        return "bad_aspect"
    return "ok"


def _same_picture_root(path: str) -> str:
    """Follow copy/requality/resized links to the originally rendered picture."""
    spec = IMAGES.get(path)
    while spec is not None and spec.source is not None:
        path = spec.source
        spec = IMAGES.get(path)
    return path


def page_image_urls(page: Page) -> list[str]:
    """Absolute image URLs in page order, repeated URLs dropped (first one wins)."""
    base = page.base_href or page.url
    urls: list[str] = []
    for item in page.items:
        if isinstance(item, Img) and item.src:
            url = urljoin(base, item.src)
            if url not in urls:
                urls.append(url)
    return urls


def expected_for_page(page: Page) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(candidates with fetch outcomes and in-document duplicates, URL-filtered URLs)."""
    candidates: list[dict[str, Any]] = []
    filtered: list[dict[str, Any]] = []
    kept_roots: dict[str, str] = {}  # picture root -> first ok candidate URL showing it
    for url in page_image_urls(page):
        reason = url_filter_reason(url)
        if reason is not None:
            filtered.append({"url": url, "reason": reason})
            continue
        path = image_path_for(url)
        outcome = fetch_outcome(path)
        entry: dict[str, Any] = {"url": url, "path": path, "fetch": outcome}
        if outcome == "ok":
            w, h = _spec_dims(path)
            entry["original_size"] = [w, h]
            entry["size"] = list(resized_size(w, h))
            root = _same_picture_root(path)
            entry["duplicate_of"] = kept_roots.get(root)
            kept_roots.setdefault(root, url)
        candidates.append(entry)
    return candidates, filtered


def compute_expected() -> dict[str, Any]:
    lines: list[dict[str, Any]] = []
    for number, item in enumerate(LINES):
        if isinstance(item, RawLine):
            lines.append(
                {
                    "line": number,
                    "slug": None,
                    "url": None,
                    "raw_c4": item.outcome,
                    "archive": None,
                    "url_filtered": [],
                    "candidates": [],
                    "published": False,
                    "published_images": [],
                }
            )
            continue
        doc = DOCS[item]
        entry: dict[str, Any] = {"line": number, "slug": doc.slug, "url": doc.doc_url}
        if doc.page is None:
            candidates, filtered, outcome, archive = [], [], "no_page_record", None
        else:
            candidates, filtered = expected_for_page(doc.page)
            outcome = "ok" if candidates else "no_candidate_images"
            archive = doc.page.archive
        published_images = [c["url"] for c in candidates if c["fetch"] == "ok" and c["duplicate_of"] is None]
        entry.update(
            raw_c4=outcome,
            archive=archive,
            url_filtered=filtered,
            candidates=candidates,
            published=bool(published_images),
            published_images=published_images,
        )
        lines.append(entry)

    ok_lines = [line for line in lines if line["raw_c4"] == "ok"]
    all_candidates = [c for line in ok_lines for c in line["candidates"]]
    shared: dict[str, list[int]] = defaultdict(list)
    for line in ok_lines:
        for url in line["published_images"]:
            shared[url].append(line["line"])
    totals = {
        "lines": len(lines),
        "raw_c4": dict(sorted(Counter(line["raw_c4"] for line in lines).items())),
        "url_filtered": dict(sorted(Counter(f["reason"] for line in lines for f in line["url_filtered"]).items())),
        "candidates": len(all_candidates),
        "fetch": dict(sorted(Counter(c["fetch"] for c in all_candidates).items())),
        "in_document_duplicates": sum(1 for c in all_candidates if c.get("duplicate_of")),
        "published_documents": sum(1 for line in lines if line["published"]),
        "published_images": sum(len(line["published_images"]) for line in lines),
        "dropped_no_images": sum(1 for line in ok_lines if not line["published"]),
    }
    return {
        "description": "Ground truth for the bundled MMC4 sample; generated by mmc4_assets.sample.build.",
        "image_url_prefix": IMG,
        "shard": SHARD_RELPATH,
        "archives": [WARC_RELPATH, WAT_RELPATH],
        "filters": {
            "allowed_extensions": list(ALLOWED_EXTENSIONS),
            "url_keywords": list(URL_KEYWORDS),
            "min_side": MIN_SIDE,
            "max_aspect": MAX_ASPECT,
            "max_side": MAX_SIDE,
            "phash_threshold": PHASH_THRESHOLD,
        },
        "outcomes": {
            "raw_c4": [
                "ok",
                "malformed_json",
                "missing_field",
                "no_page_record",
                "no_candidate_images",
                "blank_line",
            ],
            "fetch": ["ok", "http_404", "not_an_image", "undecodable", "too_small", "bad_aspect"],
            "url_filter": ["bad_extension", "keyword"],
        },
        "lines": lines,
        # Images published in more than one document (cross-document reuse is allowed).
        "shared_images": {url: nums for url, nums in sorted(shared.items()) if len(nums) > 1},
        "totals": totals,
    }


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def _seed(path: str) -> int:
    spec = IMAGES[path]
    return spec.seed if spec.seed is not None else zlib.crc32(path.encode("utf-8"))


def render_picture(seed: int, size: tuple[int, int], noise: bool) -> Image.Image:
    """A text-free abstract picture: gradient background, a few shapes, optional grain.

    Large, seed-dependent structures keep perceptual hashes of different pictures far
    apart while re-encodes and small resizes of one picture stay close.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    # Draw on a canvas of <= 320 px and scale up: cheap to render, soft edges for free,
    # and smooth pictures compress well (the sample must stay small).
    step = -(-max(w, h) // 320)
    cw, ch = max(1, w // step), max(1, h // step)

    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    xs = np.linspace(-0.5, 0.5, cw, dtype=np.float32)[None, :]
    ys = np.linspace(-0.5, 0.5, ch, dtype=np.float32)[:, None]
    proj = xs * np.cos(angle) + ys * np.sin(angle)
    t = (proj - proj.min()) / max(1e-6, float(np.ptp(proj)))
    background = c1 + (c2 - c1) * t[..., None]
    image = Image.fromarray(background.clip(0, 255).astype(np.uint8), "RGB")

    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 8))):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.2, 0.9) * cw, rng.uniform(-0.2, 0.9) * ch
        bw, bh = rng.uniform(0.15, 0.6) * cw, rng.uniform(0.15, 0.6) * ch
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse([x0, y0, x0 + bw, y0 + bh], fill=color)
        elif shape == 1:
            draw.rectangle([x0, y0, x0 + bw, y0 + bh], fill=color)
        else:
            points = [(x0 + rng.uniform(0, bw), y0 + rng.uniform(0, bh)) for _ in range(3)]
            draw.polygon(points, fill=color)
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    if noise:
        # A little grain so JPEGs look photographic rather than flat.
        grain = rng.integers(-4, 5, size=(h, w, 1), dtype=np.int16)
        image = Image.fromarray((np.asarray(image, dtype=np.int16) + grain).clip(0, 255).astype(np.uint8))
    return image


def _encode(image: Image.Image, fmt: str, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    elif fmt == "PNG":
        image.save(buf, "PNG", optimize=False, compress_level=6)
    elif fmt == "GIF":
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buf, "GIF")
    elif fmt == "WEBP":
        image.save(buf, "WEBP", quality=80, method=4)
    else:
        raise ValueError(fmt)
    return buf.getvalue()


def _html_image_body(path: str) -> bytes:
    title = HTML_IMAGE_BODIES[path]
    return (
        f"<!DOCTYPE html>\n<html><head><title>{html.escape(title)}</title></head>\n"
        f"<body><h1>{html.escape(title)}</h1><p>The image you requested is not available right now.</p></body></html>\n"  # noqa: E501
    ).encode()


def image_bytes(path: str, _cache: dict[str, bytes | None] | None = None) -> bytes | None:
    """Bytes for one image path, or None for a deliberately missing file."""
    cache: dict[str, bytes | None] = _cache if _cache is not None else {}
    if path in cache:
        return cache[path]
    spec = IMAGES[path]
    data: bytes | None
    if spec.kind == "missing":
        data = None
    elif spec.kind == "html":
        data = _html_image_body(path)
    elif spec.kind == "copy":
        data = image_bytes(str(spec.source), cache)
    elif spec.kind == "requality":
        src = Image.open(io.BytesIO(image_bytes(str(spec.source), cache) or b""))
        data = _encode(src.convert("RGB"), "JPEG", spec.quality)
    elif spec.kind == "resized":
        src = Image.open(io.BytesIO(image_bytes(str(spec.source), cache) or b""))
        data = _encode(src.convert("RGB").resize(spec.size, Image.Resampling.LANCZOS), "JPEG", spec.quality)
    elif spec.kind == "truncated":
        whole = _encode(render_picture(_seed(path), spec.size, noise=True), "JPEG", spec.quality)
        data = whole[: len(whole) // 2]
    else:
        fmt = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP"}[spec.kind]
        picture = render_picture(_seed(path), spec.size, noise=fmt == "JPEG")
        data = _encode(picture, fmt, spec.quality)
    cache[path] = data
    return data


def write_images(images_dir: Path) -> dict[str, bytes | None]:
    cache: dict[str, bytes | None] = {}
    for path in sorted(IMAGES):
        data = image_bytes(path, cache)
        if data is None:
            continue
        target = images_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return cache


def check_duplicate_design(expected: dict[str, Any], cache: dict[str, bytes | None]) -> None:
    """Make sure real pHashes agree with the designed in-document duplicates, with margin."""
    hashes = {
        path: imagehash.phash(Image.open(io.BytesIO(data)).convert("RGB"))
        for path, data in cache.items()
        if data is not None and IMAGES[path].kind not in ("html", "truncated")
    }
    problems: list[str] = []
    for line in expected["lines"]:
        ok = [c for c in line["candidates"] if c["fetch"] == "ok"]
        for i, later in enumerate(ok):
            for earlier in ok[:i]:
                distance = hashes[later["path"]] - hashes[earlier["path"]]
                designed_dup = _same_picture_root(later["path"]) == _same_picture_root(earlier["path"])
                if designed_dup and distance > PHASH_THRESHOLD:
                    problems.append(f"line {line['line']}: {later['path']} is no near-dup (d={distance})")
                if not designed_dup and distance < PHASH_MIN_DISTINCT:
                    problems.append(f"line {line['line']}: {later['path']} ~ {earlier['path']} (d={distance})")
    if problems:
        raise AssertionError("duplicate design does not hold:\n" + "\n".join(problems))


# ---------------------------------------------------------------------------
# Pages: WARC and WAT
# ---------------------------------------------------------------------------


def _record_id(*parts: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(_ID_NAMESPACE, '/'.join(parts))}>"


def _warc_date(doc: Doc) -> str:
    # Crawl time shortly before the C4 timestamp; fixed, so archives are reproducible.
    return doc.timestamp.replace("Z", "").rsplit(":", 1)[0] + ":00Z"


def _ip_for(url: str) -> str:
    # TEST-NET-1 addresses only.
    return f"192.0.2.{zlib.crc32(urlsplit(url).netloc.encode()) % 250 + 1}"


def render_html(page: Page, doc: Doc) -> str:
    paragraphs = doc.text.split("\n")
    items = list(page.items)
    # Spread the images/links over the paragraphs, keeping their order.
    slots: dict[int, list[Img | A]] = defaultdict(list)
    for k, item in enumerate(items):
        slots[k * len(paragraphs) // max(1, len(items))].append(item)

    def attr(name: str, value: str | None) -> str:
        return "" if value is None else f' {name}="{html.escape(value, quote=True)}"'

    def render_item(item: Img | A) -> str:
        if isinstance(item, A):
            return f"<p><a{attr('href', item.href)}>{html.escape(item.text) or '[image]'}</a></p>"
        tag = "<img" + attr("src", item.src) + attr("srcset", item.srcset) + attr("data-src", item.data_src)
        tag += attr("alt", item.alt) + ' loading="lazy">'
        return f"<figure>{tag}</figure>"

    body: list[str] = []
    for i, para in enumerate(paragraphs):
        body.append(f"<p>{html.escape(para)}</p>")
        body.extend(render_item(item) for item in slots.get(i, []))
    head = [
        '<meta charset="utf-8">',
        f"<title>{html.escape(page.title)}</title>",
        '<link rel="icon" href="/favicon.png">',
    ]
    if page.base_href:
        head.append(f"<base{attr('href', page.base_href)}>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n'
        + "\n".join(head)
        + '\n</head>\n<body>\n<nav><a href="/">Home</a></nav>\n<article>\n'
        + f"<h1>{html.escape(page.title)}</h1>\n"
        + "\n".join(body)
        + "\n</article>\n<footer><p>&copy; 2019</p></footer>\n</body>\n</html>\n"
    )


def _http_response(body: bytes, content_type: str) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Server: nginx\r\n"
        "Date: Thu, 25 Apr 2019 12:00:00 GMT\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def _http_request(url: str) -> bytes:
    parts = urlsplit(url)
    return (
        f"GET {parts.path or '/'} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        "User-Agent: CCBot/2.0 (https://commoncrawl.org/faq/)\r\n"
        "Accept: text/html,application/xhtml+xml\r\n"
        "\r\n"
    ).encode("ascii")


def _pages_with_docs() -> list[tuple[Page, Doc]]:
    """Each page once, paired with the first document (in shard order) that uses it."""
    seen: dict[str, tuple[Page, Doc]] = {}
    for item in LINES:
        if isinstance(item, RawLine):
            continue
        doc = DOCS[item]
        if doc.page is not None and doc.page.url not in seen:
            seen[doc.page.url] = (doc.page, doc)
    return list(seen.values())


def _warcinfo(writer: WARCWriter, filename: str, date: str, fields: dict[str, str]) -> None:
    payload = "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode("utf-8")
    record = writer.create_warc_record(
        "",
        "warcinfo",
        payload=io.BytesIO(payload),
        length=len(payload),
        warc_headers_dict={
            "WARC-Record-ID": _record_id("warcinfo", filename),
            "WARC-Date": date,
            "WARC-Filename": filename,
        },
    )
    writer.write_record(record)


def write_warc(path: Path) -> None:
    pages = [(p, d) for p, d in _pages_with_docs() if p.archive == "warc"]
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        _warcinfo(
            writer,
            WARC_FILENAME,
            "2019-04-18T00:00:00Z",
            {
                "software": "mmc4_assets.sample.build",
                "format": "WARC File Format 1.0",
                "isPartOf": "MMC4-SAMPLE-2019-18",
                "description": "Synthetic pages for the MMC4 sample; hosts are under .test",
            },
        )
        # robots.txt first: a non-HTML response that readers must skip.
        robots_url = "https://www.garden-notes.test/robots.txt"
        raw = _http_response(b"User-agent: *\nDisallow: /admin/\n", "text/plain")
        writer.write_record(
            writer.create_warc_record(
                robots_url,
                "response",
                payload=io.BytesIO(raw),
                length=len(raw),
                warc_headers_dict={
                    "WARC-Record-ID": _record_id("response", robots_url),
                    "WARC-Date": "2019-04-18T00:00:01Z",
                    "WARC-IP-Address": _ip_for(robots_url),
                },
            )
        )
        for page, doc in pages:
            date = _warc_date(doc)
            response_id = _record_id("response", page.url)
            if page.with_request:
                raw = _http_request(page.url)
                writer.write_record(
                    writer.create_warc_record(
                        page.url,
                        "request",
                        payload=io.BytesIO(raw),
                        length=len(raw),
                        warc_headers_dict={
                            "WARC-Record-ID": _record_id("request", page.url),
                            "WARC-Date": date,
                            "WARC-Concurrent-To": response_id,
                        },
                    )
                )
            raw = _http_response(render_html(page, doc).encode("utf-8"), "text/html; charset=utf-8")
            writer.write_record(
                writer.create_warc_record(
                    page.url,
                    "response",
                    payload=io.BytesIO(raw),
                    length=len(raw),
                    warc_headers_dict={
                        "WARC-Record-ID": response_id,
                        "WARC-Date": date,
                        "WARC-IP-Address": _ip_for(page.url),
                        "WARC-Identified-Payload-Type": "text/html",
                    },
                )
            )


def _wat_links(page: Page) -> list[dict[str, str]]:
    links: list[dict[str, str]] = []
    for item in page.items:
        if isinstance(item, A):
            link = {"path": "A@/href", "url": item.href}
            if item.text:
                link["text"] = item.text
        else:
            if item.src is None:  # WAT only lists attributes that exist
                continue
            link = {"path": "IMG@/src", "url": item.src}
            if item.alt:
                link["alt"] = item.alt
        links.append(link)
    return links


def _wat_envelope(page: Page, doc: Doc, warc_type: str) -> dict[str, Any]:
    """One WAT JSON document in Common Crawl's layout (response or request envelope)."""
    date = _warc_date(doc)
    record_id = _record_id(warc_type, page.url)
    body = render_html(page, doc).encode("utf-8")
    header_meta = {
        "WARC-Type": warc_type,
        "WARC-Date": date,
        "WARC-Record-ID": record_id,
        "Content-Type": f"application/http; msgtype={warc_type}",
        "WARC-Target-URI": page.url,
        "WARC-IP-Address": _ip_for(page.url),
    }
    if warc_type == "request":
        payload_meta: dict[str, Any] = {
            "Actual-Content-Type": "application/http; msgtype=request",
            "HTTP-Request-Metadata": {
                "Request-Message": {"Method": "GET", "Path": urlsplit(page.url).path, "Version": "HTTP/1.1"},
                "Headers": {"Host": urlsplit(page.url).netloc, "User-Agent": "CCBot/2.0"},
                "Headers-Length": "120",
                "Entity-Length": "0",
            },
        }
    else:
        header_meta["WARC-Identified-Payload-Type"] = "text/html"
        payload_meta = {
            "Actual-Content-Type": "application/http; msgtype=response",
            "HTTP-Response-Metadata": {
                "Response-Message": {"Version": "HTTP/1.1", "Status": "200", "Reason": "OK"},
                "Headers": {"Content-Type": "text/html; charset=utf-8", "Server": "nginx"},
                "Headers-Length": "130",
                "Entity-Length": str(len(body)),
                "Entity-Trailing-Slop-Length": "0",
                "HTML-Metadata": {
                    "Head": {
                        "Title": page.title,
                        "Metas": [{"name": "viewport", "content": "width=device-width"}],
                        "Link": [{"path": "LINK@/href", "url": "/favicon.png", "rel": "icon"}],
                    },
                    "Links": _wat_links(page),
                },
            },
        }
    return {
        "Container": {
            "Filename": "CC-MAIN-20190418-sample-00000.warc.gz",
            "Compressed": True,
            "Offset": str(zlib.crc32(record_id.encode()) % 10_000_000),
        },
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Length": "400",
            "Actual-Content-Length": str(len(body) + 130 if warc_type == "response" else 120),
            "WARC-Header-Metadata": header_meta,
            "Payload-Metadata": payload_meta,
        },
    }


def write_wat(path: Path) -> None:
    pages = [(p, d) for p, d in _pages_with_docs() if p.archive == "wat"]
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        _warcinfo(
            writer,
            WAT_FILENAME,
            "2019-04-18T00:00:00Z",
            {"software": "mmc4_assets.sample.build", "format": "WAT", "isPartOf": "MMC4-SAMPLE-2019-18"},
        )
        for page, doc in pages:
            # Request envelopes come first, as in real WAT files; readers must skip them.
            kinds = ("request", "response") if page.with_request else ("response",)
            for warc_type in kinds:
                envelope = _wat_envelope(page, doc, warc_type)
                payload = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                record = writer.create_warc_record(
                    page.url,
                    "metadata",
                    payload=io.BytesIO(payload),
                    length=len(payload),
                    warc_content_type="application/json",
                    warc_headers_dict={
                        "WARC-Record-ID": _record_id("wat", warc_type, page.url),
                        "WARC-Date": _warc_date(doc),
                        "WARC-Refers-To": envelope["Envelope"]["WARC-Header-Metadata"]["WARC-Record-ID"],
                    },
                )
                writer.write_record(record)


# ---------------------------------------------------------------------------
# C4 shard
# ---------------------------------------------------------------------------


def shard_lines() -> Iterable[str]:
    for item in LINES:
        if isinstance(item, RawLine):
            yield item.content
        else:
            doc = DOCS[item]
            record = {"text": doc.text, "timestamp": doc.timestamp, "url": doc.doc_url}
            yield json.dumps(record, ensure_ascii=False)


def write_shard(path: Path) -> None:
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for line in shard_lines():
            gz.write(line.encode("utf-8") + b"\n")


# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------


def _check_tables() -> None:
    """Catch table mistakes early: every case must mean exactly what expected.json says."""
    used = [d for d in LINES if not isinstance(d, RawLine)]
    assert len(used) == len(set(used)), "a document slug appears twice in LINES"
    assert set(used) == set(DOCS), "every DOCS entry must appear in LINES exactly once"
    for page, _ in _pages_with_docs():
        for url in page_image_urls(page):
            lowered = url.lower()
            keyword = any(word in lowered for word in URL_KEYWORDS)
            extension = urlsplit(url).path.lower().endswith(ALLOWED_EXTENSIONS)
            # Each filtered URL fails exactly one rule, so filter order never matters.
            assert not (keyword and not extension), f"{url} fails both URL rules"
            if url_filter_reason(url) is None:
                assert url.startswith(IMG), f"candidate {url} is not on the sample image host"
                assert image_path_for(url) in IMAGES, f"{url} has no entry in IMAGES"
        # Page URLs themselves must never trip the keyword filter by accident.
        assert not any(word in page.url.lower() for word in URL_KEYWORDS), page.url


def build(out_dir: Path = SAMPLE_DIR, verify: bool = True) -> dict[str, Any]:
    """(Re)generate the sample under ``out_dir`` and return the expected.json content.

    ``verify`` re-checks the near-duplicate design with real pHashes; it does not change
    the output, so tests that only compare bytes may skip it.
    """
    _check_tables()
    out_dir = Path(out_dir)
    # Only remove what this builder owns, so a wrong --out cannot wipe unrelated files.
    for sub in ("c4", "pages", IMAGES_RELPATH):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    (out_dir / EXPECTED_RELPATH).unlink(missing_ok=True)
    for sub in ("c4", "pages", IMAGES_RELPATH):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)

    expected = compute_expected()
    cache = write_images(out_dir / IMAGES_RELPATH)
    if verify:
        check_duplicate_design(expected, cache)
    write_shard(out_dir / SHARD_RELPATH)
    write_warc(out_dir / WARC_RELPATH)
    write_wat(out_dir / WAT_RELPATH)
    (out_dir / EXPECTED_RELPATH).write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return expected


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SAMPLE_DIR, help="output dir (default: %(default)s)")
    args = parser.parse_args(argv)
    expected = build(args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    print(json.dumps(expected["totals"], indent=1))


if __name__ == "__main__":
    main()
