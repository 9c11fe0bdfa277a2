"""The world queries behind the tools, as plain functions over a World.

The tools in `tools.py` only validate, call these, and format. Ground truth should call these
same functions (or reproduce their documented rules) so answers match the tools exactly.
All orderings end with a `poi_id` / `page_id` / `list_id` tie-break, so results are total orders.
Bad semantic input raises `ToolError(type, message)`.
"""

from __future__ import annotations

import difflib
import math
import re
from datetime import date, timedelta

from stagent_ray.world.geo import DETOUR, haversine_km, is_open, project_on_segment

CATEGORY_SYNONYMS = {
    "restaurant": ["restaurant", "food", "dining", "eat", "eatery", "dinner", "lunch"],
    "cafe": ["cafe", "coffee", "coffee shop", "café", "tea"],
    "hotel": ["hotel", "accommodation", "stay", "lodging", "inn", "hostel"],
    "museum": ["museum", "gallery"],
    "park": ["park", "garden"],
    "charging_station": ["charging station", "charging", "ev charging", "charger", "ev charger", "charging pile"],
    "gas_station": ["gas station", "gas", "fuel", "petrol", "filling station"],
    "supermarket": ["supermarket", "grocery", "groceries"],
    "pharmacy": ["pharmacy", "drugstore", "chemist"],
    "hospital": ["hospital", "clinic", "medical center"],
    "cinema": ["cinema", "movie", "film", "movie theater"],
    "bar": ["bar", "pub", "nightlife", "drinks"],
    "gym": ["gym", "fitness"],
    "library": ["library"],
    "shopping_mall": ["shopping mall", "mall", "shopping", "shopping center"],
    "bakery": ["bakery", "bread", "cake", "pastry"],
    "attraction": ["attraction", "sightseeing", "landmark", "tourist attraction", "scenic spot"],
    "parking_lot": ["parking lot", "car park"],
    "bookstore": ["bookstore", "bookshop", "book store"],
    "airport": ["airport"],
    "train_station": ["train station", "railway station", "railway"],
}
STOPWORDS = {"a", "an", "the", "in", "near", "nearby", "around", "with", "and", "or", "of", "for", "to", "at", "me",
             "my", "best", "good", "top", "some", "place", "places", "find", "any", "is", "are", "on", "what", "how"}
SORT_BY = ("weight", "distance", "rating:d", "price:a", "price:d")
CENTRAL_SORT_BY = ("balanced", "min_max_distance", "total_distance")


class ToolError(Exception):
    """A semantic problem with a tool call; becomes {"error": {"type", "message"}}."""

    def __init__(self, type: str, message: str):
        super().__init__(message)
        self.type = type
        self.message = message


# ---------------------------------------------------------------- text matching

def _stem(token: str) -> str:
    if len(token) > 3 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


def tokenize(text: str) -> list[str]:
    """Lower-case words (split on anything not a letter/digit, "_" included), plural 's' stripped."""
    return [_stem(t) for t in re.split(r"[^0-9a-zà-ÿ]+", text.lower()) if t]


_PHRASES = sorted(((tuple(tokenize(s)), cat) for cat, syns in CATEGORY_SYNONYMS.items()
                   for s in syns + [cat.replace("_", " ")]), key=lambda x: (-len(x[0]), x[0], x[1]))


def parse_query(query: str) -> tuple[list[str], dict[str, set[str]]]:
    """Split a search query into its content tokens and the categories it names.

    Returns (tokens, {category: tokens of the phrase that named it}). Stopwords are dropped.
    """
    tokens = [t for t in tokenize(query) if t not in STOPWORDS]
    found: dict[str, set[str]] = {}
    for phrase, cat in _PHRASES:
        n = len(phrase)
        if any(tuple(tokens[i:i + n]) == phrase for i in range(len(tokens) - n + 1)):
            found.setdefault(cat, set()).update(phrase)
    return tokens, found


