"""The demo's embedded data: customer support messages for an online phone shop, generated here.

Five intents (billing, shipping, returns, account, technical). The generator is deliberately messy,
as real support inboxes are: HTML left over from an e-mail client, URLs and order numbers, repeated
messages (exact and with other casing or spacing), and a few mislabelled examples (label noise), so
cleaning and deduplication matter. Everything is seeded: the same seed gives the same file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

INTENTS: dict[str, dict[str, list[str]]] = {
    "billing": {
        "openers": ["I was charged twice for", "Why is there an extra fee on", "My card was billed for",
                    "Can I get an invoice for", "The price I paid for", "I need a receipt for",
                    "Please explain the charge for", "I was overcharged on"],
        "closers": ["please refund the difference", "the amount looks wrong", "my bank shows two payments",
                    "I need it for my accounts", "the coupon was not applied", "can you check the payment"],
    },
    "shipping": {
        "openers": ["Where is my order of", "The tracking has not moved for", "When will you deliver",
                    "The courier lost", "My package with", "Can you ship faster",
                    "Delivery is late for", "I have not received"],
        "closers": ["it said two days", "the tracking page shows nothing", "I need it before Friday",
                    "nobody came to the door", "can I change the address", "it is stuck at the depot"],
    },
    "returns": {
        "openers": ["I want to return", "How do I send back", "Can I exchange", "I would like a refund for",
                    "The wrong colour came for", "Please take back", "I changed my mind about",
                    "Is it too late to return"],
        "closers": ["it is still in the box", "I need a return label", "the size is wrong",
                    "it arrived damaged", "do I pay for postage", "I bought it ten days ago"],
    },
    "account": {
        "openers": ["I cannot log in to see", "Reset my password so I can track", "Change the e-mail on my order of",
                    "Delete my account after", "My profile shows the wrong name for", "Two-factor codes never arrive for",
                    "I am locked out after buying", "Update my phone number for"],
        "closers": ["the reset link has expired", "it says the account is disabled", "please merge my two accounts",
                    "I never get the code", "I want to unsubscribe", "the app keeps logging me out"],
    },
    "technical": {
        "openers": ["The screen keeps flickering on", "Battery drains fast on", "Bluetooth will not pair with",
                    "Software update failed on", "The camera crashes on", "No signal since I got",
                    "The charger gets hot with", "Wi-Fi drops every hour on"],
        "closers": ["I already restarted it", "it started after the update", "is this a known fault",
                    "factory reset did not help", "it happens with every charger", "the sound is distorted too"],
    },
}
PRODUCTS = ["the Nova X2 phone", "my Aria earbuds", "the Volt 30W charger", "the Pixel-style case", "my tablet",
            "the Orbit smartwatch", "the Zen headset", "order #{n}", "the replacement phone", "the screen protector"]
GREETINGS = ["", "", "Hi, ", "Hello, ", "Dear support, ", "hey ", "Good morning. "]
SIGNOFFS = ["", "", " Thanks.", " Thank you!", " Regards, Sam", " Cheers", " Please help asap!!"]
NOISE = ["", "", "", " <br>", " <p>sent from my phone</p>", " see https://shop.example.com/orders/{n}",
         " my email is jo{n}@example.org", "  "]


def _message(rng: random.Random, intent: str) -> str:
    parts = INTENTS[intent]
    product = rng.choice(PRODUCTS).format(n=rng.randint(10000, 99999))
    text = (f"{rng.choice(GREETINGS)}{rng.choice(parts['openers'])} {product}, {rng.choice(parts['closers'])}."
            f"{rng.choice(SIGNOFFS)}{rng.choice(NOISE).format(n=rng.randint(10, 999))}")
    return text


def generate(n: int = 1200, seed: int = 0, noise: float = 0.04, duplicates: float = 0.08) -> list[dict[str, str]]:
    """`n` support messages with `text`, `label` and `customer` (for grouped splits).

    Args:
        n: messages before duplicates are added.
        seed: the random seed.
        noise: fraction of labels replaced by a random other intent.
        duplicates: fraction of extra copies (half exact, half with other casing and spacing).
    """
    rng = random.Random(seed)
    intents = list(INTENTS)
    records = []
    for i in range(n):
        intent = intents[i % len(intents)]
        label = intent
        if rng.random() < noise:
            label = rng.choice([x for x in intents if x != intent])
        records.append({"text": _message(rng, intent), "label": label, "customer": f"c{rng.randint(0, n // 3)}"})
    for _ in range(int(n * duplicates)):
        original = dict(rng.choice(records))
        if rng.random() < 0.5:
            original["text"] = "  " + original["text"].upper().replace(" ", "  ") + " "
        records.append(original)
    rng.shuffle(records)
    return records


def write_records(path: str | Path, records: list[dict[str, Any]]) -> Path:
    """Write records as JSONL (one record per line), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path


def write_jsonl(path: str | Path, n: int = 1200, seed: int = 0) -> Path:
    """Write the demo data set as JSONL (one record per line)."""
    return write_records(path, generate(n, seed))
