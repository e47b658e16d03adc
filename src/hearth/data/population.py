"""The generator's world and its honest side: customers, merchants, devices, normal spending.

Customers live around European cities (a few in the countryside), spend at a personal
lognormal level, prefer some merchant categories and merchants, pay with one or two devices,
mostly in their home currency, mostly in daytime and close to home. Normal behaviour that
*looks* suspicious exists on purpose: night purchases, trips far from home, a new phone now
and then, big electronics or travel purchases.

Also the building blocks the fraud patterns and the dirt share: `Rows` (one day's
transactions as numeric columns), `Day` (what every generator of one day needs), the device
id ranges and the geography helpers.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from datetime import date
from importlib import resources

import numpy as np

from hearth.data.drift_scenarios import Drift
from hearth.schema import CHANNELS, CURRENCIES, EUR_RATES, MERCHANT_CATEGORIES

IntArray = np.ndarray
FloatArray = np.ndarray

SECONDS_PER_DAY = 86_400
_KM_PER_DEGREE = 111.2

# -- the world ---------------------------------------------------------------------------------
# Customers cluster around the cities of hearth/data/cities.csv (latitude, longitude, relative
# population, currency), and a city's currency is its residents' home currency.
_CITIES_CSV = resources.files("hearth").joinpath("data", "cities.csv").read_text()
_CITIES = list(csv.DictReader(_CITIES_CSV.splitlines()))
_CITY_LAT = np.array([float(c["latitude"]) for c in _CITIES])
_CITY_LON = np.array([float(c["longitude"]) for c in _CITIES])
_CITY_WEIGHT = [float(c["relative_population"]) for c in _CITIES]
_CITY_P = np.array(_CITY_WEIGHT) / sum(_CITY_WEIGHT)
_CITY_CCY = np.array([CURRENCIES.index(c["currency"]) for c in _CITIES])
_COUNTRYSIDE_SHARE = 0.2
_EXPAT_USD_SHARE = 0.03  # customers whose card is in USD wherever they live
_SIGNUP_RANGE = (date(2012, 1, 1), date(2025, 12, 1))

_CAT = {name: i for i, name in enumerate(MERCHANT_CATEGORIES)}
CH = {name: i for i, name in enumerate(CHANNELS)}
RATES = np.array([EUR_RATES[c] for c in CURRENCIES])
_USD = CURRENCIES.index("USD")


def _by_category(values: dict[str, float]) -> FloatArray:
    return np.array([values[c] for c in MERCHANT_CATEGORIES], dtype=float)


# How popular a category is, how expensive relative to a customer's spending level, and how
# often it is bought online (a multiplier on the customer's own online habit).
_CAT_POPULARITY = _by_category(
    {
        "grocery": 25, "restaurant": 15, "fuel": 8, "transport": 10, "retail": 12,
        "electronics": 3, "travel": 2, "entertainment": 6, "health": 4, "utilities": 4,
        "gambling": 1, "crypto": 0.5,
    }
)  # fmt: skip
_CAT_AMOUNT = _by_category(
    {
        "grocery": 1.0, "restaurant": 0.9, "fuel": 1.6, "transport": 0.4, "retail": 1.4,
        "electronics": 4.0, "travel": 6.0, "entertainment": 0.9, "health": 1.1,
        "utilities": 2.5, "gambling": 1.5, "crypto": 3.0,
    }
)  # fmt: skip
_CAT_ONLINE = _by_category(
    {
        "grocery": 0.15, "restaurant": 0.2, "fuel": 0.0, "transport": 0.6, "retail": 0.7,
        "electronics": 1.4, "travel": 1.8, "entertainment": 1.0, "health": 0.3,
        "utilities": 2.0, "gambling": 2.0, "crypto": 2.5,
    }
)  # fmt: skip
# Cash comes out of ATMs on the way to these; the row keeps the category.
_ATM_CATEGORIES = np.isin(MERCHANT_CATEGORIES, ("grocery", "restaurant", "retail", "entertainment"))
_ATM_SHARE = 0.06
_MERCHANTS_PER_CATEGORY = np.array(
    [400, 600, 150, 120, 500, 120, 150, 200, 200, 60, 40, 30], dtype=np.int64
)
_MERCHANT_OFFSET = np.concatenate([[0], np.cumsum(_MERCHANTS_PER_CATEGORY)[:-1]])
_FAVOURITE_MERCHANT_SHARE = 0.55

# Hour of day (UTC) weights of normal spending: quiet nights, busy evenings.
_HOUR_WEIGHTS = np.array(
    [0.9, 0.6, 0.45, 0.35, 0.4, 0.8, 1.5, 3, 4.5, 5, 5.5, 6,
     7, 6.5, 6, 6, 6.5, 7, 7.5, 7, 6, 4.5, 3, 1.5]
)  # fmt: skip
_HOUR_P = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()
# Monday..Sunday: Fridays and Saturdays are busier.
_WEEKDAY_FACTOR = np.array([0.95, 0.95, 1.0, 1.0, 1.15, 1.2, 0.8])

_TRAVEL_DAY_P = 0.025  # a customer-day spent in another city
_NEW_PHONE_DAY_P = 0.006  # a customer-day on a device never seen before
_ONLINE_NOISE_P = 0.1  # online purchases in a foreign currency

_FRAUD_DEVICE_POOL = 50  # fraudsters reuse a few devices across victims and days
_NEW_DEVICE_SPAN = 1_000_000


# -- customers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Customers:
    """Everything about the customers that stays the same from day to day."""

    home_lat: FloatArray
    home_lon: FloatArray
    signup: IntArray  # days since 1970-01-01
    spend: FloatArray  # typical EUR amount
    activity: FloatArray  # multiplier on tx_per_customer_day
    online: FloatArray  # base probability of buying online
    category_cdf: FloatArray  # (customers, categories) cumulative preference
    devices: IntArray  # 1 or 2 usual devices
    currency: IntArray  # index into CURRENCIES

    @property
    def count(self) -> int:
        return int(self.home_lat.size)


def seed_entropy(seed: int) -> int:
    """`seed` as SeedSequence entropy (a non-negative integer; every 64-bit seed distinct)."""
    return seed % (1 << 64)


def draw_customers(seed: int, count: int) -> Customers:
    """Customer profiles from (seed, count) only, so every period sees the same customers."""
    rng = np.random.default_rng(np.random.SeedSequence([seed_entropy(seed), count, 0xC057]))
    city = rng.choice(len(_CITIES), size=count, p=_CITY_P)
    # Towns and villages: the same country as the city, but much further out.
    spread = np.where(rng.random(count) < _COUNTRYSIDE_SHARE, 1.0, 0.12)
    lat = _CITY_LAT[city] + rng.normal(0, 1, count) * spread
    lon = _CITY_LON[city] + rng.normal(0, 1.5, count) * spread
    currency = _CITY_CCY[city]
    currency = np.where(rng.random(count) < _EXPAT_USD_SHARE, _USD, currency)
    first, last = (d.toordinal() - date(1970, 1, 1).toordinal() for d in _SIGNUP_RANGE)
    # Most customers never gamble or buy crypto; the rest have personal tastes.
    taste = _CAT_POPULARITY * rng.gamma(0.8, 1.0, (count, len(MERCHANT_CATEGORIES)))
    never = rng.random((count, len(MERCHANT_CATEGORIES))) < 0.85
    taste[:, [_CAT[c] for c in ("gambling", "crypto")]] *= ~never[:, :2]
    cdf = np.cumsum(taste, axis=1)
    return Customers(
        home_lat=lat,
        home_lon=lon,
        signup=rng.integers(first, last + 1, count),
        spend=rng.lognormal(np.log(30.0), 0.55, count),
        # A tenth of the customers barely use the card.
        activity=np.where(rng.random(count) < 0.1, 0.1, rng.gamma(2.0, 0.5, count)),
        online=rng.beta(2.0, 4.0, count),
        category_cdf=cdf / cdf[:, -1:],
        devices=rng.integers(1, 3, count),
        currency=currency,
    )


# -- rows ----------------------------------------------------------------------------------------
@dataclass
class Rows:
    """Transactions of one day as numeric columns; formatted to text only when written."""

    ts: IntArray  # epoch seconds, UTC
    cust: IntArray
    merchant: IntArray
    cat: IntArray
    amount: FloatArray  # in the row's currency
    ccy: IntArray
    channel: IntArray
    device: IntArray
    lat: FloatArray
    lon: FloatArray
    fraud: IntArray

    def __len__(self) -> int:
        return int(self.ts.size)

    def take(self, idx: IntArray) -> Rows:
        return Rows(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        return Rows(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Rows)}
        )


@dataclass(frozen=True)
class Day:
    """What every generator of one day needs."""

    rng: np.random.Generator
    start: int  # epoch seconds of 00:00 UTC
    weekday: int
    customers: Customers
    drift: Drift
    devices: DeviceIds

    @property
    def spend(self) -> FloatArray:
        """Each customer's typical EUR amount on this day."""
        return self.customers.spend * self.drift.spend_factor

    @property
    def online_p(self) -> FloatArray:
        """Each customer's probability of buying online on this day."""
        p = self.customers.online
        return p + self.drift.online_shift * (1 - p) if self.drift.online_shift else p


