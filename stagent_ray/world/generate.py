"""Seeded generator for the synthetic spatio-temporal world.

`generate_world(seed, ...)` draws everything from one `random.Random(seed)` in a fixed order,
so the same arguments always give a byte-identical `World.to_json()`. `load_world` caches
worlds by arguments (generation takes well under a second).
"""

from __future__ import annotations

import functools
import math
import random
from datetime import date, timedelta

from stagent_ray.world import content
from stagent_ray.world.geo import haversine_km
from stagent_ray.world.model import (POI, City, CurrentWeather, District, Flight, Train, WeatherDay, World,
                                     WINDOW_DAYS)

CITY_NAMES = ["Yunhai", "Lanshan", "Qiaoling", "Baixi", "Donglin", "Hengyuan", "Xiaqiao", "Lumen",
              "Shuiyue", "Anlan", "Pingzhou", "Jinhe", "Moling", "Qingtao", "Songxi", "Tianlu"]
DISTRICT_FIRST = ["Old", "North", "South", "East", "West", "Jade", "Lotus", "Pine", "Willow", "Harbor",
                  "Stone", "Golden", "Silver", "Cedar", "Plum", "Maple", "Bamboo", "Crane", "Pearl", "Cloud"]
DISTRICT_SECOND = ["Gate", "Lake", "Hill", "Bay", "Bridge", "Market", "Garden", "Quarter", "Riverside",
                   "Heights", "Harbor", "Valley", "Square", "Terrace", "Wharf"]
NAME_WORDS = ["Harbor", "Lantern", "Golden", "Willow", "Jade", "Silver", "Maple", "Crimson", "Lotus", "Bamboo",
              "Cedar", "Pearl", "Azure", "Amber", "Orchid", "Plum", "Pine", "River", "Cloud", "Moon", "Sun",
              "Star", "Phoenix", "Dragon", "Crane", "Peony", "Ivy", "Sage", "Coral", "Ember", "Frost", "Meadow",
              "Stone", "Bridge", "Garden", "Lake", "Hill", "Spring", "Autumn", "Harvest", "Copper", "Velvet",
              "Misty", "Lucky", "Happy", "Grand", "Little", "Twin", "Blue", "Green", "Red", "White", "Sunny",
              "Morning", "Evening", "Silk", "Tiger", "Swallow", "Osprey", "Juniper"]
AIRLINES = [("Skylark Airlines", "SK"), ("Eastwind Air", "EW"), ("Jade Airways", "JD"), ("Pacific Crane", "PC")]
CONDITIONS = ["sunny", "partly_cloudy", "cloudy", "overcast", "fog", "light_rain", "moderate_rain",
              "heavy_rain", "thunderstorm", "snow"]
CUISINES = ["sichuan", "cantonese", "seafood", "vegetarian", "western", "hunan", "jiangnan", "japanese", "korean"]

