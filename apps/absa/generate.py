"""The default ABSA dataset: generated restaurant and laptop reviews with exact aspect labels.

It is built to make the claim of PSSA (Tang et al., ACL 2019) measurable: an attention model
over-attends the frequent sentiment words and under-learns the infrequent ones, and PSSA, which
masks the most attended word in later rounds, recovers them. Hence (version 2):

- the opinion lexicon (about 215 single-token adjectives and participles per polarity) is sampled
  with Zipf weights within each polarity, so a handful of words are very frequent and most occur
  only 1 to 5 times as an opinion in train (close to a third of the lexicon never does);
- in training, a rare opinion word always shares its clause with a frequent word of the same
  polarity ("the pasta was great and scrumptious"), and a medium word mostly does: the frequent
  word alone explains the label and shadows the rarer one, which is the word recorded as ``opinion``;
- in test, rare words mostly stand alone, and a share of the clauses draws its word uniformly from
  the rare words seen in training, so accuracy on rare opinion words is estimated on enough examples;
- opinion words also occur where they decide no label, as in real reviews: in opinions about
  things that are not aspects ("the weather was awful , but the pasta was great") and in neutral
  questions ("i asked whether the pasta was good"); neutral clauses often state a fact in an
  opinion's place ("the pasta was homemade"), so an unfamiliar word in that slot may be factual as
  well as positive or negative; aspects carry neutral modifiers with a long tail of their own
  ("the grilled pasta").

Negation ("not", "never", "hardly" before the opinion word) flips the label; contrast sentences hold
two aspects with opposite opinions, pair sentences two aspects with independent labels (neutral
included), so the label depends on which clause the aspect is in. Every label is exactly determined
by the sentence. Every example records its opinion word, whether it is negated, and exact offsets.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np

from apps.common.io import atomic_write, sha256_file

from .formats import POLARITIES, AspectExample, write_semeval_xml

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2
"""Bumped whenever the word lists or the sampling change, so that cached datasets are rebuilt."""

ANY, RESTAURANT, LAPTOP = "any", "restaurant", "laptop"
DOMAINS = (RESTAURANT, LAPTOP)

# Opinion words by decreasing intended frequency (the Zipf rank is the position). A ":r" or ":l"
# suffix restricts a word to restaurant or laptop aspects; the others describe any aspect.
_POSITIVE_SPEC = """
    great good excellent delicious:r amazing nice friendly fast fantastic tasty:r perfect wonderful
    fresh:r awesome reliable:l superb lovely impressive outstanding responsive:l terrific
    attentive:r flavorful:r brilliant solid helpful sleek:l pleasant generous:r crisp sturdy:l
    exceptional delightful cozy:r quick affordable superior spotless polished snappy:l beautiful
    intuitive:l smooth juicy:r elegant comfortable powerful:l tender:r efficient courteous:r
    scrumptious:r exquisite gorgeous splendid marvelous flawless durable:l stellar succulent:r
    charming dependable:l phenomenal quiet heavenly:r lightweight:l zippy:l immaculate yummy:r
    fabulous luscious:r bright commendable incredible nifty:l sublime authentic:r remarkable
    portable:l admirable welcoming:r vibrant toothsome:r speedy:l memorable divine:r enjoyable
    praiseworthy knowledgeable:r seamless:l satisfying delectable:r refreshing peerless hearty:r
    versatile:l crackerjack creamy:r ambrosial:r fluffy:r stylish accommodating:r handy:l savory:r
    convenient prompt spacious roomy:r sharp:l vivid:l moist:r appetizing:r inviting:r relaxing:r
    classy chic professional zesty:r aromatic:r fragrant:r wholesome:r mouthwatering:r competent
    capable:l practical:l valuable worthwhile lively cheerful magnificent dazzling stunning
    breathtaking impeccable pristine tidy neat agreeable pleasing gratifying rewarding sensational
    spectacular extraordinary robust:l rugged:l resilient:l stable:l consistent accurate:l
    precise:l silent:l nimble:l agile:l effortless streamlined:l ergonomic:l luminous:l radiant
    sumptuous:r opulent:r lavish:r plush velvety:r silky:r buttery:r tangy:r piquant:r palatable:r
    flavorsome:r nourishing:r bountiful:r plentiful:r ample honest sincere thoughtful considerate
    caring patient obliging:r diligent meticulous reputable trustworthy faultless unbeatable
    matchless unrivaled blissful idyllic:r serene:r peaceful homey:r quaint:r festive:r romantic:r
    intimate:r swift brisk rapid:l fluid:l laudable estimable sterling wondrous resplendent
    felicitous meritorious dandy swell groovy super glorious majestic superlative
