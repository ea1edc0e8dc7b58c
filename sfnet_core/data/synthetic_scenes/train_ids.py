"""What the generator draws, as Cityscapes train ids (checked against cityscapesscripts' table in the tests)."""
from __future__ import annotations

ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = 0, 1, 2, 5, 7, 8, 9, 10, 11, 13
IGNORE = 255  # the ego vehicle's bonnet: void in Cityscapes, so ignored here too

#: Train-id names the generator draws (a subset of the 19 Cityscapes classes).
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "pole", "traffic sign", "vegetation", "terrain", "sky", "person", "car",
)
