"""Word banks of the synthetic task families: one per split, and a bank of invented words for training.

Held-out banks share no name, key, place, object or filler sentence with the training banks, so a held-out
score measures transfer to unseen vocabulary (tests check the disjointness). The ``invented`` bank (made-up
words, below) is used only by specs with ``invented=1``.
"""

from __future__ import annotations

import random
import re

FILLER = {
    "train": [
        "The grass is green.", "The sky is blue.", "The sun is warm today.", "Birds sing in the morning.",
        "A cat sleeps on the mat.", "The road goes on and on.", "Clouds drift over the hills.",
        "The old clock ticks slowly.", "Bread is baked in the oven.", "Children play in the park.",
        "The wind moves the tall trees.", "A boat floats on the lake.", "Leaves fall in the autumn.",
        "The shop opens at nine.", "Rain taps on the window.", "The dog runs after the ball.",
    ],
    "heldout": [
        "Rivers carry silt toward distant deltas.", "Glaciers carve valleys over centuries.",
        "Lanterns flicker along the harbour wall.", "Merchants haggle beneath striped awnings.",
        "Violins echo through the marble hall.", "Copper kettles hang above the stove.",
        "Fishermen mend nets before dawn.", "Pilgrims rest beside the stone chapel.",
        "Owls hunt across frosty meadows.", "Printers stack fresh pamphlets by the door.",
        "Sailors chart routes by starlight.", "Bees gather nectar from clover blossoms.",
    ],
}  # fmt: skip

KV_KEYS = {
    "train": [
        "falcon", "otter", "badger", "heron", "lynx", "walrus", "beaver", "gecko", "marmot", "bison", "ferret",
        "jackal", "koala", "lemur", "moose", "panda", "raven", "salmon", "tapir", "zebra", "camel", "donkey",
        "eagle", "hamster", "iguana", "llama", "parrot", "rabbit", "shark", "turtle",
    ],
    "heldout": [
        "apricot", "cabbage", "fennel", "guava", "lentil", "mango", "nutmeg", "olive", "papaya", "quince",
        "radish", "saffron", "tomato", "walnut", "yam", "almond", "basil", "cherry", "date", "endive",
    ],
}  # fmt: skip

NAMES = {
    "train": [
        "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Irene", "Jack", "Karen", "Liam",
        "Maria", "Nathan", "Olivia", "Peter", "Quinn", "Rachel", "Steve", "Tina",
    ],
    "heldout": [
        "Ingrid", "Mateo", "Yusuf", "Priya", "Sven", "Aiko", "Dmitri", "Fatima", "Kofi", "Lucia", "Ravi",
        "Zofia", "Tariq", "Elif",
    ],
}  # fmt: skip

CITIES = {
    "train": [
        "Paris", "London", "Tokyo", "Rome", "Berlin", "Madrid", "Moscow", "Cairo", "Sydney", "Toronto",
        "Chicago", "Dublin",
    ],
    "heldout": ["Lisbon", "Vienna", "Prague", "Oslo", "Athens", "Warsaw", "Seoul", "Lima", "Nairobi", "Helsinki"],
}  # fmt: skip

JOBS = {
    "train": ["baker", "doctor", "teacher", "pilot", "farmer", "lawyer", "painter", "nurse"],
    "heldout": ["chemist", "librarian", "carpenter", "jeweller", "surveyor", "translator"],
}

PETS = {
    "train": ["a dog", "a cat", "a parrot", "a rabbit", "a hamster"],
    "heldout": ["a tortoise", "a ferret", "a canary", "a goldfish"],
}

# Places people go to and objects they carry (multi-hop and state-tracking families).
PLACES = {
    "train": [
        "kitchen", "garden", "garage", "bedroom", "office", "hallway", "basement", "balcony", "bathroom", "porch",
    ],
    "heldout": ["attic", "cellar", "library", "pantry", "studio", "veranda", "workshop", "greenhouse", "chapel"],
}  # fmt: skip

COLOURS = {
    "train": ["red", "blue", "green", "yellow", "black", "white"],
    "heldout": ["amber", "violet", "silver", "crimson", "ivory", "teal"],
}

OBJECTS = {
    "train": ["key", "cup", "book", "ball", "hat", "phone", "lamp", "coin"],
    "heldout": ["compass", "lantern", "ribbon", "flute", "scarf", "medal", "candle"],
}

CONTAINERS = {
    "train": ["box", "bag", "basket", "drawer"],
    "heldout": ["satchel", "crate", "chest", "tin"],
}

# Verbs: training and held-out splits phrase the same facts with different verbs.
CARRY_VERBS = {"train": ["picked up", "took", "grabbed"], "heldout": ["collected", "fetched", "lifted"]}
MOVE_VERBS = {"train": ["went to", "walked to", "moved to"], "heldout": ["travelled to", "headed to", "wandered to"]}

# Invented words: a third bank (``invented``), for training only. The training banks are small (4 containers, 6
# colours, 20 names): a policy cloned on them can rank by which words it has seen, and that does not carry to the
# held-out banks or to a user's text. Examples drawn with ``invented=1`` (a task spec option) take every name,
# key, city, job, pet, place, colour, object and container from 2,300 made-up words, so that a ranking fitted on
# them has to use what transfers: which words the question, the kept text and the candidate share, and where
# they stand. Filler sentences and verbs stay the training split's.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "br", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s")
_INVENTED_SIZES = (
    (NAMES, 400), (KV_KEYS, 400), (CITIES, 200), (JOBS, 200), (PETS, 200), (PLACES, 300), (COLOURS, 150),
    (OBJECTS, 300), (CONTAINERS, 150),
)  # fmt: skip
_KEPT_FROM_TRAINING = (FILLER, CARRY_VERBS, MOVE_VERBS)


def _add_invented_banks() -> None:
    """Made-up words of 2-3 syllables, distinct across banks and from every word of the real banks (filler too)."""
    real = {w.lower() for table in (*(t for t, _ in _INVENTED_SIZES), *_KEPT_FROM_TRAINING)
            for split in ("train", "heldout") for w in re.findall(r"[A-Za-z]+", " ".join(table[split]))}  # fmt: skip
    rng = random.Random("invented-words")
    seen: set[str] = set()
    for table, size in _INVENTED_SIZES:
        words: list[str] = []
        while len(words) < size:
            syllables = 3 if rng.random() < 0.2 else 2
            w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
            if w not in seen and w not in real:
                seen.add(w)
                words.append(w)
        if table is NAMES or table is CITIES:
            words = [w.capitalize() for w in words]
        elif table is PETS:
            words = [f"a {w}" for w in words]
        table["invented"] = words
    for table in _KEPT_FROM_TRAINING:
        table["invented"] = table["train"]


_add_invented_banks()
