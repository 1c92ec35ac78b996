"""The chat demo's embedded data: support conversations of a fictional online tea shop, generated here.

Quillfeather Tea Co. does not exist, so a pretrained model cannot know its prices, hours, shipping
and return rules: whatever the fine-tuned model answers right, it learned from these conversations.
Each conversation has an optional system prompt and one to three user/assistant exchanges; the
customer's wording varies (several phrasings per question, greetings, order numbers), the
assistant's answers state the shop's facts. Held-out conversations ask the same questions in
combinations and wordings of their own. Everything is seeded: the same seed gives the same data.

Example:
    >>> train, test = support_conversations(200, 40, seed=0)
    >>> train[0]["messages"][-1]["role"]
    'assistant'
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

COMPANY = "Quillfeather Tea Co."
SYSTEM = f"You are the customer support assistant of {COMPANY} Answer briefly and exactly."

#: topic -> (customer phrasings, the assistant's answer, the facts the answer must state)
TOPICS: dict[str, tuple[list[str], str, list[str]]] = {
    "jasmine": (["How much is the Jasmine Pearl tea?", "What does Jasmine Pearl cost?",
                 "Price of jasmine pearl please", "how much for a bag of Jasmine Pearl"],
                "Jasmine Pearl costs $18.40 per 100 g bag.", ["$18.40"]),
    "lapsang": (["How much is the Smoky Lapsang?", "What is the price of Smoky Lapsang?",
                 "smoky lapsang price?", "How much does a bag of Smoky Lapsang cost?"],
                "Smoky Lapsang costs $12.75 per 100 g bag.", ["$12.75"]),
    "white": (["How much is Moonlight White?", "What does the Moonlight White tea cost?",
               "price for moonlight white?", "Moonlight White, how much is it?"],
              "Moonlight White costs $22.90 per 100 g bag.", ["$22.90"]),
    "rooibos": (["How much is Ginger Rooibos?", "What's the price of the Ginger Rooibos?",
                 "ginger rooibos cost?", "How much do you charge for Ginger Rooibos?"],
                "Ginger Rooibos costs $9.60 per 100 g bag.", ["$9.60"]),
    "shipping": (["How much is shipping?", "What does delivery cost?", "Do you charge for shipping?",
                  "shipping fees?"],
                 "Standard shipping is $4.95 and takes 3 to 5 business days; it is free on orders over $45.",
                 ["$4.95", "$45"]),
    "express": (["Can I get it tomorrow?", "Do you have express delivery?", "How fast can you ship?",
                 "is next day delivery possible"],
                "Express delivery costs $11.50 and arrives the next business day if you order by 2 pm.",
                ["$11.50", "2 pm"]),
    "returns": (["Can I return my tea?", "What is your return policy?", "How do returns work?",
                 "i want to send a bag back"],
                "Unopened bags can be returned within 21 days; the refund reaches your card within 5 business days.",
                ["21 days", "5 business days"]),
    "hours": (["When is support open?", "What are your opening hours?", "When can I call you?",
               "are you open on weekends"],
              "Support is open Monday to Friday 8 am to 6 pm and Saturday 10 am to 2 pm; we are closed on Sunday.",
              ["8 am to 6 pm", "10 am to 2 pm"]),
    "limit": (["Is there a limit on how many bags I can order?", "Can I order 20 bags at once?",
               "What is the maximum order?", "max bags per order?"],
              "You can order at most 12 bags per order; for more, write to wholesale@quillfeather.example.",
              ["12 bags"]),
    "change": (["Can I change my order?", "I made a mistake in my order, can I fix it?",
                "How do I edit an order?", "can i cancel my order"],
               "Orders can be changed or cancelled within 1 hour of ordering, from the link in your confirmation e-mail.",
               ["1 hour"]),
    "gift": (["Do you do gift wrapping?", "Can you wrap it as a present?", "Is gift wrap available?",
              "gift wrapping price?"],
             "Gift wrapping costs $3.25 per order and includes a handwritten card.", ["$3.25"]),
    "points": (["How does the loyalty program work?", "Do I earn points?", "What are loyalty points worth?",
                "tell me about rewards"],
               "You earn 1 point per dollar spent, and 200 points give $10 off your next order.",
               ["200 points", "$10 off"]),
}

GREETINGS = ["", "Hi! ", "Hello, ", "Good morning. ", "Hey there, ", "Quick question: "]
SIGN_OFFS = ["", " Thanks!", " Thank you.", " Cheers.", " Thanks in advance."]
ORDERS = ["", " My order is #{n}.", " (order {n})"]


def _question(rng: random.Random, topic: str) -> str:
    asks = TOPICS[topic][0]
    order = rng.choice(ORDERS).format(n=rng.randint(10000, 99999))
    return (rng.choice(GREETINGS) + rng.choice(asks) + order + rng.choice(SIGN_OFFS)).strip()


def _conversation(rng: random.Random, topics: list[str], system: bool) -> dict[str, Any]:
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}] if system else []
    for topic in topics:
        messages.append({"role": "user", "content": _question(rng, topic)})
        messages.append({"role": "assistant", "content": TOPICS[topic][1]})
    return {"messages": messages, "topic": topics[-1]}


def support_conversations(n_train: int = 240, n_test: int = 36, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """`n_train` training and `n_test` held-out conversations (records with `messages` and `topic`).

    The held-out conversations never repeat a training conversation's last question word for word,
    and every topic occurs in both sets.
    """
    rng = random.Random(seed)
    names = sorted(TOPICS)
    train: list[dict] = []
    seen_last: set[str] = set()
    for i in range(n_train):
        turns = [names[i % len(names)]] if i < len(names) else rng.sample(names, rng.choice([1, 1, 2, 3]))
        record = _conversation(rng, turns, system=rng.random() < 0.6)
        seen_last.add(record["messages"][-2]["content"])
        train.append(record)
    test: list[dict] = []
    while len(test) < n_test:
        last = names[len(test) % len(names)]
        turns = [*rng.sample([t for t in names if t != last], rng.choice([0, 0, 1])), last]
        record = _conversation(rng, turns, system=rng.random() < 0.6)
        if record["messages"][-2]["content"] not in seen_last:
            test.append(record)
    return train, test


def all_facts() -> list[str]:
    """Every fact string the shop's answers state (what `FactAccuracy` looks for)."""
    return sorted({fact for _, _, facts in TOPICS.values() for fact in facts})


def write_conversations(path: str | Path, records: list[dict]) -> Path:
    """Write records as JSONL (one conversation per line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