# category -> (share of a city's POIs, name nouns, tag pool)
CATEGORIES = {
    "restaurant": (48, ["Kitchen", "Bistro", "Noodle House", "Dumpling House", "Hotpot", "Grill", "Restaurant",
                        "Canteen", "Eatery", "Dim Sum"],
                   ["kid_friendly", "quiet", "outdoor_seating", "reservations", "vegetarian_options",
                    "private_rooms", "late_night", "wifi", "parking"]),
    "cafe": (28, ["Cafe", "Coffee", "Coffee House", "Roastery", "Tea Room"],
             ["wifi", "quiet", "outdoor_seating", "pet_friendly", "power_outlets", "kid_friendly",
              "specialty_coffee"]),
    "hotel": (26, ["Hotel", "Inn", "Suites", "Hostel", "Grand Hotel"],
              ["breakfast", "pool", "gym", "free_parking", "pet_friendly", "business_center", "airport_shuttle",
               "family_rooms", "quiet", "ev_charging"]),
    "museum": (12, ["Museum", "Art Museum", "History Museum", "Gallery", "Science Museum"],
               ["kid_friendly", "audio_guide", "wheelchair_accessible", "cafe_inside", "photography_allowed"]),
    "park": (14, ["Park", "Gardens", "Wetland Park", "Forest Park"],
             ["kid_friendly", "pet_friendly", "lake", "hiking", "cycling", "picnic", "night_lights"]),
    "charging_station": (22, ["EV Charging", "Charging Hub", "Supercharger"],
                         ["parking", "restroom", "convenience_store", "covered"]),
    "gas_station": (12, ["Gas Station", "Fuel Stop"], ["convenience_store", "car_wash", "restroom"]),
    "supermarket": (16, ["Supermarket", "Fresh Market", "Grocery"],
                    ["parking", "delivery", "organic", "imported_goods"]),
    "pharmacy": (14, ["Pharmacy", "Drugstore"], ["delivery", "medical_insurance"]),
    "hospital": (8, ["Hospital", "Medical Center", "Clinic"],
                 ["emergency", "pediatrics", "international_clinic", "parking"]),
    "cinema": (10, ["Cinema", "Cineplex"], ["imax", "3d", "parking", "couple_seats"]),
    "bar": (16, ["Bar", "Pub", "Tavern", "Brewhouse", "Lounge"],
            ["live_music", "craft_beer", "cocktails", "outdoor_seating", "sports_tv"]),
    "gym": (12, ["Gym", "Fitness", "Fitness Club"], ["pool", "yoga", "personal_training", "sauna"]),
    "library": (8, ["Library", "Public Library", "Reading Room"],
                ["wifi", "quiet", "study_rooms", "kid_friendly", "power_outlets"]),
    "shopping_mall": (10, ["Mall", "Plaza", "Shopping Center"],
                      ["parking", "cinema_inside", "kid_friendly", "food_court", "ev_charging"]),
    "bakery": (14, ["Bakery", "Patisserie", "Bakehouse"], ["takeaway", "wifi", "gluten_free", "cakes", "kid_friendly"]),
    "attraction": (16, ["Pagoda", "Tower", "Old Street", "Temple", "Observation Deck", "Water Town"],
                   ["kid_friendly", "night_view", "photography", "guided_tours", "historic"]),
    "parking_lot": (14, ["Parking", "Car Park"], ["ev_charging", "covered", "valet"]),
    "bookstore": (10, ["Bookstore", "Books", "Book House"], ["quiet", "cafe_inside", "kid_friendly", "wifi"]),
}
# placed explicitly per city (not drawn by share): the airport and railway stations
TRANSPORT_CATEGORIES = ("airport", "train_station")
ALL_CATEGORIES = tuple(CATEGORIES) + TRANSPORT_CATEGORIES

# (low, high) avg_price ranges in CNY and the chance a POI of the category is free (0)
PRICE_RANGES = {
    "restaurant": ((20, 60), (60, 150), (150, 450)), "cafe": ((18, 60),), "hotel": ((150, 450), (450, 1600)),
    "museum": ((20, 120),), "park": ((10, 60),), "charging_station": ((25, 90),), "cinema": ((35, 90),),
    "bar": ((50, 200),), "gym": ((30, 120),), "bakery": ((12, 45),), "attraction": ((20, 200),),
    "parking_lot": ((5, 20),),
}
FREE_SHARE = {"museum": 0.6, "park": 0.85, "attraction": 0.3}


def _offset(lat: float, lng: float, km: float, angle: float) -> tuple[float, float]:
    """The point `km` away from (lat, lng) in direction `angle` (radians, 0 = east), rounded to 5 dp."""
    dlat = km * math.sin(angle) / 111.195
    dlng = km * math.cos(angle) / (111.195 * math.cos(math.radians(lat)))
    return round(lat + dlat, 5), round(lng + dlng, 5)


# ---------------------------------------------------------------- cities, districts

def _place_cities(rng: random.Random, n: int) -> list[tuple[str, float, float]]:
    if n > len(CITY_NAMES):
        raise ValueError(f"n_cities must be <= {len(CITY_NAMES)}")
    names = rng.sample(CITY_NAMES, n)
    placed: list[tuple[str, float, float]] = []
    for name in names:
        for _ in range(10_000):
            lat, lng = round(rng.uniform(26.0, 33.0), 5), round(rng.uniform(110.0, 120.0), 5)
            if all(haversine_km((lat, lng), (p[1], p[2])) >= 150 for p in placed):
                break
        placed.append((name, lat, lng))
    return placed


