"""Regenerates data/uk-weather-2011.csv: synthetic but plausible daily weather, deterministic (seeded).

    python make_dataset.py > data/uk-weather-2011.csv

Columns: date, station, tmin_c, tmax_c, rain_mm. The stations are real UK
places; the numbers are made up from a seasonal curve plus seeded noise.
"""
import datetime
import math
import random

STATIONS = (  # name, mean annual temperature (C), seasonal amplitude (C), daily range (C), rain chance
    ("Aberdeen", 8.5, 5.5, 6.5, 0.55),
    ("London-Heathrow", 11.8, 7.0, 8.5, 0.38),
    ("Cardiff", 10.9, 6.2, 7.5, 0.50),
)


def main() -> None:
    rng = random.Random(2011)
    print("date,station,tmin_c,tmax_c,rain_mm")
    day = datetime.date(2011, 1, 1)
    while day.year == 2011:
        season = -math.cos(2 * math.pi * (day.timetuple().tm_yday - 20) / 365)
        for name, mean, amplitude, spread, wet in STATIONS:
            centre = mean + amplitude * season + rng.gauss(0, 2.2)
            half = spread / 2 + rng.uniform(-1.5, 1.5)
            rain = round(rng.expovariate(1 / 4.0), 1) if rng.random() < wet else 0.0
            print(f"{day.isoformat()},{name},{centre - half:.1f},{centre + half:.1f},{rain:.1f}")
        day += datetime.timedelta(days=1)


if __name__ == "__main__":
    main()