"""
_NEGATIVE_SPEC = """
    bad terrible awful horrible slow poor bland:r disappointing overpriced mediocre rude cold:r
    buggy:l noisy greasy:r useless stale:r flimsy:l dreadful lousy unreliable:l soggy:r expensive
    sluggish:l subpar dismal glitchy:l inedible:r shoddy atrocious laggy:l rancid:r dirty abysmal
    pathetic clunky:l tasteless:r appalling unfriendly dreary defective:l overcooked:r lackluster
    deplorable finicky:l gummy:r dire wretched unresponsive:l rubbery:r insipid:r abominable
    flaky:l vile lamentable sloppy janky:l gristly:r execrable shabby creaky:l unpalatable:r woeful
    substandard filthy loud cramped crowded:r inattentive:r careless incompetent unhelpful arrogant
    dismissive impolite surly grumpy hostile burnt:r undercooked:r mushy:r watery:r oily:r
    lukewarm:r tepid:r pricey exorbitant unreasonable ridiculous outrageous unacceptable
    inexcusable horrendous hideous ugly gaudy tacky dingy grimy sticky smelly:r stinky:r musty
    dated outdated:l obsolete:l fragile:l brittle:l wobbly:l faulty:l broken:l damaged:l unstable:l
    glacial tedious annoying irritating frustrating infuriating maddening confusing unintuitive:l
    awkward cumbersome:l bulky:l dim:l blurry:l grainy:l fuzzy:l tinny:l muffled:l scratchy:l harsh
    jarring uncomfortable unbearable intolerable miserable unpleasant disgusting:r revolting:r
    nauseating:r repulsive:r gross nasty foul putrid:r moldy:r spoiled:r flavorless:r
    unappetizing:r uninspired boring forgettable pointless worthless inadequate insufficient meager
    skimpy:r stingy paltry measly sparse chaotic disorganized unprofessional negligent lazy
    indifferent snooty pretentious condescending overrated overhyped underwhelming unimpressive
    unsatisfying deficient crummy cruddy junky:l trashy flawed problematic erratic inconsistent
    unpredictable sweltering:r stuffy:r drafty:r gloomy depressing bleak seedy:r sketchy
    unsanitary:r unhygienic:r grubby sleazy horrid ghastly frightful unusable:l unworkable:l
    malfunctioning:l crappy abhorrent detestable loathsome regrettable pitiful shameful disgraceful
    scandalous rotten:r
