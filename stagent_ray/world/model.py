"""The World data model: plain dataclasses, serialised to canonical JSON.

Units: coordinates in degrees (5 decimals), distances in km unless a name says _m,
prices in integer CNY, temperatures in degrees C, times "HH:MM" (world-local), dates ISO.
Weekday index 0 = Monday (Python's date.weekday()).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, timedelta

WINDOW_DAYS = 15  # tools accept dates today .. today + 15 inclusive


@dataclass
class District:
    name: str  # unique across the whole world
    city: str
    lat: float
    lng: float


@dataclass
class City:
    name: str
    lat: float
    lng: float
    districts: list[District]
    airport: str  # name of the airport POI (category "airport")
    stations: list[str]  # names of the railway-station POIs (category "train_station")


@dataclass
class POI:
    poi_id: str  # "<city-slug>-0001"; corridor POIs: "hwy-0001"
    name: str  # unique within its city (and unique among corridor POIs)
    city: str  # "" for highway service areas between cities
    district: str  # district name; for corridor POIs the expressway name
    category: str  # one of generate.CATEGORIES
    lat: float
    lng: float
    rating: float  # 0.0-5.0, one decimal
    avg_price: int  # typical spend per person in CNY; 0 = free or not applicable
    popularity: int  # number of reviews; feeds the "weight" sort
    hours: list  # 7 lists (Mon..Sun) of ["HH:MM", "HH:MM"] intervals; [] = closed that day
    tags: list[str]

    @property
    def latlng(self) -> tuple[float, float]:
        return (self.lat, self.lng)


@dataclass
class Flight:
    number: str  # "YH1234"
    airline: str
    origin: str  # city names
    destination: str
    date: str
    depart: str  # "HH:MM"; all flights land the same day
    arrive: str
    duration_min: int
    price: int  # economy fare, CNY
    origin_airport: str
    destination_airport: str


@dataclass
class Train:
    number: str  # "G123" (high speed) or "D456"
    origin: str
    destination: str
    date: str
    depart: str
    arrive: str  # same day
    duration_min: int
    price_second: int  # second-class seat, CNY
    price_first: int
    origin_station: str
    destination_station: str


@dataclass
class WeatherDay:
    city: str
    date: str
    condition: str  # one of generate.CONDITIONS
    high_c: int
    low_c: int
    precip_prob: int  # percent
    aqi: int
    wind_kph: int
    humidity: int  # percent


@dataclass
class CurrentWeather:
    city: str
    observed_at: str  # the world's "now", "YYYY-MM-DDTHH:MM"
    condition: str
    temperature_c: int
    feels_like_c: int
    humidity: int
    wind_kph: int
    aqi: int
    aqi_level: str  # good / moderate / unhealthy_sensitive / unhealthy


@dataclass
class RankingList:
    list_id: str
    city: str
    title: str  # "Must-Eat Restaurants in Yunhai"
    keywords: list[str]  # extra words the list answers to ("food", "eat", ...)
    items: list[str]  # POI names of that city, best first


@dataclass
class WebPage:
    page_id: str
    city: str  # "" for pages not about one city
    kind: str  # ticket_rules / opening_policy / event / refund_policy / travel_tips / ...
    title: str
    url: str
    text: str  # <= ~400 chars, every fact consistent with the world


@dataclass
class World:
    seed: int
    today: str  # first day of the tool window
    now: str  # "YYYY-MM-DDTHH:MM": current weather time and default route departure
    cities: list[City]
    pois: list[POI]  # city POIs first (city order), then corridor POIs
    flights: list[Flight]
    trains: list[Train]
    forecasts: list[WeatherDay]  # per city, today .. today+15
    current: list[CurrentWeather]  # one per city
    ranking_lists: list[RankingList]
    pages: list[WebPage]
    # lookup tables, rebuilt from the lists above; not part of the JSON
    city_by_name: dict = field(default_factory=dict, repr=False, compare=False)
    district_by_name: dict = field(default_factory=dict, repr=False, compare=False)
    pois_by_city: dict = field(default_factory=dict, repr=False, compare=False)
    poi_by_name: dict = field(default_factory=dict, repr=False, compare=False)
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # derived search indexes

    def __post_init__(self):
        self.city_by_name = {c.name.lower(): c for c in self.cities}
        self.district_by_name = {d.name.lower(): d for c in self.cities for d in c.districts}
        self.pois_by_city = {c.name: [] for c in self.cities}
        self.poi_by_name = {}
        for p in self.pois:
            if p.city:
                self.pois_by_city[p.city].append(p)
            self.poi_by_name[(p.city, p.name)] = p

    # ---- window
    def dates(self) -> list[str]:
        """The 16 ISO dates today .. today+15 the tools accept."""
        d0 = date.fromisoformat(self.today)
        return [(d0 + timedelta(days=i)).isoformat() for i in range(WINDOW_DAYS + 1)]

    # ---- lookups
    def city(self, name: str) -> City:
        return self.city_by_name[name.lower()]

    def poi(self, city: str, name: str) -> POI:
        """POI by (city, name); corridor POIs have city ""."""
        return self.poi_by_name[(city, name)]

    def forecast(self, city: str, day: str) -> WeatherDay:
        return next(w for w in self.forecasts if w.city == city and w.date == day)

    # ---- serialisation
    def to_dict(self) -> dict:
        names = ("seed", "today", "now", "cities", "pois", "flights", "trains", "forecasts", "current",
                 "ranking_lists", "pages")
        return {n: _plain(getattr(self, n)) for n in names}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): byte-identical for the same generator args."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def digest(self) -> str:
        """sha256 of `to_json()`: a stable fingerprint of the whole world."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, d: dict) -> "World":
        cities = [City(**{**c, "districts": [District(**x) for x in c["districts"]]}) for c in d["cities"]]
        return cls(seed=d["seed"], today=d["today"], now=d["now"], cities=cities,
                   pois=[POI(**p) for p in d["pois"]], flights=[Flight(**f) for f in d["flights"]],
                   trains=[Train(**t) for t in d["trains"]], forecasts=[WeatherDay(**w) for w in d["forecasts"]],
                   current=[CurrentWeather(**w) for w in d["current"]],
                   ranking_lists=[RankingList(**r) for r in d["ranking_lists"]],
                   pages=[WebPage(**p) for p in d["pages"]])


def _plain(x):
    if dataclasses.is_dataclass(x):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x