def _make_districts(rng: random.Random, city: str, lat: float, lng: float, used: set) -> list[District]:
    n = rng.randint(4, 8)
    names = []
    while len(names) < n:
        name = f"{rng.choice(DISTRICT_FIRST)} {rng.choice(DISTRICT_SECOND)}"
        if name not in used and name.split()[0] != name.split()[1]:
            used.add(name)
            names.append(name)
    districts = [District(names[0], city, lat, lng)]  # the first district is the city centre
    for i, name in enumerate(names[1:]):
        angle = 2 * math.pi * i / (n - 1) + rng.uniform(-0.3, 0.3)
        dlat, dlng = _offset(lat, lng, rng.uniform(2.5, 8.0), angle)
        districts.append(District(name, city, dlat, dlng))
    return districts


# ---------------------------------------------------------------- POIs

def _hours(rng: random.Random, category: str) -> list:
    """7 weekday interval lists for a POI of `category` (see geo.is_open for the convention)."""
    def fmt(minute: int) -> str:
        return f"{minute // 60:02d}:{minute % 60:02d}"

    def daily(*intervals):
        return [[[fmt(o), fmt(c)] for o, c in intervals] for _ in range(7)]

    def shift() -> int:
        return rng.choice((-60, -30, 0, 0, 30, 60))

    always = daily((0, 1440))
    closed_day = None
    if category in ("hotel", "hospital", "airport"):
        return always
    if category in ("charging_station", "gas_station", "parking_lot", "park", "pharmacy", "gym", "bookstore"):
        share_24h = {"charging_station": 0.85, "gas_station": 0.6, "parking_lot": 0.7, "park": 0.3,
                     "pharmacy": 0.2, "gym": 0.2, "bookstore": 0.1}[category]
        if rng.random() < share_24h:
            return always
    if category == "bar":
        days = [[] for _ in range(7)]
        opens, closes = 18 * 60 + shift(), rng.choice((60, 120, 180))
        closed_day = 0 if rng.random() < 0.3 else None
        for d in range(7):
            if d != closed_day:
                days[d].append([fmt(opens), "24:00"])
                days[(d + 1) % 7].insert(0, ["00:00", fmt(closes)])
        return days
    if category == "restaurant":
        if rng.random() < 0.5:
            days = daily((630 + shift(), 840), (1020, 1320 + shift()))
        else:
            days = daily((600 + shift(), 1320 + shift()))
        closed_day = rng.randrange(7) if rng.random() < 0.2 else None
    elif category in ("museum", "library"):
        days = daily((540 + shift(), 1020 if category == "museum" else 1260))
        closed_day = 0 if rng.random() < (0.8 if category == "museum" else 0.6) else None
    else:
        base = {"cafe": (450, 1260), "cinema": (600, 1440), "gym": (360, 1380), "supermarket": (480, 1320),
                "pharmacy": (480, 1320), "shopping_mall": (600, 1320), "bakery": (420, 1200),
                "attraction": (510, 1050), "bookstore": (570, 1290), "train_station": (330, 1440),
                "charging_station": (360, 1380), "gas_station": (360, 1380), "parking_lot": (360, 1380),
                "park": (360, 1320)}[category]
        close = min(1440, base[1] + shift())
        if category == "attraction" and rng.random() < 0.25:
            close = 1320  # evening attractions
        days = daily((base[0] + shift(), close))
        if category in ("cafe", "bakery") and rng.random() < 0.15:
            closed_day = rng.randrange(7)
    if closed_day is not None:
        days[closed_day] = []
    return days


