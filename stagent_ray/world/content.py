"""Curated ranking lists and the small web-page corpus, generated from the world's own facts.

Every number a page states (prices, hours, dates, distances) is read from the World, so a
fact found by web_search never contradicts the map tools.
"""

from __future__ import annotations

import math
from datetime import date

from stagent_ray.world.geo import haversine_km, hours_text
from stagent_ray.world.model import RankingList, WebPage

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

# (title template, keywords, POI filter)
CITY_LISTS = [
    ("Must-Eat Restaurants in {place}", ["must", "eat", "food", "restaurant", "dining"],
     lambda p: p.category == "restaurant"),
    ("Best Coffee in {place}", ["coffee", "cafe"], lambda p: p.category == "cafe"),
    ("Top Museums in {place}", ["museum", "culture", "art", "history"], lambda p: p.category == "museum"),
    ("Best Parks in {place}", ["park", "outdoor", "nature", "green"], lambda p: p.category == "park"),
    ("Top Attractions in {place}", ["attraction", "sightseeing", "tourist", "landmark", "visit"],
     lambda p: p.category == "attraction"),
    ("Best Bars in {place}", ["bar", "nightlife", "drink", "pub"], lambda p: p.category == "bar"),
    ("Best Bakeries in {place}", ["bakery", "bread", "cake", "dessert", "pastry"], lambda p: p.category == "bakery"),
    ("Top Hotels in {place}", ["hotel", "stay", "accommodation"], lambda p: p.category == "hotel"),
    ("Budget Eats in {place}", ["budget", "cheap", "food", "eat", "restaurant"],
     lambda p: p.category == "restaurant" and p.avg_price <= 60),
    ("Family Favourites in {place}", ["family", "kid", "children"], lambda p: "kid_friendly" in p.tags),
]
DISTRICT_LIST = ("Must-Eat in {place}", ["must", "eat", "food", "restaurant", "local"],
                 lambda p: p.category == "restaurant")


def _curated_order(rng, pois):
    """Editors' order: mostly rating and popularity, with a little taste noise."""
    scored = [(p.rating + 0.1 * math.log10(p.popularity + 1) + rng.uniform(-0.3, 0.3), p.poi_id, p) for p in pois]
    scored.sort(key=lambda s: (-s[0], s[1]))
    return [p.name for _, _, p in scored]


def make_ranking_lists(rng, world) -> list[RankingList]:
    lists: list[RankingList] = []
    for city in world.cities:
        pois = world.pois_by_city[city.name]
        for title, keywords, keep in CITY_LISTS:
            chosen = [p for p in pois if keep(p)]
            if len(chosen) >= 3:
                lists.append(RankingList(f"rl-{len(lists) + 1:04d}", city.name, title.format(place=city.name),
                                         keywords, _curated_order(rng, chosen)[:20]))
        title, keywords, keep = DISTRICT_LIST
        for d in city.districts:
            chosen = [p for p in pois if p.district == d.name and keep(p)]
            if len(chosen) >= 3:
                lists.append(RankingList(f"rl-{len(lists) + 1:04d}", city.name, title.format(place=d.name),
                                         keywords, _curated_order(rng, chosen)[:10]))
    return lists


def _slug(text: str) -> str:
    return "-".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())


def _weekly_hours(poi) -> str:
    """"Monday-Sunday 09:00-17:00" style text; groups equal consecutive days."""
    parts, start = [], 0
    for d in range(1, 8):
        if d == 7 or poi.hours[d] != poi.hours[start]:
            span = WEEKDAYS[start] if d - 1 == start else f"{WEEKDAYS[start]}-{WEEKDAYS[d - 1]}"
            parts.append(f"{span} {hours_text(poi.hours[start])}")
            start = d
    return "; ".join(parts)