"""
_DOMAIN_TAGS = {"": ANY, "r": RESTAURANT, "l": LAPTOP}


def _parse_words(spec: str) -> tuple[tuple[str, str], ...]:
    entries = []
    for item in spec.split():
        word, _, tag = item.partition(":")
        entries.append((word, _DOMAIN_TAGS[tag]))
    return tuple(entries)


POSITIVE_WORDS: tuple[tuple[str, str], ...] = _parse_words(_POSITIVE_SPEC)
NEGATIVE_WORDS: tuple[tuple[str, str], ...] = _parse_words(_NEGATIVE_SPEC)


@dataclass(frozen=True)
class Aspect:
    """An aspect term (tokens separated by single spaces); ``plural`` picks "are"/"were"."""

    term: str
    plural: bool = False
    dish: bool = False


ASPECTS: dict[str, tuple[Aspect, ...]] = {
    RESTAURANT: (
        Aspect("food", dish=True), Aspect("pasta", dish=True), Aspect("pizza", dish=True),
        Aspect("sushi", dish=True), Aspect("service"), Aspect("wait staff", plural=True), Aspect("waiter"),
        Aspect("ambience"), Aspect("decor"), Aspect("prices", plural=True), Aspect("wine list"),
        Aspect("dessert", dish=True), Aspect("menu"), Aspect("portions", plural=True),
        Aspect("staff", plural=True), Aspect("atmosphere"), Aspect("bread", dish=True),
        Aspect("coffee", dish=True), Aspect("fries", plural=True, dish=True), Aspect("goat cheese", dish=True),
    ),
    LAPTOP: (
        Aspect("battery life"), Aspect("screen"), Aspect("keyboard"), Aspect("price"), Aspect("performance"),
        Aspect("speakers", plural=True), Aspect("touchpad"), Aspect("hard drive"), Aspect("operating system"),
        Aspect("graphics card"), Aspect("processor"), Aspect("memory"), Aspect("customer service"),
        Aspect("charger"), Aspect("display"), Aspect("fan"), Aspect("webcam"), Aspect("build quality"),
        Aspect("boot time"), Aspect("software"),
    ),
}  # fmt: skip

# Neutral modifiers placed before an aspect term, outside its span ("the grilled pasta"): they
# carry no sentiment, are drawn with Zipf weights (so most are rare) and occur under every label,
# which gives the context the lexical variety of real reviews.
DISH_MODIFIERS = tuple(
    """
    grilled roasted baked fried steamed smoked homemade seasonal vegetarian vegan italian thai mexican
    french greek indian korean japanese chinese spanish lebanese turkish vietnamese garlic lemon tomato
    mushroom chicken beef pork shrimp salmon tuna basil ginger sesame coconut almond chocolate vanilla
    caramel mango berry apple pumpkin cinnamon honey pepper olive truffle saffron lentil spinach potato
    onion bacon sausage turkey lamb duck crab lobster oyster squid tofu noodle rice bean corn wheat rye
    sourdough walnut pistachio hazelnut espresso matcha peach cherry plum fig
    """.split()
)
VENUE_MODIFIERS = tuple(
    """
    lunch dinner brunch weekend evening morning weekday holiday upstairs downstairs patio bar downtown
    uptown midtown daily sunday monday tuesday wednesday thursday friday saturday summer winter autumn
    spring night afternoon banquet terrace courtyard lounge counter takeout delivery catering
    """.split()
)
LAPTOP_MODIFIERS = tuple(
    """
    default builtin external wireless backlit aluminum standard onboard integrated dedicated factory
    stock original replacement spare internal main secondary rear front upper lower matte touchscreen
    widescreen lenovo dell asus acer toshiba samsung sony intel nvidia windows linux ubuntu chrome
    microsoft gaming office travel student business desktop mobile usb bluetooth quad octa dual
    """.split()
)
# Factual predicates: neutral clauses shaped like opinions ("the pasta was homemade"), so that an
# unfamiliar word in the opinion slot may be factual as well as positive or negative.
FACTUAL_PREDICATES: dict[str, tuple[str, ...]] = {
    RESTAURANT: tuple(
        """
        homemade vegetarian italian grilled seasonal baked vegan fried thai mexican roasted french
        steamed greek smoked indian boiled korean sliced japanese stuffed chinese marinated spanish
        imported lebanese square turkish round vietnamese red green yellow brown white purple pink
        beige handwritten printed laminated bilingual unchanged buffet traditional regional halal
        kosher decaf caffeinated unsalted gluten dairy carbonated sparkling bottled canned shredded
        diced minced mashed pureed chilled frozen
        """.split()
    ),
    LAPTOP: tuple(
        """
        black silver grey white aluminum wireless backlit removable detachable replaceable
        preinstalled integrated dedicated external internal rectangular matte mechanical optical
        digital analog widescreen refurbished unchanged foldable blue red metallic glossy plastic
        rubberized magnetic modular soldered upgradable proprietary optional included numeric
        partitioned encrypted formatted unlocked licensed bundled virtual physical onboard discrete
        """.split()
    ),
}
NEGATORS = ("not", "never", "hardly")
INTENSIFIERS = ("really", "very", "quite", "so", "extremely", "truly")
OPENERS = ("honestly ,", "overall ,", "frankly ,", "i must say", "to be fair ,", "in short ,")
PREFIX_FILLERS: dict[str, tuple[str, ...]] = {
    RESTAURANT: (
        "we went there on a friday night",
        "we came here for a birthday dinner",
        "my wife and i stopped by after work",
        "we sat near the window",
        "it was our second visit",
        "we had a reservation for eight",
    ),
    LAPTOP: (
        "i bought this machine last month",
        "i use it for school and work",
        "after two weeks of daily use",
        "i upgraded from an older model",
        "my brother recommended this model",
        "i mostly use it for writing",
    ),
}
SUFFIX_FILLERS = ("this time", "if you ask me", "from what i saw", "in my experience", "as far as i can tell")
# Neutral (factual) clauses: "{A}" is the aspect term, "{BE}"/"{WAS}" agree with it.
DISH_NEUTRAL_CLAUSES = (
    "we ordered the {A}",
    "my friend chose the {A}",
    "we had the {A} around nine",
    "they brought the {A} after we sat down",
)
NEUTRAL_CLAUSES: dict[str, tuple[str, ...]] = {
    RESTAURANT: (
        "i asked about the {A}",
        "we talked about the {A}",
        "my friend commented on the {A}",
        "the {A} {BE} mentioned on their website",
    ),
    LAPTOP: (
        "i checked the {A} before buying it",
        "the {A} {BE} described in the manual",
        "i tested the {A} at the store",
        "i compared the {A} with my old one",
        "the {A} {BE} listed in the specifications",
        "i looked up the {A} online",
    ),
}
GENERIC_NEUTRAL_CLAUSES = (
    "i have a question about the {A}",
    "let me talk about the {A}",
    "the review mentions the {A}",
    "my friend asked me about the {A}",
)
# Neutral clauses that mention an opinion word without expressing an opinion (a question or a
# wish about the aspect): "{OP}" is any opinion word; the label stays neutral.
HYPOTHETICAL_CLAUSES = (
    "i asked whether the {A} {WAS} {OP}",
    "we wondered if the {A} would be {OP}",
    "my friend wanted to know if the {A} {BE} {OP}",
    "i could not tell whether the {A} {WAS} {OP}",
    "the ad claims the {A} {BE} {OP}",
)
# Predicative templates (negation allowed): "{A}" aspect, "{BE}"/"{WAS}" agree with it, "{OP}" opinion.
PREDICATIVE_TEMPLATES = (
    "the {A} {WAS} {OP}",
    "the {A} {BE} {OP}",
    "i found the {A} {OP}",
    "the {A} here {BE} {OP}",
    "i thought the {A} {WAS} {OP}",
    "the {A} seemed {OP}",
    "the {A} turned out to be {OP}",
    "in my view the {A} {WAS} {OP}",
)
# Prenominal templates (no negation): "{OP} {A}".
PRENOMINAL_TEMPLATES = ("{OP} {A}", "such {OP} {A}", "what {OP} {A}", "they have {OP} {A}")
CONTRAST_CONNECTORS = (", but", "but", ", while", ", whereas", ", however ,")
SAME_CONNECTORS = ("and", ", and", ", and also")
# Distractor clauses: an opinion about something that is not an annotated aspect ("{OP}" is any
# opinion word of either polarity). They precede the aspect clauses and never change a label.
DISTRACTOR_CLAUSES: dict[str, tuple[str, ...]] = {
    RESTAURANT: (
        "the weather was {OP}",
        "the drive there was {OP}",
        "the movie we saw before was {OP}",
        "our week had been {OP}",
        "the street outside was {OP}",
    ),
    LAPTOP: (
        "my old phone was {OP}",
        "my previous laptop was {OP}",
        "the weather that week was {OP}",
        "the movie i watched first was {OP}",
        "the shipping box was {OP}",
    ),
}


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes, seed and the probabilities of every phenomenon of the generated dataset.

    Sizes count aspect examples, not sentences. Probabilities of clause phenomena apply per aspect
    clause; ``neutral_share`` is the target share of neutral examples over all sentence kinds.
    """

    n_train: int = 6000
    n_test: int = 2000
    seed: int = 0
    rare_fraction: float = 0.8
    """Share of each polarity's lexicon, the lowest Zipf weights, marked rare."""
    zipf_exponent: float = 1.3
    """Sampling weight of the word of rank r (1-based, within its polarity) is r ** -zipf_exponent."""
    frequent_size: int = 5
    """The top words of each polarity: the shadowing partner of a rarer word is one of them."""
    neutral_share: float = 1 / 3
    negation_prob: float = 0.25
    negate_rare: bool = True
    """Negated clauses draw from the whole lexicon; else only from words that are not rare."""
    contrast_prob: float = 0.2
    """Sentences with two aspects of opposite polarity ("... great but the Y was awful")."""
    pair_prob: float = 0.2
    """Sentences with two aspects of independently drawn labels."""
    shadow_prob: float = 1.0
    """Train: a non-negated clause whose word is rare also gets a frequent same-polarity word."""
    medium_shadow_prob: float = 0.7
    """Train: the same for words neither frequent nor rare."""
    test_shadow_prob: float = 0.05
    """Test: the same for every word that is not frequent (rare words mostly stand alone)."""
    test_rare_prob: float = 0.35
    """Test: a clause draws its word uniformly from the rare words seen as opinions in train."""
    distractor_prob: float = 0.2
    """A sentence opens with an opinion about a non-aspect ("the weather was awful , but ...")."""
    factual_prob: float = 0.5
    """A neutral clause states a fact in an opinion's place ("the pasta was homemade")."""
    hypothetical_prob: float = 0.4
    """Otherwise, a neutral clause asks about an opinion word without holding it ("i asked whether ...")."""
    modifier_prob: float = 0.5
    """An aspect term gets a neutral modifier before it ("the grilled pasta")."""
    modifier_exponent: float = 1.0
    """Zipf exponent of the modifiers' sampling weights."""
    intensifier_prob: float = 0.25
    prenominal_prob: float = 0.25
    filler_prob: float = 0.25
    context_sentences: int = 0
    """Extra sentences around each aspect sentence, making a short review (0: single sentences, the
    default dataset): each is an opinion about a non-aspect (either polarity) or a neutral remark,
    placed before or after the aspect sentence with equal probability; labels are unchanged."""

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(f"n_train and n_test must be positive, got {self.n_train}, {self.n_test}")
        probabilities = {
            name: getattr(self, name)
            for name in (
                "rare_fraction neutral_share negation_prob contrast_prob pair_prob shadow_prob "
                "medium_shadow_prob test_shadow_prob test_rare_prob distractor_prob hypothetical_prob "
                "factual_prob modifier_prob intensifier_prob prenominal_prob filler_prob"
            ).split()
        }
        for name, value in probabilities.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"GeneratorConfig.{name} must lie in [0, 1], got {value}")
        for name in ("zipf_exponent", "modifier_exponent"):
            if getattr(self, name) < 0:
                raise ValueError(f"GeneratorConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.contrast_prob + self.pair_prob >= 1.0:
            raise ValueError("GeneratorConfig.contrast_prob + pair_prob must be below 1")
        if not 1 <= self.frequent_size < min(len(POSITIVE_WORDS), len(NEGATIVE_WORDS)) // 4:
            raise ValueError(f"GeneratorConfig.frequent_size out of range: {self.frequent_size}")
        if not 0 <= int(self.context_sentences) == self.context_sentences:
            raise ValueError(
                f"GeneratorConfig.context_sentences must be an integer >= 0, got {self.context_sentences}"
            )
        if self.single_neutral_prob > 1.0:
            raise ValueError(
                f"neutral_share={self.neutral_share} is unreachable with contrast_prob={self.contrast_prob} "
                f"and pair_prob={self.pair_prob} (contrast sentences have no neutral aspect)"
            )

    @property
    def single_neutral_prob(self) -> float:
        """Neutral probability of one-aspect sentences that makes the overall neutral share ``neutral_share``.

        Per sentence: expected aspects ``1 + c + p``, expected neutral ones ``(1 - c - p) q1 + 2 p q``.
        """
        c, p, q = self.contrast_prob, self.pair_prob, self.neutral_share
        return q * (1 + c - p) / (1 - c - p)


@dataclass(frozen=True)
class OpinionWord:
    """A lexicon entry; ``weight`` is its Zipf sampling weight, normalised within its polarity."""

    word: str
    polarity: str
    domain: str
    rank: int
    weight: float
    rare: bool
    frequent: bool


class _Table:
    """Words with cumulative weights, for drawing by ``bisect`` on one uniform number."""

    def __init__(self, words: Sequence[OpinionWord], uniform: bool = False) -> None:
        self.words = list(words)
        self.cumulative = list(accumulate(1.0 if uniform else w.weight for w in self.words))

    def draw(self, u: float) -> OpinionWord:
        return self.words[
            min(bisect.bisect_right(self.cumulative, u * self.cumulative[-1]), len(self.words) - 1)
        ]


def build_lexicon(config: GeneratorConfig) -> list[OpinionWord]:
    """The opinion lexicon with Zipf weights (normalised within each polarity) and rare/frequent flags."""
    lexicon = []
    for polarity, entries in (("positive", POSITIVE_WORDS), ("negative", NEGATIVE_WORDS)):
        raw = [(rank + 1) ** -config.zipf_exponent for rank in range(len(entries))]
        total = sum(raw)
        n_rare = round(config.rare_fraction * len(entries))
        for rank, ((word, domain), weight) in enumerate(zip(entries, raw)):
            lexicon.append(
                OpinionWord(
                    word=word,
                    polarity=polarity,
                    domain=domain,
                    rank=rank + 1,
                    weight=weight / total,
                    rare=rank >= max(len(entries) - n_rare, config.frequent_size),
                    frequent=rank < config.frequent_size,
                )
            )
    return lexicon


class _SplitGenerator:
    """Draws the sentences of one split from its own random stream."""

    def __init__(
        self,
        config: GeneratorConfig,
        lexicon: Sequence[OpinionWord],
        rng: np.random.Generator,
        split: str,
        train_opinions: set[str] | None = None,
    ) -> None:
        self.config = config
        self.rng = rng
        self.split = split
        self.is_train = split == "train"
        self.rare_prob = 0.0 if self.is_train else config.test_rare_prob
        self.tables: dict[tuple[str, str, str], _Table] = {}
        for domain in DOMAINS:
            for polarity in ("positive", "negative"):
                eligible = [w for w in lexicon if w.polarity == polarity and w.domain in (ANY, domain)]
                key = (domain, polarity)
                self.tables[(*key, "all")] = _Table(eligible)
                self.tables[(*key, "frequent")] = _Table([w for w in eligible if w.frequent])
                self.tables[(*key, "common")] = _Table([w for w in eligible if not w.rare])
                rare = [
                    w for w in eligible if w.rare and (train_opinions is None or w.word in train_opinions)
                ]
                rare = rare or [w for w in eligible if w.rare] or eligible
                self.tables[(*key, "rare")] = _Table(rare, uniform=True)
        self.modifiers = {
            key: (
                words,
                list(accumulate((rank + 1) ** -config.modifier_exponent for rank in range(len(words)))),
            )
            for key, words in (
                ("dish", DISH_MODIFIERS),
                (RESTAURANT, VENUE_MODIFIERS),
                (LAPTOP, LAPTOP_MODIFIERS),
            )
        }
        self.factual = {
            domain: (
                words,
                list(accumulate((rank + 1) ** -config.modifier_exponent for rank in range(len(words)))),
            )
            for domain, words in FACTUAL_PREDICATES.items()
        }
        self.shadowed: list[bool] = []
        """Per generated example: its clause pairs the opinion word with a frequent one."""
        self.examples_by_rare_draw = 0
        self.distractor_sentences = 0
        self.context_opinions = 0
        self.hypothetical_clauses = 0

    def uniform(self) -> float:
        return float(self.rng.random())

    def chance(self, probability: float) -> bool:
        return probability > 0.0 and self.uniform() < probability

    def pick(self, options: Sequence[Any]) -> Any:
        return options[min(int(self.uniform() * len(options)), len(options) - 1)]

    def intensified(self, word: str) -> list[str]:
        if self.chance(self.config.intensifier_prob):
            return [self.pick(INTENSIFIERS), word]
        return [word]

    def shadow_prob(self, word: OpinionWord) -> float:
        """Probability that a frequent same-polarity word joins ``word`` in its clause."""
        if word.frequent:
            return 0.0
        if not self.is_train:
            return self.config.test_shadow_prob
        return self.config.shadow_prob if word.rare else self.config.medium_shadow_prob

    def draw_word(self, domain: str, polarity: str, negated: bool = False) -> OpinionWord:
        """A Zipf draw (or, in test, a uniform draw among rare words); negation takes common words."""
        if negated and not self.config.negate_rare:
            return self.tables[(domain, polarity, "common")].draw(self.uniform())
        if self.chance(self.rare_prob):
            self.examples_by_rare_draw += 1
            return self.tables[(domain, polarity, "rare")].draw(self.uniform())
        return self.tables[(domain, polarity, "all")].draw(self.uniform())

    def opinion_phrase(
        self, domain: str, polarity: str, allow_negation: bool
    ) -> tuple[list[str], str, bool, bool]:
        """Tokens of an opinion phrase for a clause labelled ``polarity``: (tokens, opinion, negated, shadowed)."""
        if allow_negation and self.chance(self.config.negation_prob):
            flipped = "negative" if polarity == "positive" else "positive"
            word = self.draw_word(domain, flipped, negated=True).word
            return [self.pick(NEGATORS), *self.intensified(word)], word, True, False
        word = self.draw_word(domain, polarity)
        if self.chance(self.shadow_prob(word)):
            frequent = self.tables[(domain, polarity, "frequent")].draw(self.uniform()).word
            first, second = (frequent, word.word) if self.chance(0.5) else (word.word, frequent)
            joiner = ["and"] if self.chance(0.8) else [","]
            return [*self.intensified(first), *joiner, *self.intensified(second)], word.word, False, True
        return self.intensified(word.word), word.word, False, False

    def clause(
        self, domain: str, aspect: Aspect, polarity: str, prenominal_ok: bool
    ) -> tuple[list[str], tuple[int, int], str | None, bool, bool]:
        """Tokens of one aspect clause, the aspect's token span, its opinion word, negation, shadowing."""
        term, plural = aspect.term, aspect.plural
        shadowed = False
        if polarity == "neutral":
            dish = DISH_NEUTRAL_CLAUSES if aspect.dish else ()
            opinion_tokens: list[str] = []
            if self.chance(self.config.factual_prob):
                template = self.pick(PREDICATIVE_TEMPLATES)
                words, cumulative = self.factual[domain]
                index = bisect.bisect_right(cumulative, self.uniform() * cumulative[-1])
                opinion_tokens = [words[min(index, len(words) - 1)]]
            elif self.chance(self.config.hypothetical_prob):
                template = self.pick(HYPOTHETICAL_CLAUSES)
                polarity_of_word = "positive" if self.chance(0.5) else "negative"
                opinion_tokens = [self.tables[(domain, polarity_of_word, "all")].draw(self.uniform()).word]
                self.hypothetical_clauses += 1
            else:
                template = self.pick(NEUTRAL_CLAUSES[domain] + dish + GENERIC_NEUTRAL_CLAUSES)
            opinion, negated = None, False
        else:
            prenominal = prenominal_ok and self.chance(self.config.prenominal_prob)
            template = self.pick(PRENOMINAL_TEMPLATES if prenominal else PREDICATIVE_TEMPLATES)
            opinion_tokens, opinion, negated, shadowed = self.opinion_phrase(domain, polarity, not prenominal)
        modifier = self.modifier(domain, aspect) if self.chance(self.config.modifier_prob) else []
        tokens: list[str] = []
        span = (0, 0)
        for piece in template.split():
            if piece == "{A}":
                tokens.extend(modifier)
                span = (len(tokens), len(tokens) + len(term.split()))
                tokens.extend(term.split())
            elif piece == "{OP}":
                tokens.extend(opinion_tokens)
            elif piece == "{BE}":
                tokens.append("are" if plural else "is")
            elif piece == "{WAS}":
                tokens.append("were" if plural else "was")
            else:
                tokens.append(piece)
        return tokens, span, opinion, negated, shadowed

    def modifier(self, domain: str, aspect: Aspect) -> list[str]:
        words, cumulative = self.modifiers["dish" if aspect.dish else domain]
        index = bisect.bisect_right(cumulative, self.uniform() * cumulative[-1])
        return [words[min(index, len(words) - 1)]]

    def polarity(self, neutral_prob: float) -> str:
        if self.chance(neutral_prob):
            return "neutral"
        return "positive" if self.chance(0.5) else "negative"

    def distractor(self, domain: str, first_polarity: str) -> list[str]:
        """An opinion about a non-aspect, joined by "but" when it contrasts with the first aspect."""
        polarity = "positive" if self.chance(0.5) else "negative"
        word = self.tables[(domain, polarity, "all")].draw(self.uniform()).word
        clause = self.pick(DISTRACTOR_CLAUSES[domain]).replace("{OP}", word).split()
        contrast = {polarity, first_polarity} == {"positive", "negative"}
        self.distractor_sentences += 1
        return [*clause, ",", "but" if contrast else "and"]

    def with_context(self, domain: str, tokens: list[str]) -> tuple[list[str], int]:
        """`tokens` with `context_sentences` sentences before or after it, and how far it moved."""
        before: list[str] = []
        after: list[str] = []
        for _ in range(self.config.context_sentences):
            if self.chance(0.5):
                polarity = "positive" if self.chance(0.5) else "negative"
                word = self.tables[(domain, polarity, "all")].draw(self.uniform()).word
                extra = self.pick(DISTRACTOR_CLAUSES[domain]).replace("{OP}", word).split()
                self.context_opinions += 1
            else:
                extra = self.pick(PREFIX_FILLERS[domain]).split()
            extra.append(".")
            if self.chance(0.5):
                before = extra + before
            else:
                after.extend(extra)
        return before + tokens + after, len(before)

    def sentence(self, sentence_id: str, max_aspects: int) -> list[AspectExample]:
        """One sentence with one or two aspect examples."""
        config = self.config
        domain = self.pick(DOMAINS)
        kind = self.uniform()
        if max_aspects >= 2 and kind < config.contrast_prob:
            first = "positive" if self.chance(0.5) else "negative"
            polarities = [first, "negative" if first == "positive" else "positive"]
        elif max_aspects >= 2 and kind < config.contrast_prob + config.pair_prob:
            polarities = [self.polarity(config.neutral_share), self.polarity(config.neutral_share)]
        else:
            polarities = [self.polarity(config.single_neutral_prob)]
        aspects = ASPECTS[domain]
        first_index = int(self.uniform() * len(aspects))
        chosen = [aspects[first_index]]
        if len(polarities) == 2:
            second_index = (first_index + 1 + int(self.uniform() * (len(aspects) - 1))) % len(aspects)
            chosen.append(aspects[second_index])

        tokens: list[str] = []
        if self.chance(config.distractor_prob):
            tokens.extend(self.distractor(domain, polarities[0]))
        elif self.chance(config.filler_prob):
            tokens.extend(self.pick(PREFIX_FILLERS[domain]).split() + [","])
        elif self.chance(config.filler_prob / 2):
            tokens.extend(self.pick(OPENERS).split())
        records = []
        for index, (aspect, polarity) in enumerate(zip(chosen, polarities)):
            if index:
                opposite = {polarities[0], polarity} == {"positive", "negative"}
                tokens.extend(self.pick(CONTRAST_CONNECTORS if opposite else SAME_CONNECTORS).split())
            clause, (lo, hi), opinion, negated, shadowed = self.clause(
                domain, aspect, polarity, prenominal_ok=index == 0
            )
            records.append((len(tokens) + lo, len(tokens) + hi, polarity, opinion, negated, shadowed))
            tokens.extend(clause)
        if self.chance(config.filler_prob / 2):
            tokens.extend([","] + self.pick(SUFFIX_FILLERS).split())
        tokens.append("!" if self.chance(0.1) else ".")
        if config.context_sentences:
            tokens, shift = self.with_context(domain, tokens)
            records = [(lo + shift, hi + shift, *rest) for lo, hi, *rest in records]

        starts = [0]
        for token in tokens:
            starts.append(starts[-1] + len(token) + 1)
        text = " ".join(tokens)
        examples = []
        for lo, hi, polarity, opinion, negated, shadowed in records:
            start, end = starts[lo], starts[hi] - 1
            examples.append(
                AspectExample(sentence_id, text, text[start:end], start, end, polarity, opinion, negated)
            )
            self.shadowed.append(shadowed)
        return examples

    def split_examples(self, n_examples: int) -> list[AspectExample]:
        examples: list[AspectExample] = []
        n_sentences = 0
        while len(examples) < n_examples:
            examples.extend(self.sentence(f"{self.split}-{n_sentences:06d}", n_examples - len(examples)))
            n_sentences += 1
        return examples


def _word_counts(examples: Sequence[AspectExample], vocabulary: set[str]) -> Counter:
    """Occurrences of lexicon words in the texts, counting each sentence once."""
    counts: Counter = Counter()
    seen: set[str] = set()
    for example in examples:
        if example.sentence_id in seen:
            continue
        seen.add(example.sentence_id)
        counts.update(token for token in example.text.split() if token in vocabulary)
    return counts


def _split_stats(
    examples: Sequence[AspectExample], gen: _SplitGenerator, train_opinion_counts: Counter
) -> dict[str, Any]:
    """Counts of one split; "rare" examples are those whose opinion word occurs 1 to 10 times as an
    opinion in train (the rare bucket of ``apps.absa.data``, up to its validation carve-out)."""
    labels = Counter(e.polarity for e in examples)
    sentences = Counter(e.sentence_id for e in examples)
    polar = len(examples) - labels["neutral"]
    rare = [
        shadowed
        for e, shadowed in zip(examples, gen.shadowed)
        if e.opinion is not None and not e.negated and 1 <= train_opinion_counts[e.opinion] <= 10
    ]
    return {
        "examples": len(examples),
        "sentences": len(sentences),
        "multi_aspect_sentences": sum(1 for n in sentences.values() if n > 1),
        "labels": {p: labels.get(p, 0) for p in POLARITIES},
        "label_proportions": {p: round(labels.get(p, 0) / len(examples), 4) for p in POLARITIES},
        "negated": sum(e.negated for e in examples),
        "cooccurrence_examples": sum(gen.shadowed),
        "cooccurrence_share_of_polar": round(sum(gen.shadowed) / max(1, polar), 4),
        "rare_opinion_examples": sum(
            1 for e in examples if e.opinion is not None and 1 <= train_opinion_counts[e.opinion] <= 10
        ),
        "rare_opinion_shadowed_share": round(sum(rare) / max(1, len(rare)), 4),
        "rare_draw_examples": gen.examples_by_rare_draw,
        "distractor_sentences": gen.distractor_sentences,
        "context_opinions": gen.context_opinions,
        "hypothetical_clauses": gen.hypothetical_clauses,
    }


def generate(config: GeneratorConfig) -> tuple[list[AspectExample], list[AspectExample], dict]:
    """Generate the train and test splits and their metadata (JSON-ready).

    The metadata holds the config, the generator version, per-split counts, and the lexicon: each
    opinion word's polarity, domain, Zipf rank and sampling weight, rare/frequent flags, and its
    counts in each split (as the recorded opinion and as any occurrence in the text).
    """
    began = time.perf_counter()
    lexicon = build_lexicon(config)
    train_stream, test_stream = np.random.SeedSequence(config.seed).spawn(2)
    train_gen = _SplitGenerator(config, lexicon, np.random.default_rng(train_stream), "train")
    train = train_gen.split_examples(config.n_train)
    seen = {e.opinion for e in train if e.opinion is not None}
    test_gen = _SplitGenerator(
        config, lexicon, np.random.default_rng(test_stream), "test", train_opinions=seen
    )
    test = test_gen.split_examples(config.n_test)

    vocabulary = {w.word for w in lexicon}
    text_counts = {"train": _word_counts(train, vocabulary), "test": _word_counts(test, vocabulary)}
    opinion_counts = {
        "train": Counter(e.opinion for e in train if e.opinion is not None),
        "test": Counter(e.opinion for e in test if e.opinion is not None),
    }
    words = {
        w.word: {
            "polarity": w.polarity,
            "domain": w.domain,
            "rank": w.rank,
            "weight": round(w.weight, 6),
            "rare": w.rare,
            "frequent": w.frequent,
            "train_count": text_counts["train"][w.word],
            "test_count": text_counts["test"][w.word],
            "train_opinion_count": opinion_counts["train"][w.word],
            "test_opinion_count": opinion_counts["test"][w.word],
        }
        for w in lexicon
    }
    train_counts = [entry["train_count"] for entry in words.values()]
    train_opinion = [entry["train_opinion_count"] for entry in words.values()]
    metadata = {
        "generator_version": GENERATOR_VERSION,
        "config": asdict(config),
        "counts": {
            "train": _split_stats(train, train_gen, opinion_counts["train"]),
            "test": _split_stats(test, test_gen, opinion_counts["train"]),
            "lexicon_words": len(words),
            "train_words_unseen": sum(1 for c in train_counts if c == 0),
            "train_words_1_to_10": sum(1 for c in train_counts if 1 <= c <= 10),
            "train_words_at_most_10": sum(1 for c in train_counts if c <= 10),
            "train_opinion_words": sum(1 for c in train_opinion if c > 0),
            "train_opinion_words_1_to_3": sum(1 for c in train_opinion if 1 <= c <= 3),
            "train_opinion_words_1_to_10": sum(1 for c in train_opinion if 1 <= c <= 10),
            "train_opinion_words_over_100": sum(1 for c in train_opinion if c > 100),
        },
        "lexicon": words,
    }
    logger.info(
        "generated %d train and %d test aspect examples in %.2f s",
        len(train),
        len(test),
        time.perf_counter() - began,
    )
    return train, test, metadata


SPLIT_FILES = {"train": "train.xml", "test": "test.xml"}
META_FILE = "meta.json"


def _cached_metadata(out_dir: Path, config: GeneratorConfig) -> dict | None:
    """The stored metadata if it matches the config, the version and both files' checksums."""
    meta_path = out_dir / META_FILE
    if not meta_path.is_file():
        return None
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable (%s); regenerating", meta_path, err)
        return None
    if metadata.get("generator_version") != GENERATOR_VERSION or metadata.get("config") != asdict(config):
        logger.info("%s: config or generator version changed; regenerating", meta_path)
        return None
    for split, name in SPLIT_FILES.items():
        path = out_dir / name
        if not path.is_file() or sha256_file(path) != metadata.get("sha256", {}).get(split):
            logger.info("%s: missing or checksum mismatch; regenerating", path)
            return None
    return metadata


def build_dataset(out_dir: str | os.PathLike[str], config: GeneratorConfig) -> dict:
    """Write ``train.xml``, ``test.xml`` and ``meta.json`` into ``out_dir`` unless already up to date.

    ``meta.json`` is written last, so an interrupted build is redone on the next call.
    """
    out_dir = Path(out_dir)
    cached = _cached_metadata(out_dir, config)
    if cached is not None:
        logger.info("%s: generated dataset is up to date", out_dir)
        return cached
    train, test, metadata = generate(config)
    checksums = {}
    for split, examples in (("train", train), ("test", test)):
        path = out_dir / SPLIT_FILES[split]
        write_semeval_xml(path, examples)
        checksums[split] = sha256_file(path)
    metadata["sha256"] = checksums
    payload = json.dumps(metadata, indent=2, sort_keys=True) + "\n"
    data = payload.encode("utf-8")
    atomic_write(out_dir / META_FILE, lambda handle: handle.write(data))
    logger.info("%s: wrote generated ABSA dataset (%d train, %d test)", out_dir, len(train), len(test))
    return json.loads(payload)