@dataclass(frozen=True)
class DeviceIds:
    """Disjoint id ranges: customers' own devices, the fraudsters' pool, new legit phones."""

    fraud_start: int
    new_start: int

    @classmethod
    def for_customers(cls, count: int) -> DeviceIds:
        return cls(fraud_start=2 * count, new_start=2 * count + _FRAUD_DEVICE_POOL)

    def own(self, cust: IntArray, second: IntArray) -> IntArray:
        return 2 * cust + second

    def primary(self, cust: IntArray) -> IntArray:
        """Each customer's first own device."""
        return self.own(cust, np.zeros(cust.size, dtype=np.int64))

    def fraud(self, rng: np.random.Generator, n: int) -> IntArray:
        return self.fraud_start + rng.integers(0, _FRAUD_DEVICE_POOL, n)

    def new(self, rng: np.random.Generator, n: int) -> IntArray:
        return self.new_start + rng.integers(0, _NEW_DEVICE_SPAN, n)

    @property
    def width(self) -> int:
        return max(7, len(str(self.new_start + _NEW_DEVICE_SPAN)))


def pick(rng: np.random.Generator, names: tuple[str, ...], n: int) -> IntArray:
    """Random categories among `names`, as indices into MERCHANT_CATEGORIES."""
    return np.array([_CAT[c] for c in names])[rng.integers(0, len(names), n)]


