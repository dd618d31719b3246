"""A small synthetic domain with real item texts, for the language-model channel tests.

Four topics of ten items each, with a title and the topic's categories. Every user sticks to
one topic (users 0-19) or alternates between two (users 20-29), eight events each; within a
topic a user walks the items in a fixed cyclic order, so the next item is predictable
(sequential channels) and the topic is predictable from the text (semantic channels). The
last item of each topic is "cold": nobody interacts with it in training.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from llmrecall.data.dataset import Catalog, Dataset, Interactions
from llmrecall.data.vocab import Vocabulary

TOPICS = {
    "space": ["Rocket launch to Mars", "Astronauts on the International Space Station",
              "Black holes and neutron stars", "The Apollo moon landing", "Telescope guide to galaxies",
              "Life on a Mars colony", "Saturn's rings and moons", "Spacewalk survival manual",
              "The Hubble space telescope", "Comets and asteroids in the solar system"],
    "cooking": ["Italian pasta recipes", "Baking sourdough bread at home", "Vegetarian curry cookbook",
                "French pastry techniques", "Grilling steak and barbecue", "Japanese sushi kitchen",
                "Soups and stews for winter", "Chocolate desserts and cakes",
                "Mexican tacos and salsa", "Homemade pizza dough"],
    "football": ["World Cup soccer history", "Premier League football season",
                 "Goalkeeper training drills", "Famous football strikers", "Soccer tactics and formations",
                 "Champions League final", "Youth football coaching", "Penalty kicks in soccer",
                 "Football stadiums of Europe", "The offside rule explained"],
    "piano": ["Beginner piano lessons", "Chopin nocturnes for piano", "Jazz piano improvisation",
              "Piano scales and arpeggios", "Beethoven piano sonatas", "Playing piano by ear",
              "Grand piano maintenance", "Classical piano concertos", "Piano chords for pop songs",
              "Sight reading sheet music for piano"],
}
CATEGORIES = {"space": ["Astronomy", "Space exploration"], "cooking": ["Cooking", "Food"],
              "football": ["Sports", "Football"], "piano": ["Music", "Piano"]}
N_TOPIC = 10
N_SINGLE, N_MIXED = 20, 10
COLD = np.array([t * N_TOPIC + N_TOPIC - 1 for t in range(len(TOPICS))])  # last of each topic


def topic_of(items: np.ndarray) -> np.ndarray:
    return np.asarray(items) // N_TOPIC


def user_topics(user: int) -> tuple[int, ...]:
    if user < N_SINGLE:
        return (user % len(TOPICS),)
    return (user % len(TOPICS), (user + 1) % len(TOPICS))


def make_dataset(seed: int = 0, length: int = 8) -> Dataset:
    """40 items, 30 users, ``length`` events each; warm items only (ids 0-8 of each topic)."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    warm = N_TOPIC - 1
    for u in range(N_SINGLE + N_MIXED):
        topics = user_topics(u)
        start = rng.integers(warm, size=len(topics))
        for step in range(length):
            which = step % len(topics)
            # walk the topic's warm items cyclically: item after j is j + 1 (mod 9)
            offset = (start[which] + step // len(topics)) % warm
            users.append(u)
            items.append(topics[which] * N_TOPIC + offset)
            times.append(1000.0 * u + step)
    titles = [t for titles in TOPICS.values() for t in titles]
    categories = [CATEGORIES[topic] for topic in TOPICS for _ in range(N_TOPIC)]
    catalog = Catalog(pl.DataFrame({"title": titles, "category": categories},
                                   schema={"title": pl.Utf8, "category": pl.List(pl.Utf8)}))
    log = Interactions.build(user=users, item=items, time=times)
    return Dataset("lm-topics", Vocabulary(str(u) for u in range(N_SINGLE + N_MIXED)),
                   Vocabulary(f"i{i}" for i in range(len(titles))), log, catalog)