def make_pages(rng, world) -> list[WebPage]:
    pages: list[WebPage] = []

    def add(city, kind, title, domain, text):
        pages.append(WebPage(f"pg-{len(pages) + 1:04d}", city, kind, title,
                             f"https://{domain}/{_slug(city or 'travel')}/{_slug(title)}", text))

    dates = world.dates()
    for city in world.cities:
        pois = world.pois_by_city[city.name]
        by_cat = lambda cat: [p for p in pois if p.category == cat]  # noqa: E731
        for p in (by_cat("museum") + by_cat("attraction"))[:16]:
            if p.avg_price == 0:
                text = (f"Admission to {p.name} ({p.district}, {city.name}) is free, but visitors must reserve a "
                        f"time slot online up to 7 days ahead. Bring a photo ID. Last entry 1 hour before closing.")
            else:
                text = (f"Adult tickets for {p.name} ({p.district}, {city.name}) cost {p.avg_price} CNY. Children "
                        f"under 1.2 m and visitors over 65 enter free. Tickets are sold online up to 7 days ahead; "
                        f"same-day sales stop 1 hour before closing. Refunds are free until the day before the visit.")
            add(city.name, "ticket_rules", f"{p.name} ticket rules", "tickets.example.org", text)
        order = ("museum", "library", "attraction", "park", "restaurant", "cafe", "bakery", "bar")
        with_closed_day = [p for p in pois if p.category in order and any(not day for day in p.hours)]
        with_closed_day.sort(key=lambda p: (order.index(p.category), p.poi_id))
        for p in with_closed_day[:16]:
            closed = [WEEKDAYS[d] for d in range(7) if not p.hours[d]]
            add(city.name, "opening_policy", f"{p.name} opening hours", "travel.example.com",
                f"{p.name} in {p.district}, {city.name}: {_weekly_hours(p)}. Closed on {', '.join(closed)}. "
                f"Hours may change on public holidays.")
        for p in by_cat("hotel")[:15]:
            pets = "Pets are welcome (small dogs and cats)." if "pet_friendly" in p.tags else "Pets are not allowed."
            breakfast = ("Breakfast is served 06:30-10:00." if "breakfast" in p.tags
                         else "The hotel does not serve breakfast.")
            add(city.name, "hotel_policy", f"{p.name} policies", "stay.example.net",
                f"{p.name} ({p.district}, {city.name}): check-in from 14:00, check-out by 12:00. {breakfast} {pets} "
                f"Rooms from about {p.avg_price} CNY per night; free cancellation until 18:00 the day before arrival.")
        for p in [p for p in by_cat("restaurant") if "reservations" in p.tags][:10]:
            add(city.name, "reservation_policy", f"Booking a table at {p.name}", "eat.example.com",
                f"{p.name} ({p.district}, {city.name}) takes reservations up to 14 days ahead by phone or app. "
                f"Groups of 6 or more pay a 100 CNY deposit, refunded if cancelled 24 hours before. "
                f"Average spend {p.avg_price} CNY per person.")
        venues = [p for p in pois if p.category in ("park", "museum", "attraction", "bar", "shopping_mall")]
        for i in range(8):
            v = venues[rng.randrange(len(venues))]
            day = dates[rng.randrange(1, len(dates))]
            start = rng.choice((10, 14, 19, 20)) * 60 + rng.choice((0, 30))
            end = min(start + rng.choice((90, 120, 180)), 23 * 60 + 30)
            kind = rng.choice(["Jazz Night", "Lantern Festival", "Food Fair", "Night Market", "Photo Exhibition",
                               "Craft Beer Weekend", "Poetry Reading", "Kite Festival", "Folk Music Concert"])
            price = rng.choice((0, 0, 40, 60, 80, 120))
            weekday = WEEKDAYS[date.fromisoformat(day).weekday()]
            add(city.name, "event", f"{kind} at {v.name} on {day}", "events.example.net",
                f"{kind} at {v.name} ({v.district}, {city.name}) on {day} ({weekday}), "
                f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}. "
                + ("Free entry, no booking needed." if price == 0 else f"Tickets {price} CNY, sold online; "
                   "refundable until 24 hours before the start."))
        airport = world.poi(city.name, city.airport)
        km = round(haversine_km((airport.lat, airport.lng), (city.lat, city.lng)))
        add(city.name, "travel_tips", f"Getting around {city.name}", "travel.example.com",
            f"{city.name} has {len(city.districts)} districts: {', '.join(d.name for d in city.districts)}. "
            f"Metro and buses run from 05:00 to midnight. {city.airport} is about {km} km from the centre "
            f"({city.districts[0].name}). Railway: {', '.join(city.stations)}.")
        n_fast = sum(1 for p in by_cat("charging_station") if "fast_charging" in p.tags)
        add(city.name, "ev_charging", f"EV charging in {city.name}", "drive.example.org",
            f"{city.name} has {len(by_cat('charging_station'))} public charging stations, {n_fast} with fast "
            f"charging. Fast charging costs about 1.2-1.8 CNY per kWh; parking is free for the first 2 hours "
            f"while charging. Expressway service areas offer 24h fast chargers every 35-55 km.")
    for airline, _ in (("Skylark Airlines", "SK"), ("Eastwind Air", "EW"), ("Jade Airways", "JD"),
                       ("Pacific Crane", "PC")):
        add("", "refund_policy", f"{airline} refund and change policy", "fly.example.com",
            f"{airline} economy tickets: refunds more than 7 days before departure cost 10% of the fare, "
            f"2-7 days 20%, within 48 hours 30%; no refund after departure. One free date change up to 24 hours "
            f"before departure.")
        add("", "baggage_policy", f"{airline} baggage allowance", "fly.example.com",
            f"{airline}: one cabin bag up to 7 kg and 20 kg checked baggage on domestic economy fares. "
            f"Power banks must be carried in the cabin.")
    add("", "refund_policy", "Train ticket refund rules", "rail.example.com",
        "Train tickets can be refunded online: free more than 8 days before departure, 5% fee 2-8 days before, "
        "10% fee 24-48 hours before, 20% fee within 24 hours. Changes are free once until departure.")
    add("", "travel_tips", "Travelling with an electric car between cities", "drive.example.org",
        "Plan a charging stop every 150-200 km. Expressway service areas have 24h fast chargers; a 30-80% "
        "charge takes about 30 minutes. Avoid arriving at city centres during the 07:00-09:00 and 17:00-19:00 peaks.")
    add("", "travel_tips", "Museum visiting rules", "travel.example.com",
        "Most public museums close on Mondays and require an online reservation even when admission is free. "
        "Large bags must be left at the cloakroom; photography without flash is usually allowed.")
    return pages