def random_merchant(rng: np.random.Generator, cat: IntArray) -> IntArray:
    """A merchant of each category, popular ones more often (a skewed draw)."""
    u = rng.random(cat.size) ** 2
    return _MERCHANT_OFFSET[cat] + (u * _MERCHANTS_PER_CATEGORY[cat]).astype(np.int64)


def _favourite_merchant(cust: IntArray, cat: IntArray) -> IntArray:
    # A fixed hash, so a customer's local shop is the same every day without storing it.
    h = (cust * 2_654_435_761 + cat * 40_503) % _MERCHANTS_PER_CATEGORY[cat]
    return _MERCHANT_OFFSET[cat] + h


def near(
    rng: np.random.Generator, lat: FloatArray, lon: FloatArray, km: float
) -> tuple[FloatArray, FloatArray]:
    """Points scattered around (lat, lon) with a spread of about `km`."""
    n = lat.size
    dlat = rng.normal(0, km / _KM_PER_DEGREE, n)
    dlon = rng.normal(0, km / _KM_PER_DEGREE, n) / np.cos(np.radians(lat))
    return np.clip(lat + dlat, -89.0, 89.0), _wrap_lon(lon + dlon)


def far(
    rng: np.random.Generator, lat: FloatArray, lon: FloatArray, km_lo: float, km_hi: float
) -> tuple[FloatArray, FloatArray]:
    """Points `km_lo`–`km_hi` km away from (lat, lon) in a random direction."""
    n = lat.size
    dist = rng.uniform(km_lo, km_hi, n) / _KM_PER_DEGREE
    angle = rng.uniform(0, 2 * np.pi, n)
    new_lat = np.clip(lat + dist * np.cos(angle), -80.0, 80.0)
    new_lon = lon + dist * np.sin(angle) / np.cos(np.radians((lat + new_lat) / 2))
    return new_lat, _wrap_lon(new_lon)


def _wrap_lon(lon: FloatArray) -> FloatArray:
    return (lon + 180.0) % 360.0 - 180.0


def daytime(rng: np.random.Generator, start: int, n: int) -> IntArray:
    """`n` times of the day that starts at `start`, at the hours people usually pay."""
    return start + rng.choice(24, n, p=_HOUR_P) * 3600 + rng.integers(0, 3600, n)


def online_or_pos(rng: np.random.Generator, n: int, online_p: float) -> IntArray:
    """Channels: online with probability `online_p`, else a card terminal."""
    return np.where(rng.random(n) < online_p, CH["online"], CH["pos"])


