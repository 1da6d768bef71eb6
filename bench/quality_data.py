"""Synthetic long multi-session conversations with planted supporting turns and questions.

Deterministic for a seed: ``make_dataset(seed)`` always yields the same turns, ids, times
and questions. Each user has 20-32 sessions (one scope each, so the final session's request
can name every earlier session in ``scopes``, at most 31), each 20-60 turns of
support/assistant chatter. Facts are planted once, in user turns of earlier sessions, and
questions are asked in the final session:

* ``single``: one turn states the answer, the question reuses its words;
* ``paraphrase``: one turn states it, the question shares almost no content word with it;
* ``keyword``: a rare id (ticket, order) names the turn; other ids of the same shape are
  all over the filler, so only the exact token singles it out;
* ``multihop``: two turns in different sessions (a name introduced, then a fact about the
  name), the question names neither the person's name nor the fact's words;
* ``temporal``: a value stated, then changed once or twice in later sessions; the question
  asks for the current one, supported by the latest turn only;
* ``pair``: the user asks, the assistant answers in its reply ("It's 4471#."): both turns.

Filler is deliberately close to the facts (the same topics, other ids of the same shape,
other people and places) so plain word overlap is not enough.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

Speaker = Literal["user", "assistant"]
_Slot = tuple[Speaker, str, "int | None"]
QuestionType = Literal["single", "paraphrase", "keyword", "multihop", "temporal", "pair"]
QUESTION_TYPES: Final[tuple[QuestionType, ...]] = (
    "single", "paraphrase", "keyword", "multihop", "temporal", "pair",
)
_T0: Final = datetime(2024, 1, 8, 9, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Turn:
    event_id: str
    user: str
    scope: str
    session: int
    role: Literal["user", "assistant"]
    text: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Question:
    qid: str
    user: str
    qtype: QuestionType
    query: str
    support: tuple[str, ...]  # event ids that must all be in the window
    scope: str  # the final session
    scopes: tuple[str, ...]  # the user's earlier sessions, oldest first
    asked_at: datetime


@dataclass(slots=True)
class Dataset:
    seed: int
    tenant: str
    turns: list[Turn] = field(default_factory=list)  # chronological
    questions: list[Question] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        """The turns as source events (the public contract), chronological."""
        return [
            {
                "event_id": t.event_id, "tenant": self.tenant, "scope": t.scope, "kind": "message",
                "role": t.role, "content": t.text, "occurred_at": t.occurred_at.isoformat(),
                "metadata": {"user": t.user, "session": t.session},
            }
            for t in self.turns
        ]


_FIRST = ["Maya", "Jonas", "Priya", "Tomasz", "Leila", "Oscar", "Hana", "Diego", "Ines", "Kofi",
          "Mei", "Rafael", "Sana", "Viktor", "Amara", "Lucas", "Noor", "Emil", "Zara", "Felix"]
_CITIES = ["Lisbon", "Montreal", "Osaka", "Nairobi", "Tallinn", "Valparaiso", "Hobart", "Ghent",
           "Bergen", "Cusco", "Porto", "Da Nang", "Leipzig", "Tbilisi", "Halifax", "Cork"]
_COMPANIES = ["Northwind", "Bluefin Labs", "Orbital Foods", "Kestrel Bank", "Mapleworks",
              "Quarry Health", "Tidewater Freight", "Lumen Studio"]
_STREETS = ["Alder Lane", "Quay Street", "Birchwood Road", "Harbor View", "Mill Street",
            "Juniper Court", "Canal Road", "Orchard Way", "Station Hill", "Rosemary Close"]
_BREEDS = ["beagle", "border collie", "dachshund", "shiba inu", "greyhound", "corgi"]
_PET_NAMES = ["Biscuit", "Pepper", "Mochi", "Juniper", "Waffles", "Pixel", "Noodle", "Clementine"]
_ALLERGENS = ["sesame", "shellfish", "peanuts", "kiwi", "mustard", "celery"]
_TOOLS = ["Airflow", "Dagster", "Prefect", "Temporal", "Argo Workflows", "Luigi"]
_CODENAMES = ["Bluebird", "Granite", "Halcyon", "Foxglove", "Tundra", "Marigold", "Cobalt"]
_PROJECTS = ["billing revamp", "mobile app relaunch", "data warehouse move", "support portal redesign"]
_PLACES = ["Rotterdam", "Denver", "Kraków", "Austin", "Dublin", "Pune"]
_ISSUES = ["duplicate charges on the annual plan", "the CSV export dropping the last row",
           "SSO logins failing for contractors", "webhooks arriving twice", "the invoice PDF missing VAT",
           "push notifications not arriving on Android", "the dashboard timing out after 30 seconds",
           "password reset emails going to spam"]
_HOBBIES = ["bouldering", "pottery", "sailing", "learning the cello", "trail running", "birdwatching"]
_LANGS = ["Portuguese", "Japanese", "Swahili", "Estonian", "Korean", "Turkish"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]

_FILLER_USER = [
    "Can you check why invoice INV-{n4} shows {amt} instead of what we agreed?",
    "The export for {month} finished but half the columns are empty, any idea?",
    "I tried logging in from the new laptop and it keeps asking for the code again.",
    "Could you draft a short reply to the customer asking about order {ord}?",
    "What's the difference between the Team and Business plans again?",
    "Our API calls started getting 429s around noon, is there a limit I missed?",
    "Please summarize the thread about the {month} release notes for me.",
    "Ticket {tkt} is still open, can you see whether anyone picked it up?",
    "My colleague {name} needs access to the reporting workspace, how do I add her?",
    "Is there a way to schedule the weekly report to go out on Mondays?",
    "I need a refund estimate for order {ord}, it arrived damaged.",
    "Can you remind me how to rotate the API key without downtime?",
    "We're planning a team offsite in {city}, any tips for a group of twelve?",
    "The webhook endpoint returned 500 a few times last night, should I worry?",
    "How do I change the billing email on the account?",
    "Write me a polite note to {name} about the delayed shipment {ord}.",
    "Our account rep mentioned a discount code, where would I enter it?",
    "Can you translate this paragraph into plain English for the sales team?",
    "The mobile app crashed when I opened the settings tab, twice now.",
    "What time zone are the maintenance windows announced in?",
    "I'd like a checklist for onboarding two new support agents next week.",
    "Does the {month} invoice include the extra seats we added?",
    "Can you look up the status of case {tkt} for {name}?",
    "Any idea why the dashboard is so slow this morning?",
    "Give me three subject lines for the renewal reminder email.",
    "I'm thinking about a weekend trip to {city}, what should I not miss?",
    "How long do we keep audit logs by default?",
    "My friend {name} recommended a book on negotiation, can you suggest similar ones?",
    "The shipping label for {ord} printed with the wrong address format.",
    "Should we move the standup to 9:30 or keep it at 10?",
]
_FILLER_ASSISTANT = [
    "I checked that: the amount includes prorated seats from {month}, so it looks correct.",
    "That usually happens when the session cookie is blocked; clearing it should help.",
    "Here's a draft: thanks for your patience, we're looking into it and will update you by Friday.",
    "The Business plan adds SSO, audit logs and a 99.9% uptime commitment.",
    "The default limit is 600 requests per minute per key; bursts above that get a 429.",
    "Sure, the main points were the new export format, two bug fixes and a pricing change.",
    "I can see it was assigned this morning; the engineer left a note asking for logs.",
    "You can add her from Settings, then Members, then Invite, with the Analyst role.",
    "Yes, open the report, choose Schedule, and pick Monday at 8:00.",
    "Based on the order value the refund would be about {amt}, processed within five days.",
    "Create a second key, deploy it everywhere, then revoke the old one.",
    "For a group that size I'd book a guided walking tour and a long lunch somewhere central.",
    "A few 500s during the nightly deploy are expected; we retry each delivery three times.",
    "Billing email lives under Account, then Billing contacts.",
    "Done, I kept it short and apologetic, and mentioned the new delivery date.",
    "Discount codes go in the checkout step, under Have a code?",
    "Here is a plainer version, with the jargon removed and the numbers kept.",
    "Thanks for reporting it; updating to the latest version fixed that crash for most users.",
    "Maintenance windows are announced in UTC.",
    "Here's a checklist: accounts, shadowing sessions, macros, escalation paths, first solo shift.",
    "Yes, the extra seats appear as a separate line at the end of the invoice.",
    "It's waiting on the customer's reply since Tuesday.",
    "There was a slow database replica this morning; it was replaced an hour ago.",
    "How about: Your plan renews soon; Keep your workspace running; A quick note on renewal.",
    "Don't miss the old town in the evening and the market on Saturday morning.",
    "Audit logs are kept for 365 days on Business and 90 days on Team.",
    "You might like Never Split the Difference and Getting to Yes.",
    "That's a known template issue; reprinting from the order page uses the right format.",
    "9:30 gives the European folks a bit more overlap, I'd go with that.",
    "Good question, let me know if you want me to dig deeper.",
]
_ACKS = ["Got it, I've noted that.", "Thanks, noted.", "Okay, good to know.", "Understood, thanks for telling me.",
         "Noted, I'll keep that in mind.", "Great, thanks for the update."]


class _Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed

    def pick(self, items: list[str]) -> str:
        return self.rng.choice(items)

    def filler_slots(self) -> dict[str, str]:
        r = self.rng
        return {
            "n4": f"{r.randint(1000, 9999)}", "amt": f"${r.randint(12, 900)}.{r.randint(0, 99):02d}",
            "month": self.pick(_MONTHS), "ord": f"ORD-{r.randint(100000, 999999)}",
            "tkt": f"INC-{r.randint(10000, 99999)}", "name": self.pick(_FIRST), "city": self.pick(_CITIES),
        }

    def filler_pair(self) -> tuple[str, str]:
        s = self.filler_slots()
        return self.pick(_FILLER_USER).format(**s), self.pick(_FILLER_ASSISTANT).format(**s)


@dataclass(slots=True)
class _Plant:
    """Turns to place in given sessions, and the question they support."""

    qtype: QuestionType
    query: str
    # (session, role, text, supports)
    turns: list[tuple[int, Literal["user", "assistant"], str, bool]]


def _plants(g: _Gen, n_sessions: int) -> list[_Plant]:
    """One or two facts of every type, placed in the sessions before the last."""
    r = g.rng
    last = n_sessions - 1
    used_first = r.sample(_FIRST, 6)
    used_cities = r.sample(_CITIES, 6)
    def s() -> int:
        """A random earlier session."""
        return r.randint(0, last - 1)
    out: list[_Plant] = []

    badge = f"{r.choice('BKMT')}{r.randint(100, 999)}-{r.randint(10, 99)}"
    out.append(_Plant("single", "What is my employee badge number?", [
        (s(), "user", f"For the building access form, my employee badge number is {badge}.", True)]))
    allergen = g.pick(_ALLERGENS)
    out.append(_Plant("single", "What food am I allergic to? I need it for the catering order.", [
        (s(), "user", f"Heads up for any catering orders: I'm allergic to {allergen}.", True)]))
    tool = g.pick(_TOOLS)
    out.append(_Plant("single", "Which orchestration tool did the team choose for the pipeline migration?", [
        (s(), "user", f"We had the meeting and the team chose {tool} as the orchestration tool for the pipeline migration.", True)]))

    breed, pet = g.pick(_BREEDS), g.pick(_PET_NAMES)
    out.append(_Plant("paraphrase", "What kind of animal lives with me at home?", [
        (s(), "user", f"Sorry for the slow replies, we just adopted a {breed} puppy called {pet} and she chewed my charger.", True)]))
    hobby = g.pick(_HOBBIES)
    out.append(_Plant("paraphrase", "What do I do in my free time these days?", [
        (s(), "user", f"I've been {hobby} every Saturday morning since the spring, it really clears my head.", True)]))
    lang = g.pick(_LANGS)
    out.append(_Plant("paraphrase", "Which foreign tongue am I studying?", [
        (s(), "user", f"I signed up for evening {lang} classes, twice a week after work.", True)]))

    tkt = f"INC-{r.randint(10000, 99999)}"
    issue = g.pick(_ISSUES)
    out.append(_Plant("keyword", f"What was {tkt} about again?", [
        (s(), "user", f"I opened {tkt} for {issue}, can you keep an eye on it?", True)]))
    order = f"ORD-{r.randint(100000, 999999)}"
    item = r.choice(["standing desk", "noise-cancelling headset", "label printer", "ergonomic chair"])
    out.append(_Plant("keyword", f"Which product was in {order}?", [
        (s(), "user", f"Quick note: {order} is the {item} I bought for the new hire.", True)]))

    sister, city = used_first[0], used_cities[0]
    a, b = sorted(r.sample(range(last), 2))
    out.append(_Plant("multihop", "Which city is my sister moving to?", [
        (a, "user", f"My sister {sister} is staying with us for a few days, so I might be slower to reply.", True),
        (b, "user", f"{sister} finally signed the lease, she's relocating to {city} in the autumn.", True)]))
    code, proj = g.pick(_CODENAMES), g.pick(_PROJECTS)
    month = g.pick(_MONTHS)
    a, b = sorted(r.sample(range(last), 2))
    out.append(_Plant("multihop", f"When is the {proj} due now?", [
        (a, "user", f"Internally we call the {proj} project {code}, in case you see that name in tickets.", True),
        (b, "user", f"Leadership pushed {code} again, the new deadline is the end of {month}.", True)]))
    boss = used_first[1]
    company = g.pick(_COMPANIES)
    a, b = sorted(r.sample(range(last), 2))
    out.append(_Plant("multihop", "Where does my manager used to work before joining us?", [
        (a, "user", f"{boss} is my new manager as of this week, she runs the platform group.", True),
        (b, "user", f"Fun fact, {boss} spent six years at {company} before she came here.", True)]))

    streets = r.sample(_STREETS, 3)
    k = r.choice([2, 3])
    sess = sorted(r.sample(range(last), k))
    addr_turns: list[tuple[int, Literal["user", "assistant"], str, bool]] = [
        (sess[0], "user", f"My shipping address is {r.randint(2, 99)} {streets[0]}, please use it for hardware orders.", False)]
    for i in range(1, k):
        addr_turns.append((sess[i], "user", f"I moved, please update my shipping address to {r.randint(2, 99)} {streets[i]}.", i == k - 1))
    out.append(_Plant("temporal", "What's my current shipping address?", addr_turns))
    seats = r.sample(range(5, 60), 3)
    sess = sorted(r.sample(range(last), 3))
    out.append(_Plant("temporal", "How many seats are we on now?", [
        (sess[0], "user", f"We're on the Team plan with {seats[0]} seats.", False),
        (sess[1], "user", f"We grew, so we bumped the plan to {seats[1]} seats this month.", False),
        (sess[2], "user", f"After the reorg we're changing to {seats[2]} seats from the next cycle.", True)]))

    place = g.pick(_PLACES)
    pw = f"{r.choice(['otter', 'maple', 'comet', 'harbor'])}-{r.randint(1000, 9999)}"
    sp = s()
    out.append(_Plant("pair", f"Remind me of the wifi password at the {place} office?", [
        (sp, "user", f"What's the wifi password for the {place} office?", True),
        (sp, "assistant", f"It's {pw}, all lowercase.", True)]))
    gate = f"{r.randint(1000, 9999)}#"
    sp = s()
    out.append(_Plant("pair", "What's the code for the loading dock gate?", [
        (sp, "user", "Do you still have the code for the loading dock gate?", True),
        (sp, "assistant", f"Yes: {gate}. It changes at the start of each quarter.", True)]))
    return out


def _distractors(g: _Gen) -> list[str]:
    """User turns close to the planted facts in words but not the answer."""
    r = g.rng
    return [
        f"My colleague {g.pick(_FIRST)} lost her badge again, the new one is {r.choice('BKMT')}{r.randint(100, 999)}-{r.randint(10, 99)}.",
        f"{g.pick(_FIRST)} from sales is allergic to {g.pick(_ALLERGENS)}, so skip that at the party.",
        f"Another team is evaluating {g.pick(_TOOLS)} for their workflows but nothing is decided.",
        f"My neighbour's {g.pick(_BREEDS)} barks all night, it's exhausting.",
        f"I opened INC-{r.randint(10000, 99999)} for {g.pick(_ISSUES)}, low priority though.",
        f"ORD-{r.randint(100000, 999999)} is a {r.choice(['monitor arm', 'webcam', 'desk lamp'])} for the office.",
        f"My cousin {g.pick(_FIRST)} visited {g.pick(_CITIES)} last year and loved it.",
        f"The office shipping address is {r.randint(2, 99)} {g.pick(_STREETS)}, in case a courier asks.",
        f"The {g.pick(_PLACES)} office changed its door code last week, facilities sent a note.",
        f"The project deadline for the {g.pick(_PROJECTS)} is not set yet, everyone's guessing.",
        f"{g.pick(_FIRST)} used to work at {g.pick(_COMPANIES)}, small world.",
        f"Do we need more seats? {g.pick(_FIRST)} says the sales team might grow.",
    ]


def make_dataset(seed: int, users: int = 8, tenant: str | None = None) -> Dataset:
    g = _Gen(seed)
    r = g.rng
    ds = Dataset(seed=seed, tenant=tenant or f"quality-{seed}")
    for u in range(users):
        user = f"u{u}"
        n_sessions = r.randint(20, 32)
        plants = _plants(g, n_sessions)
        by_session: dict[int, list[tuple[int, _Plant, tuple[int, Literal["user", "assistant"], str, bool]]]] = {}
        for pi, plant in enumerate(plants):
            for ti, t in enumerate(plant.turns):
                by_session.setdefault(t[0], []).append((pi, plant, t))
                _ = ti
        distract = _distractors(g)
        support: dict[int, list[str]] = {i: [] for i in range(len(plants))}
        start = _T0 + timedelta(hours=r.randint(0, 48))
        scopes: list[str] = []
        for s in range(n_sessions):
            scope = f"chat:{user}:s{s:02d}"
            scopes.append(scope)
            at = start + timedelta(days=3 * s, hours=r.randint(0, 8))
            final = s == n_sessions - 1
            n_pairs = r.randint(4, 10) if final else r.randint(10, 30)
            # Planted turns go at random places between filler pairs (a pair stays together).
            slots: list[list[_Slot]] = []
            for _ in range(n_pairs):
                if r.random() < 0.08 and distract:
                    text = distract.pop(r.randrange(len(distract)))
                    slots.append([("user", text, None), ("assistant", r.choice(_ACKS), None)])
                else:
                    ut, at_ = g.filler_pair()
                    slots.append([("user", ut, None), ("assistant", at_, None)])
            planted = by_session.get(s, [])
            i = 0
            while i < len(planted):
                pi, plant, (_, role, text, sup) = planted[i]
                nxt = planted[i + 1] if i + 1 < len(planted) else None
                if nxt is not None and nxt[0] == pi and nxt[2][1] == "assistant":
                    # A question/answer pair: the reply holds the answer.
                    pair: list[_Slot] = [
                        ("user", text, pi if sup else None), ("assistant", nxt[2][2], pi if nxt[2][3] else None)]
                    i += 2
                else:
                    pair = [(role, text, pi if sup else None), ("assistant", r.choice(_ACKS), None)]
                    i += 1
                slots.insert(r.randint(0, len(slots)), pair)
            n = 0
            for placed in slots:
                for role, text, pidx in placed:
                    eid = f"q{seed}-{user}-s{s:02d}-t{n:03d}"
                    ds.turns.append(Turn(eid, user, scope, s, role, text, at + timedelta(minutes=2 * n)))
                    if pidx is not None:
                        support[pidx].append(eid)
                    n += 1
            if final:
                asked = at + timedelta(minutes=2 * n + 1)
                for pi, plant in enumerate(plants):
                    ds.questions.append(Question(
                        qid=f"q{seed}-{user}-{pi:02d}", user=user, qtype=plant.qtype, query=plant.query,
                        support=tuple(support[pi]), scope=scope, scopes=tuple(scopes[:-1]), asked_at=asked,
                    ))
    ds.turns.sort(key=lambda t: (t.occurred_at, t.event_id))
    return ds


if __name__ == "__main__":
    d = make_dataset(1)
    print(len(d.turns), "turns,", len(d.questions), "questions")
    for q in d.questions[:16]:
        print(q.qtype, q.query, q.support)