def _make_poi(rng, poi_id, name, city, district, category, lat, lng) -> POI:
    rating = round(min(5.0, max(2.0, rng.gauss(4.1, 0.45))), 1)
    popularity = int(10 ** rng.uniform(1.0, 4.3))
    price = 0
    if category in PRICE_RANGES and rng.random() >= FREE_SHARE.get(category, 0.0):
        low, high = rng.choice(PRICE_RANGES[category])
        price = rng.randint(low, high)
    hours = _hours(rng, category)
    pool = CATEGORIES[category][2] if category in CATEGORIES else []
    tags = sorted(rng.sample(pool, rng.randint(1, min(3, len(pool))))) if pool else []
    if category == "restaurant":
        tags.append(rng.choice(CUISINES))
    if category == "charging_station":
        tags.append("fast_charging" if rng.random() < 0.7 else "slow_charging")
    if category in ("museum", "park", "attraction") and price == 0:
        tags.append("free_entry")
    if all(day == [["00:00", "24:00"]] for day in hours):
        tags.append("24h")
    return POI(poi_id, name, city, district, category, lat, lng, rating, price, popularity, hours, sorted(set(tags)))


def _unique_name(rng, nouns: list[str], used: set) -> str:
    while True:
        if rng.random() < 0.5:
            name = f"{rng.choice(NAME_WORDS)} {rng.choice(nouns)}"
        else:
            w1, w2 = rng.sample(NAME_WORDS, 2)
            name = f"{w1} {w2} {rng.choice(nouns)}"
        if name not in used:
            used.add(name)
            return name