def to_currency(amount_eur: FloatArray, ccy: IntArray) -> FloatArray:
    """EUR amounts in the currencies `ccy`, rounded to cents, at least 0.50."""
    return np.maximum(np.round(amount_eur / RATES[ccy], 2), 0.5)


# -- normal spending -----------------------------------------------------------------------
def normal_rows(day: Day, tx_per_day: float) -> Rows:
    """The honest transactions of one day, per customer habits."""
    cs = day.customers
    counts = day.rng.poisson(tx_per_day * cs.activity * _WEEKDAY_FACTOR[day.weekday])
    return habitual(day, np.repeat(np.arange(cs.count), counts), fraud=0)


def habitual(day: Day, cust: IntArray, fraud: int) -> Rows:
    """One transaction per entry of `cust`, following that customer's habits."""
    rng, cs = day.rng, day.customers
    n = cust.size
    ts = daytime(rng, day.start, n)
    u = rng.random(n)
    cat = np.minimum((cs.category_cdf[cust] < u[:, None]).sum(axis=1), len(_CAT_AMOUNT) - 1)
    channel = _normal_channel(rng, cat, day.online_p[cust])
    amount_eur = day.spend[cust] * _CAT_AMOUNT[cat] * rng.lognormal(0.0, 0.6, n)
    merchant = np.where(
        rng.random(n) < _FAVOURITE_MERCHANT_SHARE,
        _favourite_merchant(cust, cat),
        random_merchant(rng, cat),
    )
    lat, lon, ccy = _normal_places(day, cust, channel)
    amount = to_currency(amount_eur, ccy)
    atm = channel == CH["atm"]
    # ATMs hand out round sums.
    amount[atm] = np.maximum(np.round(amount[atm] / 20.0) * 20.0, 20.0)
    return Rows(
        ts=ts,
        cust=cust,
        merchant=merchant,
        cat=cat,
        amount=amount,
        ccy=ccy,
        channel=channel,
        device=_normal_devices(day, cust),
        lat=lat,
        lon=lon,
        fraud=np.full(n, fraud, dtype=np.int8),
    )


def _normal_channel(rng: np.random.Generator, cat: IntArray, online_p: FloatArray) -> IntArray:
    online = rng.random(cat.size) < np.clip(online_p * _CAT_ONLINE[cat], 0.0, 0.97)
    atm = ~online & _ATM_CATEGORIES[cat] & (rng.random(cat.size) < _ATM_SHARE)
    return np.where(online, CH["online"], np.where(atm, CH["atm"], CH["pos"]))


def _normal_places(
    day: Day, cust: IntArray, channel: IntArray
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Where each transaction happens and in which currency.

    At home: small jitter (online: a coarse IP location). A few customer-days are trips to
    another city, paid in the local currency, which look like fraud by distance alone.
    """
    rng, cs = day.rng, day.customers
    travelling = rng.random(cs.count) < _TRAVEL_DAY_P
    destination = rng.choice(len(_CITIES), size=cs.count, p=_CITY_P)
    away = travelling[cust]
    base_lat = np.where(away, _CITY_LAT[destination[cust]], cs.home_lat[cust])
    base_lon = np.where(away, _CITY_LON[destination[cust]], cs.home_lon[cust])
    online = channel == CH["online"]
    lat, lon = near(rng, base_lat, base_lon, 6.0)
    ip_lat, ip_lon = near(rng, base_lat, base_lon, 25.0)
    ccy = np.where(away, _CITY_CCY[destination[cust]], cs.currency[cust])
    foreign = online & (rng.random(cust.size) < _ONLINE_NOISE_P)
    ccy = np.where(foreign, rng.integers(0, len(CURRENCIES), cust.size), ccy)
    return np.where(online, ip_lat, lat), np.where(online, ip_lon, lon), ccy


def _normal_devices(day: Day, cust: IntArray) -> IntArray:
    """Mostly the primary device; the second one if the customer has it; rarely a new phone."""
    rng, cs = day.rng, day.customers
    second = (cs.devices[cust] == 2) & (rng.random(cust.size) < 0.25)
    device = day.devices.own(cust, second.astype(np.int64))
    new_phone = rng.random(cs.count) < _NEW_PHONE_DAY_P
    phone = day.devices.new(rng, cs.count)
    use_new = new_phone[cust] & (rng.random(cust.size) < 0.6)
    return np.where(use_new, phone[cust], device)