def poi_vocabulary(poi) -> set[str]:
    """Words a POI answers to: its name, tags, category and the category's synonyms."""
    words = set(tokenize(poi.name)) | set(tokenize(" ".join(poi.tags))) | set(tokenize(poi.category))
    for syn in CATEGORY_SYNONYMS.get(poi.category, []):
        words |= set(tokenize(syn))
    return words


def query_matcher(world, query: str):
    """The keyword/category rule every POI search uses, as a predicate poi -> bool.

    A POI matches when all query words are words of its name ("Harbor Garden Kitchen"), or:
    if the query names categories ("quiet cafe" names cafe), the POI is of one of them and every
    other query word is in its vocabulary (name, tags, category words), so "hotel ev charging"
    finds hotels tagged ev_charging; if the query names no category, every query word is in the
    vocabulary ("fast_charging"-tagged POIs for "fast"). An all-stopword query matches every POI.
    """
    tokens, cats = parse_query(query)
    vocab = world.cache.setdefault("vocab", {})

    def match(poi) -> bool:
        entry = vocab.get(poi.poi_id)
        if entry is None:
            entry = vocab[poi.poi_id] = (poi_vocabulary(poi), set(tokenize(poi.name)))
        words, name_words = entry
        if all(t in name_words for t in tokens):
            return True
        if cats:
            if poi.category not in cats:
                return False
            return all(t in words for t in tokens if t not in cats[poi.category])
        return all(t in words for t in tokens)

    return match


def matches_query(world, poi, query: str) -> bool:
    """Whether one POI matches a search query (see query_matcher)."""
    return query_matcher(world, query)(poi)


# ---------------------------------------------------------------- places

def resolve_region(world, name: str):
    """City or district name (case-insensitive) -> (City, District or None). Raises ToolError."""
    key = " ".join(str(name).split()).lower()
    if key in world.city_by_name:
        return world.city_by_name[key], None
    if key in world.district_by_name:
        d = world.district_by_name[key]
        return world.city_by_name[d.city.lower()], d
    known = [c.name for c in world.cities] + [d.name for c in world.cities for d in c.districts]
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ToolError("unknown_location", f"unknown city or district {name!r}; {hint}known: " + ", ".join(known))


def resolve_city(world, name: str):
    """City name, or a district name standing for its city -> City. Raises ToolError."""
    return resolve_region(world, name)[0]


def weight_score(poi) -> float:
    """Default relevance ("weight" sort): rating x log10(reviews + 10), higher first."""
    return poi.rating * math.log10(poi.popularity + 10)


def _price_rating_ok(poi, min_rating, price_min, price_max) -> bool:
    return ((min_rating is None or poi.rating >= min_rating)
            and (price_min is None or poi.avg_price >= price_min)
            and (price_max is None or poi.avg_price <= price_max))


def search_places(world, query: str, center=None, radius_m: float = 5000, region: str | None = None,
                  sort_by: str = "weight", min_rating=None, price_min=None, price_max=None, open_at=None,
                  limit: int = 10) -> tuple[list[tuple], int]:
    """map_search_places. Returns ([(poi, distance_m), ...] best first, total matches before limit).

    Scope: `region` (city/district name) keeps that city's/district's POIs; `center` (lat, lng)
    keeps POIs within `radius_m` of it (corridor POIs included); both may be given; at least one
    is required. distance_m is from `center`, else from the region's centre (district/city centre).
    Sorts: weight = weight_score desc; distance asc; rating:d = rating desc, reviews desc;
    price:a / price:d = avg_price asc/desc, then rating desc. Ties by poi_id.
    Filters: rating >= min_rating, price_min <= avg_price <= price_max, is_open(poi, open_at).
    """
    if center is None and region is None:
        raise ToolError("missing_argument", "map_search_places needs 'center' (with 'radius') or 'region'")
    if region is not None:
        city, district = resolve_region(world, region)
        pool = [p for p in world.pois_by_city[city.name] if district is None or p.district == district.name]
        ref = center or ((district.lat, district.lng) if district else (city.lat, city.lng))
    else:
        pool, ref = world.pois, center
    match = query_matcher(world, query)
    hits = []
    for p in pool:
        d_m = haversine_km(ref, p.latlng) * 1000
        if center is not None and d_m > radius_m:
            continue
        if not _price_rating_ok(p, min_rating, price_min, price_max):
            continue
        if open_at is not None and not is_open(p, open_at):
            continue
        if match(p):
            hits.append((p, d_m))
    keys = {
        "weight": lambda h: (-weight_score(h[0]), h[0].poi_id),
        "distance": lambda h: (h[1], h[0].poi_id),
        "rating:d": lambda h: (-h[0].rating, -h[0].popularity, h[0].poi_id),
        "price:a": lambda h: (h[0].avg_price, -h[0].rating, h[0].poi_id),
        "price:d": lambda h: (-h[0].avg_price, -h[0].rating, h[0].poi_id),
    }
    hits.sort(key=keys[sort_by])
    return hits[:limit], len(hits)