def _category_counts(pois_per_city: int) -> dict[str, int]:
    total = sum(share for share, _, _ in CATEGORIES.values())
    counts = {c: max(1, pois_per_city * share // total) for c, (share, _, _) in CATEGORIES.items()}
    counts["restaurant"] += max(0, pois_per_city - sum(counts.values()))
    return counts


def _make_city_pois(rng, city: str, districts: list[District], pois_per_city: int) -> tuple[list[POI], str, list[str]]:
    slug = city.lower()
    pois: list[POI] = []
    used: set = set()
    weights = [2.0] + [1.0] * (len(districts) - 1)  # the centre district is denser
    for category, count in _category_counts(pois_per_city).items():
        nouns = CATEGORIES[category][1]
        for _ in range(count):
            d = rng.choices(districts, weights)[0]
            lat, lng = _offset(d.lat, d.lng, abs(rng.gauss(0.0, 1.3)), rng.uniform(0, 2 * math.pi))
            pois.append(_make_poi(rng, f"{slug}-{len(pois) + 1:04d}", _unique_name(rng, nouns, used), city,
                                  d.name, category, lat, lng))
    # transport hubs: one airport 15-30 km out, one or two railway stations in town
    c = districts[0]
    lat, lng = _offset(c.lat, c.lng, rng.uniform(15, 30), rng.uniform(0, 2 * math.pi))
    nearest = min(districts, key=lambda d: haversine_km((lat, lng), (d.lat, d.lng)))
    airport = f"{city} {rng.choice(NAME_WORDS)} International Airport"
    pois.append(_make_poi(rng, f"{slug}-{len(pois) + 1:04d}", airport, city, nearest.name, "airport", lat, lng))
    stations = [f"{city} Railway Station"] + ([f"{city} South Railway Station"] if rng.random() < 0.6 else [])
    for name in stations:
        d = rng.choice(districts)
        lat, lng = _offset(d.lat, d.lng, rng.uniform(0.3, 2.0), rng.uniform(0, 2 * math.pi))
        pois.append(_make_poi(rng, f"{slug}-{len(pois) + 1:04d}", name, city, d.name, "train_station", lat, lng))
    return pois, airport, stations


def _make_corridor_pois(rng, cities: list[City]) -> list[POI]:
    """Expressway service areas (EV charging + fuel) every ~45 km between cities < 700 km apart."""
    pois: list[POI] = []
    used: set = set()
    for i, a in enumerate(cities):
        for b in cities[i + 1:]:
            dist = haversine_km((a.lat, a.lng), (b.lat, b.lng))
            if dist > 700:
                continue
            road = f"{a.name}-{b.name} Expressway"
            along = 20.0 + rng.uniform(0, 20)
            bearing = math.atan2(b.lat - a.lat, (b.lng - a.lng) * math.cos(math.radians(a.lat)))
            while along < dist - 20:
                lat, lng = _offset(a.lat, a.lng, along, bearing)
                lat, lng = _offset(lat, lng, rng.uniform(0.1, 0.8), bearing + math.pi / 2 * rng.choice((-1, 1)))
                word = _unique_name(rng, ["Service Area"], used)
                for category, suffix in (("charging_station", "EV Charging"), ("gas_station", "Fuel")):
                    p = _make_poi(rng, f"hwy-{len(pois) + 1:04d}", f"{word} {suffix}", "", road, category, lat, lng)
                    p.hours = [[["00:00", "24:00"]] for _ in range(7)]
                    extra = {"24h", "restroom"} | ({"fast_charging"} if category == "charging_station" else set())
                    p.tags = sorted((set(p.tags) | extra) - {"slow_charging"})
                    pois.append(p)
                along += rng.uniform(35, 55)
    return pois


# ---------------------------------------------------------------- flights and trains

def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _make_flights(rng, cities: list[City], dates: list[str]) -> list[Flight]:
    flights: list[Flight] = []
    used_numbers: set = set()
    for a in cities:
        for b in cities:
            dist = haversine_km((a.lat, a.lng), (b.lat, b.lng))
            if a is b or dist < 250:
                continue
            for _ in range(rng.randint(3, 6)):
                airline, code = rng.choice(AIRLINES)
                while True:
                    number = f"{code}{rng.randint(1000, 9999)}"
                    if number not in used_numbers:
                        used_numbers.add(number)
                        break
                depart = rng.randrange(6 * 12, 21 * 12) * 5  # 06:00-20:55 on the 5-minute grid
                duration = round((35 + dist / 780 * 60 + rng.uniform(0, 15)) / 5) * 5
                weekdays = set(range(7)) if rng.random() < 0.8 else set(rng.sample(range(7), 5))
                base = (250 + 0.55 * dist) * rng.uniform(0.8, 1.3)
                for day in dates:
                    d = date.fromisoformat(day)
                    if d.weekday() not in weekdays:
                        continue
                    weekend = 1.15 if d.weekday() >= 4 else 1.0
                    last_minute = 1.2 if (d - date.fromisoformat(dates[0])).days < 3 else 1.0
                    mult = weekend * last_minute
                    price = int(round(base * mult * rng.uniform(0.85, 1.25), -1))
                    flights.append(Flight(number, airline, a.name, b.name, day, _hhmm(depart), _hhmm(depart + duration),
                                          duration, price, a.airport, b.airport))
    flights.sort(key=lambda f: (f.date, f.origin, f.destination, f.depart, f.number))
    return flights


def _make_trains(rng, cities: list[City], dates: list[str]) -> list[Train]:
    trains: list[Train] = []
    used_numbers: set = set()
    for a in cities:
        for b in cities:
            dist = haversine_km((a.lat, a.lng), (b.lat, b.lng))
            if a is b or dist > 1300:
                continue
            rail_km = dist * 1.15
            for kind in ["G"] * rng.randint(6, 12) + ["D"] * rng.randint(2, 4):
                speed, fare = (260, 0.46) if kind == "G" else (180, 0.31)
                duration = int(20 + rail_km / speed * 60 + rng.randint(0, 6) * 5)
                latest = 23 * 60 + 50 - duration
                if latest < 6 * 60:
                    continue
                depart = rng.randrange(6 * 12, latest // 5 + 1) * 5
                while True:
                    number = f"{kind}{rng.randint(1, 9999)}"
                    if number not in used_numbers:
                        used_numbers.add(number)
                        break
                second = int(round(fare * rail_km))
                src, dst = rng.choice(a.stations), rng.choice(b.stations)
                for day in dates:
                    trains.append(Train(number, a.name, b.name, day, _hhmm(depart), _hhmm(depart + duration), duration,
                                        second, int(round(second * 1.6)), src, dst))
    trains.sort(key=lambda t: (t.date, t.origin, t.destination, t.depart, t.number))
    return trains


# ---------------------------------------------------------------- weather

def _aqi_level(aqi: int) -> str:
    return "good" if aqi <= 50 else "moderate" if aqi <= 100 else "unhealthy_sensitive" if aqi <= 150 else "unhealthy"


def _make_weather(rng, cities: list[City], dates: list[str]) -> tuple[list[WeatherDay], list[CurrentWeather]]:
    forecasts, current = [], []
    month = date.fromisoformat(dates[0]).month
    season_mean = 17 - 12 * math.cos(2 * math.pi * (month - 1) / 12)  # ~5 C in January, ~29 C in July
    persist = ["sunny", "partly_cloudy", "cloudy", "overcast", "fog", "light_rain", "moderate_rain", "heavy_rain",
               "thunderstorm"]
    weights = [22, 20, 16, 10, 3, 12, 8, 4, 5]
    for city in cities:
        condition = rng.choices(persist, weights)[0]
        for day in dates:
            if rng.random() > 0.55:  # weather persists about half the time
                condition = rng.choices(persist, weights)[0]
            wet = condition in ("light_rain", "moderate_rain", "heavy_rain", "thunderstorm")
            high = round(season_mean + 2 - (city.lat - 30) * 0.7 + rng.uniform(-3, 3) - (3 if wet else 0))
            low = high - rng.randint(5, 10)
            shown = "snow" if wet and high <= 2 else condition
            precip = {"sunny": (0, 10), "partly_cloudy": (5, 20), "cloudy": (10, 30), "overcast": (20, 40),
                      "fog": (10, 30), "light_rain": (50, 70), "moderate_rain": (65, 85), "heavy_rain": (80, 95),
                      "thunderstorm": (60, 90)}[condition]
            aqi = rng.randint(20, 90 if wet else 180)
            forecasts.append(WeatherDay(city.name, day, shown, high, low, rng.randint(*precip), aqi,
                                        rng.randint(3, 35), rng.randint(70, 95) if wet else rng.randint(35, 75)))
        today = forecasts[-len(dates)]
        temp = round(today.low_c + (today.high_c - today.low_c) * 0.35)
        feels = temp + (2 if today.humidity > 70 and temp > 25 else 0) - (2 if today.wind_kph > 25 else 0)
        current.append(CurrentWeather(city.name, "", today.condition, temp, feels, today.humidity, today.wind_kph,
                                      today.aqi, _aqi_level(today.aqi)))
    return forecasts, current


# ---------------------------------------------------------------- the world

def generate_world(seed: int = 0, n_cities: int = 4, pois_per_city: int = 320, today: str = "2026-06-01") -> World:
    """Build the whole world from `random.Random(seed)`; same arguments -> identical `to_json()`."""
    rng = random.Random(seed)
    d0 = date.fromisoformat(today)
    dates = [(d0 + timedelta(days=i)).isoformat() for i in range(WINDOW_DAYS + 1)]
    now = f"{today}T08:00"
    cities: list[City] = []
    pois: list[POI] = []
    used_districts: set = set()
    for name, lat, lng in _place_cities(rng, n_cities):
        districts = _make_districts(rng, name, lat, lng, used_districts)
        city_pois, airport, stations = _make_city_pois(rng, name, districts, pois_per_city)
        cities.append(City(name, lat, lng, districts, airport, stations))
        pois.extend(city_pois)
    pois.extend(_make_corridor_pois(rng, cities))
    flights = _make_flights(rng, cities, dates)
    trains = _make_trains(rng, cities, dates)
    forecasts, current = _make_weather(rng, cities, dates)
    for w in current:
        w.observed_at = now
    world = World(seed, today, now, cities, pois, flights, trains, forecasts, current, [], [])
    world.ranking_lists = content.make_ranking_lists(rng, world)
    world.pages = content.make_pages(rng, world)
    return world


@functools.lru_cache(maxsize=8)
def load_world(seed: int = 0, n_cities: int = 4, pois_per_city: int = 320, today: str = "2026-06-01") -> World:
    """Cached `generate_world`: treat the returned World as read-only."""
    return generate_world(seed, n_cities, pois_per_city, today)