def search_along_route(world, query: str, origin, destination, transport_mode: str = "driving",
                       buffer_m: float | None = None, limit: int = 10) -> tuple[list[tuple], int]:
    """map_search_along_route. Returns ([(poi, along_km, offset_m), ...], total).

    The route is the straight segment origin->destination. A POI qualifies when its
    perpendicular distance to the segment (offset) is <= buffer_m (default 2000 m driving,
    500 m walking). along_km = distance from origin to the POI's projection x DETOUR[mode]
    (the route distance you would have driven/walked). Sorted by along_km, then poi_id.
    """
    if buffer_m is None:
        buffer_m = 2000 if transport_mode == "driving" else 500
    match = query_matcher(world, query)
    hits = []
    for p in world.pois:
        along, offset = project_on_segment(p.latlng, origin, destination)
        if offset * 1000 <= buffer_m and match(p):
            hits.append((p, along * DETOUR[transport_mode], offset * 1000))
    hits.sort(key=lambda h: (h[1], h[0].poi_id))
    return hits[:limit], len(hits)


def central_score(distances_km: list[float], sort_by: str) -> float:
    """Meeting-point score, lower is better.

    balanced = mean + population std of the origins' straight-line distances (close AND fair);
    min_max_distance = the farthest origin's distance; total_distance = the sum.
    """
    if sort_by == "min_max_distance":
        return max(distances_km)
    if sort_by == "total_distance":
        return sum(distances_km)
    mean = sum(distances_km) / len(distances_km)
    return mean + math.sqrt(sum((d - mean) ** 2 for d in distances_km) / len(distances_km))


def search_central_places(world, query: str, origins: list, radius_m: float = 10000, sort_by: str = "balanced",
                          min_rating=None, price_min=None, price_max=None, limit: int = 10) -> tuple[list[tuple], int]:
    """map_search_central_places. Returns ([(poi, [km per origin], score), ...], total).

    Candidates lie within radius_m of the origins' centroid (mean lat, mean lng); distances are
    straight-line km; sorted by central_score(sort_by) ascending, then poi_id.
    """
    centroid = (sum(o[0] for o in origins) / len(origins), sum(o[1] for o in origins) / len(origins))
    match = query_matcher(world, query)
    hits = []
    for p in world.pois:
        if haversine_km(centroid, p.latlng) * 1000 > radius_m:
            continue
        if not _price_rating_ok(p, min_rating, price_min, price_max) or not match(p):
            continue
        dists = [haversine_km(o, p.latlng) for o in origins]
        hits.append((p, dists, central_score(dists, sort_by)))
    hits.sort(key=lambda h: (h[2], h[0].poi_id))
    return hits[:limit], len(hits)


def search_ranking_lists(world, query: str, region: str, max_lists: int = 5, max_items: int = 3) -> list[tuple]:
    """map_search_ranking_list. Returns [(RankingList, [item names]), ...].

    A list's words are its title and keywords minus the city's name and stopwords; lists sharing
    no word with the query are dropped; the rest are sorted by shared-word count desc, then
    list_id. For a district region, items are restricted to POIs in that district (order kept)
    and lists left empty are dropped.
    """
    city, district = resolve_region(world, region)
    q = set(parse_query(query)[0])
    drop = set(tokenize(city.name)) | STOPWORDS
    scored = []
    for rl in world.ranking_lists:
        if rl.city != city.name:
            continue
        words = (set(tokenize(rl.title)) | set(tokenize(" ".join(rl.keywords)))) - drop
        overlap = len(q & words)
        if overlap == 0:
            continue
        items = rl.items
        if district is not None:
            items = [n for n in items if world.poi(city.name, n).district == district.name]
            if not items:
                continue
        scored.append((-overlap, rl.list_id, rl, items[:max_items]))
    scored.sort(key=lambda s: (s[0], s[1]))
    return [(rl, items) for _, _, rl, items in scored[:max_lists]]


# ---------------------------------------------------------------- travel, weather, web

def window_dates(world, start: str, days: int) -> list[str]:
    """ISO dates start .. start+days, cut at the end of the tool window (today+15)."""
    window = world.dates()
    d0 = date.fromisoformat(start)
    wanted = [(d0 + timedelta(days=i)).isoformat() for i in range(days + 1)]
    return [d for d in wanted if d in window]


def search_flights(world, origin: str, destination: str, day: str, days: int = 0) -> list:
    """Flights origin city -> destination city on day .. day+days (within the window), by date, depart."""
    o, d = resolve_city(world, origin), resolve_city(world, destination)
    if o is d:
        raise ToolError("invalid_value", f"origin and destination are both {o.name}")
    wanted = set(window_dates(world, day, days))
    return [f for f in world.flights if f.origin == o.name and f.destination == d.name and f.date in wanted]


def search_trains(world, origin: str, destination: str, day: str, days: int = 0) -> list:
    """Trains origin city -> destination city on day .. day+days (within the window), by date, depart."""
    o, d = resolve_city(world, origin), resolve_city(world, destination)
    if o is d:
        raise ToolError("invalid_value", f"origin and destination are both {o.name}")
    wanted = set(window_dates(world, day, days))
    return [t for t in world.trains if t.origin == o.name and t.destination == d.name and t.date in wanted]


def forecast_days(world, location: str, day: str, days: int = 3) -> list:
    """WeatherDay rows for the location's city: `days` days starting at `day`, cut at the window end."""
    city = resolve_city(world, location)
    wanted = window_dates(world, day, days - 1)
    return [world.forecast(city.name, d) for d in wanted]


def web_search(world, query: str, limit: int = 5) -> list[tuple]:
    """Top pages by IDF-weighted word overlap. Returns [(page, score), ...].

    score = sum over distinct query words found in the page (title or text) of idf(word)
    + 0.5 x the same sum over words found in the title; idf = ln(1 + N / df).
    Pages scoring 0 are dropped; ties by page_id.
    """
    index = world.cache.get("pages")
    if index is None:
        docs = [(p, set(tokenize(p.title)), set(tokenize(p.title + " " + p.text))) for p in world.pages]
        df: dict[str, int] = {}
        for _, _, words in docs:
            for w in words:
                df[w] = df.get(w, 0) + 1
        index = world.cache["pages"] = (docs, {w: math.log(1 + len(docs) / n) for w, n in df.items()})
    docs, idf = index
    q = set(tokenize(query)) - STOPWORDS
    scored = []
    for page, title_words, words in docs:
        # sorted: float sums must not depend on set order (PYTHONHASHSEED)
        score = sum(idf[w] for w in sorted(q & words)) + 0.5 * sum(idf[w] for w in sorted(q & title_words))
        if score > 0:
            scored.append((page, score))
    scored.sort(key=lambda s: (-s[1], s[0].page_id))
    return scored[:limit]
