"""Write the lab's offline corpus: data/corpus/{train,validation,test}.txt.

The corpus stands in for WikiText-2 when the Hugging Face hub cannot be reached
(`evaluation.load_texts` falls back to it). Every sentence was written for this
project: the encyclopedic articles describe an invented region (its towns,
rivers, people, ships, birds, buildings, records and storms), filled in from
sentence patterns with a seeded random generator, and a few handwritten articles
describe real subjects in general terms. Nothing is copied from Wikipedia.

The layout follows WikiText-2 raw: one paragraph per line, ` = Title = ` and
` = = Section = = ` heading lines, blank lines between, punctuation split off by
spaces and `@-@`, `@,@`, `@.@` inside hyphenated words and numbers. Articles,
not lines, are split between train, validation and test.

With --vocab it also trains the word-piece vocabulary of the smoke-mode tokenizer
(`evaluation.tiny_tokenizer`) on the train split with the `tokenizers` library and
writes it to data/vocab.txt, one token a line, the line number being the id.

Run `.venv/bin/python data/make_corpus.py [--vocab]`. The text depends only on SEED
and is reproduced byte for byte. The `tokenizers` trainer breaks ties between equally
frequent merges differently from run to run, so a retrained vocabulary differs in a few
entries: the shipped vocab.txt is the reference, retrain it only with a new corpus.
"""
import random
import re
import sys
from pathlib import Path

SEED = 2024
OUT = Path(__file__).resolve().parent / "corpus"
VOCAB = Path(__file__).resolve().parent / "vocab.txt"
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HELD_OUT_LINES = 60  # non-empty lines in each of validation and test (at least)

# ---------------------------------------------------------------------------
# The invented region: counties, their main towns and rivers.
COUNTIES = {
    "Ostmere": {"city": "Marbridge", "rivers": ["Tarrow", "Wendle", "Lisk"], "hills": "the Ostmere Downs"},
    "Carrowmoor": {"city": "Kelmstow", "rivers": ["Corran", "Isbeck", "Mallow"], "hills": "the Carrow Fells"},
    "Halmsby": {"city": "Dunhollow", "rivers": ["Brenn", "Avel", "Sorrel"], "hills": "the Halm Edge"},
    "Westerfold": {"city": "Penlowe", "rivers": ["Yarrow", "Ferrin", "Cale"], "hills": "the Fold Hills"},
}
PLACE_START = ["Ald", "Bram", "Cal", "Dray", "Ell", "Fen", "Gar", "Hol", "Ket", "Lang", "Nor", "Oak",
               "Ros", "Sal", "Thorn", "Whit", "Ash", "Brack", "Cor", "Elm", "Hart", "Lym", "Mill", "Stan"]
PLACE_END = ["by", "ford", "mere", "stow", "ton", "wick", "ham", "ley", "combe", "field", "thorpe", "hurst",
             "well", "bury", "den", "stead"]
# First names alternate between men's (even indices) and women's (odd indices).
FIRST = ["Thomas", "Margaret", "Edwin", "Alice", "Henry", "Clara", "Walter", "Agnes", "Samuel", "Eleanor",
         "Arthur", "Harriet", "Jonas", "Isabel", "Robert", "Mary", "Frederick", "Edith", "George", "Lucy",
         "William", "Ada", "Hugh", "Florence"]
SURNAME = ["Ashdown", "Belling", "Carrow", "Denholm", "Elsworth", "Farrant", "Gilbey", "Hatherly", "Ivers",
           "Kettering", "Lomax", "Marchbank", "Norwood", "Orchard", "Pendry", "Quarles", "Rushworth",
           "Stallard", "Tennant", "Vesey", "Wakeling", "Yeoman", "Brindle", "Colley"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


def pick(rng, options):
    return options[rng.randrange(len(options))]


def place_name(rng, used):
    while True:
        start, end = pick(rng, PLACE_START), pick(rng, PLACE_END)
        name = start + end[1:] if start[-1] == end[0] else start + end  # Harton, not Hartton
        if name not in used:
            used.add(name)
            return name


def person_name(rng):
    return f"{pick(rng, FIRST)} {pick(rng, SURNAME)}"


def date(rng, year):
    return f"{rng.randint(1, 28)} {pick(rng, MONTHS)} {year}"


def ordinal_century(year):
    century = year // 100 + 1
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(century % 10 if century not in (11, 12, 13) else 0, "th")
    return f"{century}{suffix}"


def sentences(rng, *groups):
    """One variant from each group of sentences; a variant of None leaves the group out."""
    return " ".join(s for s in (pick(rng, group) for group in groups) if s)


# ---------------------------------------------------------------------------
# Article writers. Each returns (title, [(section or None, [paragraph, ...]), ...]).

INDUSTRIES = [
    ("wool", "woollen cloth", "the cheaper cloth of the northern mills"),
    ("leather", "saddles and harness", "the arrival of the motor car"),
    ("quarrying", "building stone", "the closure of the last quarry"),
    ("brewing", "ale and malt", "the merger of the local breweries"),
    ("rope making", "ships' rope", "the decline of sail"),
    ("paper making", "writing paper", "competition from larger mills"),
    ("glove making", "fine leather gloves", "changing fashions after the Second World War"),
]


def settlement(rng, world):
    county = pick(rng, list(COUNTIES))
    river = pick(rng, COUNTIES[county]["rivers"])
    city = COUNTIES[county]["city"]
    name = place_name(rng, world["places"])
    industry, product, decline = pick(rng, INDUSTRIES)
    first_year = rng.randint(940, 1180)
    charter = first_year + rng.randint(90, 260)
    fire = rng.randint(1660, 1790)
    railway = rng.randint(1846, 1879)
    closed = rng.randint(1958, 1968)
    population = rng.randrange(900, 38000, 10)
    census = pick(rng, [2001, 2011, 2021])
    miles = rng.randint(4, 19)
    direction = pick(rng, ["north", "south", "east", "west", "north-east", "south-west"])
    place = "village" if population < 3000 else "town"
    size = "village" if population < 3000 else "market town"
    patron = pick(rng, ["St Andrew", "St Michael", "St Mary", "St Lawrence", "St Helen", "All Saints"])
    builder = person_name(rng)
    world["towns"].append((name, county, river))

    intro = [
        f"{name} is a {size} in the county of {county}, on the {pick(rng, ['north', 'south', 'east', 'west'])} "
        f"bank of the River {river} about {miles} miles ({round(miles * 1.609)} km) {direction} of {city}. "
        f"At the {census} census it had a population of {population:,}. "
        + sentences(rng,
                    [f"The {place} grew rich on {industry} in the {ordinal_century(charter + 150)} century, and its "
                     f"streets still follow the plan laid out in the Middle Ages.",
                     f"For much of its history it was known for its {product}, and the old workshops now house "
                     f"small businesses and a museum.",
                     f"Its prosperity once rested on {industry}; today most residents work in {city} or in the "
                     f"service trades of the {place} itself."]),
    ]
    history = [
        sentences(rng,
                  [f"{name} is first recorded in {first_year}, when its church and mill were listed among the "
                   f"possessions of a nearby abbey.",
                   f"The earliest written mention of {name} dates from {first_year}, in a charter that describes "
                   f"a ford across the {river} and a handful of farms beside it.",
                   f"A settlement existed at the crossing of the {river} by {first_year}, the year in which the "
                   f"name first appears in a surviving document."],
                  [f"The name is usually taken to mean \"the farm by the "
                   f"{pick(rng, ['ford', 'spring', 'oak wood', 'marsh'])}\", "
                   f"although local historians have offered other explanations.",
                   "Its name has been spelled in at least a dozen ways, and the modern form was settled only in "
                   "the eighteenth century.",
                   None],
                  [f"A weekly market was granted by royal charter in {charter}, and a fair was held each "
                   f"{pick(rng, ['spring', 'summer', 'autumn'])} on the green below the church.",
                   f"In {charter} the lord of the manor obtained the right to hold a market, and the {place} began "
                   f"to draw trade from the surrounding villages."]),
        sentences(rng,
                  [f"In {fire} a fire that began in a bakery destroyed much of the {place} centre, and many of the "
                   f"houses on the high street were rebuilt in brick in the following decade.",
                   f"Much of the old timber {place} was lost in the great fire of {fire}; the rebuilding that "
                   f"followed gave the market place its present appearance."],
                  [f"The railway reached {name} in {railway}, when a branch line was opened from {city}, and the "
                   f"{industry} trade expanded rapidly for the rest of the century.",
                   f"The opening of the railway station in {railway} allowed {product} to be sent cheaply to "
                   f"distant markets, and the population almost doubled within forty years."],
                  [f"The trade fell away in the twentieth century because of {decline}, and the branch line "
                   f"closed to passengers in {closed}.",
                   f"After {decline} the {place} lost much of its industry, and passenger trains stopped running "
                   f"in {closed}."]),
    ]
    geography = [
        sentences(rng,
                  [f"The {place} lies in a broad valley between the river and {COUNTIES[county]['hills']}, on ground "
                   f"that rises gently from the flood plain.",
                   f"{name} stands on a low terrace above the flood plain of the {river}, sheltered on the "
                   f"{pick(rng, ['north', 'east'])} by {COUNTIES[county]['hills']}."],
                  [f"The river has flooded the lower streets several times, most seriously in "
                   f"{rng.randint(1900, 2007)}, and an earth embankment now protects the houses nearest the water.",
                   "The soils are mostly clay over limestone, and the surrounding farmland is used for grazing "
                   "and for growing barley.",
                   f"The parish covers about {rng.randint(800, 4200):,} acres, much of it meadow and arable land."],
                  ["The climate is mild and fairly wet, with most rain falling in the autumn and winter months.",
                   "Winters are mild by the standards of the region, although fog often lies in the valley on "
                   "autumn mornings."]),
    ]
    landmarks = [
        sentences(rng,
                  [f"The parish church of {patron} has a "
                   f"{pick(rng, ['Norman', 'thirteenth-century', 'Perpendicular'])} "
                   f"tower and a nave that was enlarged in the fifteenth century.",
                   f"The oldest building in the {place} is the church of {patron}, parts of which date from the "
                   f"twelfth century."],
                  [f"The stone bridge over the {river}, with {rng.randint(3, 7)} arches, was built in "
                   f"{rng.randint(1550, 1780)} and widened in the nineteenth century.",
                   f"The market hall, built in {rng.randint(1600, 1760)} to a design by {builder}, stands on open "
                   f"arches so that traders could shelter beneath it.",
                   f"A former {industry} warehouse beside the river has been converted into a museum of local "
                   f"history."],
                  [f"Several old inns survive on the main street, and the {place} has been used as a location "
                   "for films and television dramas.",
                   "The centre was designated a conservation area in the 1970s, which has kept most of the older "
                   "shop fronts intact."]),
    ]
    return name, [(None, intro), ("History", history), ("Geography", geography), ("Landmarks", landmarks)]


RIVER_START = ["Tam", "Ves", "Bran", "Lid", "Mel", "Ors", "Hal", "Dur", "Cad", "Wen"]
RIVER_END = ["ow", "le", "ey", "en", "ick", "ing"]


def river(rng, world):
    county = pick(rng, list(COUNTIES))
    name = pick(rng, [r for r in COUNTIES[county]["rivers"] if r not in world["rivers"]] or [None])
    while name is None or name in world["rivers"]:  # the county's main rivers are taken: a smaller one
        name = pick(rng, RIVER_START) + pick(rng, RIVER_END)
    world["rivers"].add(name)
    length = rng.randint(14, 61)
    source = place_name(rng, world["places"])
    mouth = pick(rng, ["the Vell estuary", "the River Vell", "the sea at Sandholme", "the Mere Water"])
    tributaries = rng.sample(["Brook", "Beck", "Water", "Burn"], 2)
    trib_names = [f"{place_name(rng, world['places'])} {t}" for t in tributaries]
    mills = rng.randint(6, 31)
    intro = [
        f"The River {name} is a river in the county of {county}. It rises on {COUNTIES[county]['hills']} near "
        f"the village of {source} and flows for about {length} miles ({round(length * 1.609)} km) before it "
        f"joins {mouth}. "
        + sentences(rng,
                    [f"The river gives its name to the {name} valley, an area known for its water meadows and "
                     f"old mills.",
                     f"For most of its length the {name} is a slow, winding lowland river, although its upper "
                     f"reaches run quickly through narrow wooded gorges."]),
    ]
    course = [
        sentences(rng,
                  [f"From its source the {name} flows {pick(rng, ['east', 'south', 'south-east'])} through "
                   f"a series of small villages, collecting the {trib_names[0]} and the {trib_names[1]} before "
                   f"it reaches {COUNTIES[county]['city']}.",
                   f"Below {source} the river is joined by the {trib_names[0]}, and a few miles further on by "
                   f"the {trib_names[1]}, after which it turns towards {COUNTIES[county]['city']}."],
                  [f"Its catchment covers about {rng.randint(90, 560)} square miles, and the average flow at the "
                   f"lowest gauging station is {rng.randint(2, 19)}.{rng.randint(1, 9)} cubic metres per second.",
                   "Much of the lower course was straightened in the nineteenth century to reduce flooding, and "
                   "the old meanders can still be traced as lines of willows in the fields."],
                  ["In dry summers the upper river sometimes disappears into its limestone bed and flows "
                   "underground for several miles.",
                   "The river is tidal for its last few miles, and at low water wide banks of mud are exposed "
                   "on either side of the channel.",
                   None]),
    ]
    history = [
        sentences(rng,
                  [f"At one time the {name} powered at least {mills} water mills, which ground corn, fulled "
                   f"cloth and later drove machinery for paper and bobbin making.",
                   f"Records from the {ordinal_century(rng.randint(1200, 1399))} century mention {mills} mills on "
                   f"the river, most of them grinding grain for the surrounding manors."],
                  [f"An act of parliament of {rng.randint(1720, 1790)} allowed the river to be made navigable "
                   f"as far as {COUNTIES[county]['city']}, and barges carried coal upstream and grain downstream "
                   f"until the railway took the trade.",
                   "Plans to make the river navigable were drawn up several times but never carried out, because "
                   "the mill owners objected to any scheme that would lower their water.",
                   ],
                  [f"The last commercial mill on the river stopped work in {rng.randint(1935, 1972)}.",
                   "Several mill buildings have since been converted into houses."]),
    ]
    wildlife = [
        sentences(rng,
                  ["The river supports brown trout and grayling in its upper reaches and coarse fish such as "
                   "roach, chub and pike further downstream.",
                   "Otters returned to the river in the 1990s after an absence of several decades, and kingfishers "
                   "are often seen along the quieter stretches."],
                  [f"Parts of the valley are protected as a nature reserve, including a stretch of wet meadow near "
                   f"{source} that is known for its spring flowers.",
                   "Water quality improved greatly after the sewage works were rebuilt, although runoff from farmland "
                   "remains a problem after heavy rain."]),
    ]
    return f"River {name}", [(None, intro), ("Course", course), ("History", history), ("Wildlife", wildlife)]


BIRD_GROUPS = [("warbler", "Sylvetta", "insects"), ("bunting", "Emberina", "seeds"), ("finch", "Fringella", "seeds"),
               ("thrush", "Turdella", "worms and berries"), ("flycatcher", "Muscivora", "flying insects"),
               ("lark", "Alaudina", "seeds and beetles")]
BIRD_LOOKS = [("grey", "crowned", "crown", "cinerea"), ("rufous", "backed", "back", "rufescens"),
              ("pale", "throated", "throat", "pallida"), ("black", "capped", "cap", "nigriceps"),
              ("olive", "winged", "wing", "olivacea"), ("spotted", "breasted", "breast", "maculata")]


def bird(rng, world):
    group, genus, food = pick(rng, BIRD_GROUPS)
    colour, part, feature, epithet = pick(rng, BIRD_LOOKS)
    while (colour, group) in world["birds"]:
        group, genus, food = pick(rng, BIRD_GROUPS)
        colour, part, feature, epithet = pick(rng, BIRD_LOOKS)
    world["birds"].add((colour, group))
    common = f"{colour}-{part} {group}"
    author = pick(rng, SURNAME)
    described = rng.randint(1821, 1912)
    length = rng.randint(11, 24)
    eggs = rng.randint(3, 6)
    habitat = pick(rng, ["reed beds and the edges of lakes", "open heath and rough grassland",
                         "mixed woodland with a dense understorey", "upland moors and rocky slopes",
                         "hedgerows and the margins of farmland"])
    intro = [
        f"The {common} ({genus} {epithet}) is a small passerine bird in the {group} family. It breeds in "
        f"{habitat} across the northern part of its range and spends the winter further south. "
        + sentences(rng,
                    ["It is a shy species that is more often heard than seen.",
                     "It is common in suitable habitat, although it is easily overlooked outside the breeding "
                     "season.",
                     "Its population has declined in recent decades, mainly because of the loss of its breeding "
                     "habitat."]),
    ]
    taxonomy = [
        sentences(rng,
                  [f"The species was formally described in {described} by the naturalist {author}, who gave it "
                   f"the specific name {epithet} in reference to its plumage.",
                   f"{author} described the {common} in {described} from a specimen collected in the "
                   f"{pick(rng, list(COUNTIES))} marshes."],
                  [f"It was long placed in a larger genus, but studies of its DNA have shown that it is most "
                   f"closely related to the other members of {genus}.",
                   "Two subspecies are recognised, differing slightly in size and in the tone of the upperparts.",
                   "No subspecies are currently recognised, although birds from the islands are slightly darker."]),
    ]
    description = [
        sentences(rng,
                  [f"The adult is {length} cm long and has {'an' if colour[0] in 'aeiou' else 'a'} {colour} "
                   f"{feature} that contrasts "
                   f"with its brown upperparts and buff underparts.",
                   f"Adults measure about {length} cm from bill to tail; the {colour} {feature} "
                   f"is the best field mark, as the rest of the plumage is plain brown and cream."],
                  ["The sexes are similar, but the female is slightly duller and young birds lack the "
                   "distinctive head pattern.",
                   "The male is brighter than the female, especially in spring, when the feathers of the head "
                   "are fresh."],
                  ["The song is a rapid series of dry, chattering notes, often delivered from a low perch.",
                   "Its call is a thin, high whistle, repeated at intervals of a few seconds."]),
    ]
    behaviour = [
        sentences(rng,
                  [f"It feeds mainly on {food}, which it gathers from the ground or from low vegetation.",
                   f"The diet consists largely of {food}, supplemented in autumn by fruit."],
                  [f"The nest is a neat cup of grass and moss built close to the ground, and the female lays "
                   f"{eggs} eggs, which hatch after about {rng.randint(11, 15)} days.",
                   f"Pairs raise one or two broods a year; the clutch is usually {eggs} eggs, and both parents "
                   f"feed the young."],
                  ["Outside the breeding season it often joins mixed flocks with other small birds.",
                   "It migrates at night, and many birds are killed each year by collisions with lit buildings."]),
        sentences(rng,
                  ["The species is listed as being of least concern by international conservation bodies, "
                   "because its range is large and its population is still substantial.",
                   "Although still widespread, the species is considered near threatened, and surveys have "
                   "recorded steep local declines."],
                  ["Conservation measures include the restoration of wetlands and the protection of nesting "
                   "sites from disturbance.",
                   "Changes in farming, particularly the loss of winter stubble fields, are thought to be the "
                   "main cause of its decline."]),
    ]
    title = f"{colour.title()}-{part} {group}"
    return title, [(None, intro), ("Taxonomy", taxonomy), ("Description", description),
                   ("Behaviour and conservation", behaviour)]


PROFESSIONS = {
    "composer": ("studied at the conservatory in {city}", "wrote {n} symphonies, a violin concerto and a large "
                 "number of songs", "His Symphony No. 2", "string quartet"),
    "painter": ("trained at the school of art in {city}", "painted landscapes of the {river} valley and "
                "portraits of local families", "His painting The Mill at Evening", "series of river views"),
    "civil engineer": ("was apprenticed to a firm of surveyors in {city}", "designed {n} bridges, two "
                       "reservoirs and a dock", "His iron bridge over the {river}", "pumping station"),
    "botanist": ("studied natural history at the university in {city}", "described more than {n}0 species of "
                 "flowering plants", "His flora of the county", "collection of pressed plants"),
    "architect": ("was articled to an architect in {city}", "designed churches, schools and {n} country "
                  "houses", "His town hall at {town}", "set of almshouses"),
}


def person(rng, world):
    index = rng.randrange(len(FIRST))
    first, last = FIRST[index], pick(rng, SURNAME)
    name = f"{first} {last}"
    profession = pick(rng, list(PROFESSIONS))
    trained, works, famous, minor = PROFESSIONS[profession]
    town, county, river_name = pick(rng, world["towns"]) if world["towns"] else ("Marbridge", "Ostmere", "Tarrow")
    city = COUNTIES[county]["city"]
    born = rng.randint(1790, 1890)
    died = born + rng.randint(48, 91)
    pronoun, possessive, objective, reflexive = (("he", "his", "him", "himself") if index % 2 == 0 else
                                                 ("she", "her", "her", "herself"))
    famous = famous.replace("His", possessive.title())
    article = "an" if profession[0] in "aeiou" else "a"
    fmt = dict(city=city, river=river_name, town=town, n=rng.randint(3, 9))
    intro = [
        f"{name} ({date(rng, born)} – {date(rng, died)}) was {article} {profession} from {town} in the county of "
        f"{county}. " + sentences(rng,
                                  [f"{pronoun.title()} is best remembered for work that made the {river_name} "
                                   f"valley known well beyond the county.",
                                   f"Although {pronoun} was widely admired in {possessive} lifetime, {possessive} "
                                   f"reputation faded after {possessive} death and revived only in the 1970s.",
                                   f"{pronoun.title()} spent almost all of {possessive} working life in {city}, "
                                   f"where {pronoun} was a familiar figure for more than forty years."]),
    ]
    early = [
        sentences(rng,
                  [f"{first} {last} was born in {town}, the {pick(rng, ['eldest', 'second', 'youngest'])} of "
                   f"{rng.randint(3, 9)} children of a "
                   f"{pick(rng, ['schoolmaster', 'miller', 'draper', 'clergyman', 'farmer'])}.",
                   f"{last} was born in a house on the market place in {town}, where {possessive} father kept a "
                   f"{pick(rng, ['bookshop', 'chemist shop', 'bakery', 'printing works'])}."],
                  [f"After leaving the grammar school {pronoun} {trained.format(**fmt)}, and by the age of "
                   f"{rng.randint(21, 27)} {pronoun} had begun to attract notice.",
                   f"{pronoun.title()} {trained.format(**fmt)} from {born + rng.randint(15, 19)}, supporting "
                   f"{reflexive} by teaching in the evenings."]),
    ]
    career = [
        sentences(rng,
                  [f"Over a career of more than {rng.randint(3, 5)}0 years {pronoun} {works.format(**fmt)}.",
                   f"In the course of {possessive} career {pronoun} {works.format(**fmt)}, much of it for "
                   f"clients in {city} and the surrounding county."],
                  [f"{famous.format(**fmt)}, completed in {born + rng.randint(28, 45)}, was praised for its "
                   f"clarity and its careful attention to detail.",
                   f"{famous.format(**fmt)} ({born + rng.randint(28, 45)}) is generally regarded as "
                   f"{possessive} finest achievement."],
                  [f"A later {minor} was less well received, and {pronoun} withdrew from public life for several "
                   f"years afterwards.",
                   f"{pronoun.title()} also took an active part in local affairs, serving on the town council and "
                   f"helping to found a lending library."]),
        sentences(rng,
                  [f"{last} died at {possessive} home in {town} at the age of {died - born} and was buried in the "
                   f"churchyard there.",
                   f"In {possessive} final years {pronoun} lived quietly in {city}, where {pronoun} died in "
                   f"{died}."],
                  [f"A memorial plaque was placed on {possessive} birthplace in {died + rng.randint(20, 90)}, and "
                   f"a street in {town} is named after {objective}.",
                   f"Many of {possessive} papers are held by the county record office, and an exhibition of "
                   f"{possessive} work was held in {city} on the centenary of {possessive} death."]),
    ]
    return name, [(None, intro), ("Early life", early), ("Career and later life", career)]


SHIP_TYPES = [("cargo steamer", "steam"), ("passenger ferry", "steam"), ("schooner", "sail"),
              ("paddle steamer", "steam"), ("coastal collier", "steam")]


def ship(rng, world):
    prefix = pick(rng, ["SS", "PS", ""])
    vessel, power = pick(rng, SHIP_TYPES)
    if vessel == "schooner":
        prefix = ""
    if vessel == "paddle steamer":
        prefix = "PS"
    town, county, _ = pick(rng, world["towns"]) if world["towns"] else ("Marbridge", "Ostmere", "Tarrow")
    name = (f"{pick(rng, [town, pick(rng, FIRST), 'Morning', 'Northern', 'Vell'])} "
            f"{pick(rng, ['Star', 'Queen', 'Trader', 'Belle', 'Rose', 'Pioneer'])}")
    full = f"{prefix} {name}".strip()
    builder = f"{pick(rng, SURNAME)} & Sons"
    launched = rng.randint(1852, 1921)
    tons = rng.randint(180, 2900)
    feet = rng.randint(90, 290)
    fate_year = launched + rng.randint(12, 45)
    intro = [
        f"{full} was a {vessel} built in {launched} by {builder} of {COUNTIES[county]['city']}. "
        + sentences(rng,
                    [f"She spent most of her career carrying "
                     f"{pick(rng, ['coal', 'timber', 'grain', 'passengers and mail'])} "
                     f"between the ports of the Vell estuary and the continent.",
                     f"She served the same route for more than {fate_year - launched - 5} years and became a "
                     f"familiar sight in the harbours of the coast."]),
    ]
    design = [
        sentences(rng,
                  [f"The ship measured {feet} feet ({round(feet * 0.3048, 1)} m) in length and was rated at "
                   f"{tons:,} gross register tons.",
                   f"She was {feet} feet long, with a beam of {feet // 7} feet, and had a tonnage of {tons:,} GRT."],
                  [("Power came from a single compound steam engine driving one screw, which gave a service "
                    f"speed of {rng.randint(8, 13)} knots.") if power == "steam" else
                   f"She carried a fore-and-aft rig on two masts and needed a crew of only {rng.randint(5, 9)}.",
                   ("Her engines were built by the same yard, and she was one of the first ships on the coast "
                    "to be fitted with electric lighting.") if power == "steam" else
                   "Her shallow draught allowed her to load at small harbours that larger vessels could not reach."]),
    ]
    service = [
        sentences(rng,
                  [f"She entered service in {launched + 1} and was soon noted for her reliability in bad weather.",
                   f"Her first voyage, in {pick(rng, MONTHS)} {launched + 1}, was delayed by a week of storms."],
                  [f"In {launched + rng.randint(3, 11)} she ran aground at the mouth of the estuary in fog, but "
                   f"was refloated on the next tide with little damage.",
                   f"She was sold in {launched + rng.randint(5, 11)} to a company in "
                   f"{COUNTIES[pick(rng, list(COUNTIES))]['city']}, "
                   f"which renamed her and lengthened her hull by twenty feet.",
                   "During the war she was requisitioned to carry stores, and she returned to her owners in "
                   "poor condition."],
                  [f"She was wrecked on {date(rng, fate_year)} when she struck a submerged rock in a gale; all "
                   f"but {rng.randint(1, 4)} of her crew were rescued by the lifeboat.",
                   f"She was broken up in {fate_year} after a long career, and her bell was presented to the "
                   f"parish church of {town}.",
                   f"She foundered in heavy seas in {fate_year}; her wreck lies in about "
                   f"{rng.randint(20, 60)} metres of water and is visited by divers."]),
    ]
    return full, [(None, intro), ("Design and construction", design), ("Service history", service)]


BUILDINGS = ["lighthouse", "windmill", "viaduct", "corn exchange", "water mill", "pumping station"]
HEIGHT_SCALE = {"lighthouse": 0.5, "windmill": 0.3, "viaduct": 0.5, "corn exchange": 0.25, "water mill": 0.2,
                "pumping station": 0.4}  # times a draw of 18 to 95: plausible heights in metres for each kind
MACHINES = {"lighthouse": "lamp and lens", "windmill": "machinery", "water mill": "machinery",
            "pumping station": "steam engine"}


def building(rng, world):
    kind = pick(rng, BUILDINGS)
    town, county, river_name = pick(rng, world["towns"]) if world["towns"] else ("Marbridge", "Ostmere", "Tarrow")
    name = f"{town} {kind.title()}"
    built = rng.randint(1720, 1905)
    architect = person_name(rng)
    height = round(rng.randint(18, 95) * HEIGHT_SCALE[kind])
    material = pick(rng, ["local sandstone", "brick", "limestone ashlar", "granite"])
    listed = pick(rng, ["Grade I", "Grade II", "Grade II*"])
    purpose = {
        "lighthouse": "guide shipping past the sandbanks at the mouth of the estuary",
        "windmill": "grind corn for the farms of the surrounding parish",
        "viaduct": f"carry the railway across the valley of the {river_name}",
        "corn exchange": "provide a covered hall where farmers could sell grain by sample",
        "water mill": f"grind corn with the water of the {river_name}",
        "pumping station": f"drain the low fields beside the {river_name}",
    }[kind]
    intro = [
        f"The {name} is a {listed} listed {kind} near {town} in the county of {county}. It was built in "
        f"{built} to {purpose}. "
        + sentences(rng,
                    [f"It is built of {material} and is one of the best preserved buildings of its kind in the "
                     f"region.",
                     f"Built of {material}, it is a prominent landmark and can be seen for several miles across "
                     f"the surrounding countryside."]),
    ]
    history = [
        sentences(rng,
                  [f"The {kind} was designed by {architect}, and work began in {built - rng.randint(1, 3)}.",
                   f"Plans were prepared by {architect}, whose first design was rejected as too expensive."],
                  [f"When completed it stood {height} metres high, and it cost about £{rng.randint(2, 60):,},000, "
                   f"a large sum at the time.",
                   f"Building took {rng.randint(2, 6)} years because the foundations had to be carried down to "
                   f"firm rock.",
                   ],
                  [f"It remained in use until {built + rng.randint(60, 110)}, after which it was left empty for "
                   f"many years.",
                   "It was altered several times during the nineteenth century, and a small museum was opened in "
                   "part of the building in the 1980s."]),
    ]
    description = [
        sentences(rng,
                  [f"The main structure is of {material} on a plinth of rough stone, with "
                   f"{pick(rng, ['round-headed', 'pointed', 'square-headed'])} windows and a slate roof.",
                   f"The walls are of {material}, thickest at the base, and the interior is lit by small windows "
                   f"set deep in the masonry."],
                  [f"Much of the original {MACHINES[kind]} survives, and it is kept in working order by volunteers."
                   if kind in MACHINES else "The original fittings were removed when the building was converted.",
                   "Restoration work carried out with a grant from a heritage charity repaired the roof and "
                   "replaced the decayed timbers.",
                   "The building is open to visitors on summer weekends."]),
    ]
    return name, [(None, intro), ("History", history), ("Description", description)]


GENRES = ["folk rock", "indie pop", "post-punk", "chamber pop", "blues rock"]


def album(rng, world):
    band = (f"The {pick(rng, ['Lantern', 'Harbour', 'Quiet', 'Paper', 'Iron', 'Winter'])} "
            f"{pick(rng, ['Keepers', 'Society', 'Engines', 'Rooks', 'Parade', 'Lights'])}")
    while band in world["bands"]:
        band = (f"The {pick(rng, ['Velvet', 'Copper', 'Northern', 'Hollow'])} "
                f"{pick(rng, ['Orchard', 'Signals', 'Tide', 'Choir'])}")
    world["bands"].add(band)
    title = pick(rng, ["Ghosts of the Estuary", "Low Light", "Kelmstow Nights", "Salt and Cinder",
                       "The Long Way Home", "Radio Fields", "Glass Harbour", "Songs for the Ferry"])
    while title in world["albums"]:
        title = (f"{pick(rng, ['Bright', 'Distant', 'Slow', 'Quiet', 'Northern'])} "
                 f"{pick(rng, ['Rivers', 'Summers', 'Engines', 'Harbours', 'Voices'])}")
    world["albums"].add(title)
    year = rng.randint(1968, 2016)
    number = pick(rng, ["debut", "second", "third", "fourth"])
    genre = pick(rng, GENRES)
    producer = person_name(rng)
    chart = rng.randint(2, 48)
    tracks = rng.randint(9, 14)
    singles = rng.randint(1, 3)
    minutes = rng.randint(34, 58)
    intro = [
        f"{title} is the {number} studio album by the {genre} band {band}, released in {pick(rng, MONTHS)} "
        f"{year}. " + sentences(rng,
                                [f"It was produced by {producer} and recorded over {rng.randint(3, 10)} weeks in a "
                                 f"converted chapel in {COUNTIES[pick(rng, list(COUNTIES))]['city']}.",
                                 f"The album was recorded with {producer} and marked a change in the band's sound "
                                 f"towards longer songs and quieter arrangements."]),
    ]
    recording = [
        sentences(rng,
                  [("The band wrote most of the songs while touring in support of their previous record, and "
                    "several were tried out on stage before the sessions began.") if number != "debut" else
                   "The songs had been part of the band's live set for two years before they were recorded.",
                   "Work began with a set of demo recordings made on a four-track machine in the singer's "
                   "kitchen."],
                  [f"{producer} encouraged the group to record live in a single room, keeping overdubs to a "
                   f"minimum.",
                   "Strings and a small brass section were added to several tracks, arranged by the band's "
                   "keyboard player."],
                  [f"The finished album runs for {minutes} minutes and contains {tracks} tracks.",
                   f"Of the {tracks} songs on the album, {singles} were released as singles."]),
    ]
    reception = [
        sentences(rng,
                  [f"{title} reached number {chart} on the national albums chart and remained in the top 75 for "
                   f"{rng.randint(3, 30)} weeks.",
                   f"The album peaked at number {chart} on the albums chart, the band's highest position at the "
                   f"time."],
                  ["Critics praised the songwriting and the warmth of the production, although some felt that the "
                   "second half of the record was too slow.",
                   "Reviews were mixed: several writers admired its ambition, while others found the lyrics "
                   "overwrought.",
                   "It received generally favourable reviews, and one magazine later placed it among the best "
                   "albums of the decade."],
                  [f"A remastered edition with previously unreleased recordings was issued in "
                   f"{year + rng.randint(10, 25)}.",
                   "The band has said that it remains their favourite of their own records."]),
    ]
    return title, [(None, intro), ("Recording", recording), ("Release and reception", reception)]


STORM_NAMES = ["Agatha", "Bertram", "Corinna", "Desmond", "Elspeth", "Fergus", "Greta", "Hamish", "Isolde", "Jasper",
               "Kirsty", "Lachlan", "Morwenna", "Niall", "Orla", "Piers", "Rhona", "Silas", "Tamsin", "Ulric"]


def storm(rng, world):
    name = pick(rng, [n for n in STORM_NAMES if n not in world["storms"]] or ["Imogen"])
    world["storms"].add(name)
    year = rng.randint(1987, 2019)
    gust = rng.randint(78, 118)
    deaths = rng.randint(0, 7)
    homes = rng.randint(8, 140) * 1000
    rain = rng.randint(40, 190)
    month = pick(rng, ["October", "November", "December", "January", "February"])
    town, county, river_name = pick(rng, world["towns"]) if world["towns"] else ("Marbridge", "Ostmere", "Tarrow")
    intro = [
        f"Storm {name} was a deep Atlantic depression that crossed the region in {month} {year}, bringing "
        f"damaging winds and heavy rain. "
        + sentences(rng,
                    [f"Gusts of up to {gust} miles per hour were recorded on exposed coasts, and about {homes:,} "
                     f"homes lost power.",
                     f"It was the strongest storm to affect the area for more than a decade, with a peak gust of "
                     f"{gust} miles per hour."]),
    ]
    history = [
        sentences(rng,
                  [f"The depression formed south of Newfoundland on {rng.randint(1, 20)} {month} and deepened "
                   f"rapidly as it crossed the ocean beneath a strong jet stream.",
                   f"Forecasters first identified the system as a wave on a cold front several days before it "
                   f"arrived; it deepened by more than {rng.randint(24, 40)} millibars in a single day."],
                  ["Weather warnings were issued two days in advance, and schools in the worst affected areas "
                   "were closed.",
                   "The national weather service issued its highest level of warning for wind, the first such "
                   "warning for the region in several years."]),
    ]
    impact = [
        sentences(rng,
                  [f"Up to {rain} millimetres of rain fell on {COUNTIES[county]['hills']}, and the River "
                   f"{river_name} burst its banks at {town}, flooding several hundred properties.",
                   f"In {county} the {river_name} rose to its highest level since records began, and the centre "
                   f"of {town} was cut off for two days."],
                  [f"Falling trees blocked roads and railway lines, and ferry services were suspended for "
                   f"{rng.randint(2, 4)} days.",
                   "A section of sea wall was breached, and many caravans and beach huts were destroyed."],
                  [(f"The storm was blamed for {deaths} deaths, most of them caused by falling trees." if deaths
                    else "Remarkably, no deaths were attributed to the storm."),
                   f"Insurers estimated the cost of the damage at about £{rng.randint(40, 900)} million."]),
        sentences(rng,
                  ["In the aftermath, the flood defences at several towns were reviewed, and new embankments "
                   "were built over the following years.",
                   "The storm led to changes in the way warnings are communicated, including text messages sent "
                   "directly to residents in areas at risk."]),
    ]
    return f"Storm {name}", [(None, intro), ("Meteorological history", history), ("Impact", impact)]


# ---------------------------------------------------------------------------
# Handwritten articles on real subjects, in general terms.
HANDWRITTEN = [
    ("Lighthouse", [
        (None, ["A lighthouse is a tower or other structure that carries a light to help ships find their way at "
                "night or in poor visibility. Lighthouses mark dangerous coasts, reefs and sandbanks, and they "
                "also show sailors the safe entrances to harbours. Each light has its own pattern of flashes, so "
                "that a navigator who can see it and count the flashes can tell which lighthouse it is."]),
        ("History", ["People have lit fires on headlands to guide boats since ancient times. The most famous early "
                     "lighthouse stood on the island of Pharos at Alexandria and was counted among the wonders of "
                     "the ancient world. For many centuries afterwards, most lights were simple coal or wood fires, "
                     "and later candles or oil lamps, which gave a weak light that was often hidden by smoke.",
                     "The great change came in the early nineteenth century, when the French physicist Augustin-"
                     "Jean Fresnel designed a lens made of rings of glass prisms. The lens gathered the light of a "
                     "lamp into a narrow, powerful beam while using far less glass than a solid lens of the same "
                     "size. Lenses of this kind were soon fitted to lighthouses around the world."]),
        ("Operation", ["Until the late twentieth century most lighthouses were looked after by keepers who lived "
                       "at the station, trimmed the lamps, wound the clockwork that turned the lens and kept watch "
                       "in bad weather. Electric lamps, automatic controls and remote monitoring gradually made "
                       "the keepers unnecessary, and in many countries the last keepers left their posts in the "
                       "1980s and 1990s. Satellite navigation has reduced the importance of lighthouses, but many "
                       "are still maintained because a visible light remains a simple and reliable check."]),
    ]),
    ("Honey bee", [
        (None, ["Honey bees are social insects that live in large colonies and store honey as food for the "
                "winter. The western honey bee has been kept by people for thousands of years, both for its honey "
                "and wax and for its work in pollinating crops. A strong colony in summer may contain tens of "
                "thousands of bees."]),
        ("Colony life", ["Each colony has a single queen, which lays the eggs, a large number of female worker "
                         "bees and, in the warmer months, a smaller number of males called drones. The workers "
                         "do almost all of the labour of the hive. Young workers clean the cells, feed the larvae "
                         "and build comb from wax produced by glands on their bodies, while older workers leave "
                         "the hive to gather nectar, pollen, water and resin.",
                         "Foragers that find a good source of food can tell their nest mates where it is. On the "
                         "comb they perform a waggle dance, in which the angle of the dance shows the direction of "
                         "the food relative to the sun and the length of the waggling run shows its distance. The "
                         "meaning of the dance was worked out by the Austrian scientist Karl von Frisch, who shared "
                         "a Nobel Prize for his studies of animal behaviour in 1973."]),
        ("Honey", ["Honey is made from nectar, a sugary liquid produced by flowers. The bees carry nectar back to "
                   "the hive, add enzymes to it and spread it through the cells of the comb, where the water "
                   "slowly evaporates. When the honey is thick enough it is sealed under a thin cap of wax. "
                   "Because it contains so little water, ripe honey resists spoiling and can be kept for a very "
                   "long time."]),
    ]),
    ("Canal lock", [
        (None, ["A lock is a device for raising and lowering boats between stretches of water at different "
                "levels on a river or canal. The usual form, the pound lock, is a chamber with gates at each "
                "end. A boat enters the chamber, the gates behind it are closed, and water is let in or out "
                "through sluices until the level inside matches the level ahead, when the far gates can be "
                "opened."]),
        ("Design", ["Most lock gates meet at an angle, pointing upstream, so that the pressure of the water "
                    "pushes them tightly together. Gates of this kind are called mitre gates. They are opened and "
                    "closed with long wooden balance beams, and the sluices, known in Britain as paddles, are "
                    "worked with a removable handle. Where a canal has to climb a steep slope, several locks may "
                    "be built close together as a flight, or joined directly as a staircase, in which the top "
                    "gate of one chamber is the bottom gate of the next.",
                    "Every time a lock is used, a chamber full of water passes from the upper level to the lower "
                    "one. Canal engineers therefore had to provide reservoirs and feeders to keep the summit "
                    "level supplied, and some locks were built with side ponds that save part of the water for "
                    "the next boat."]),
    ]),
    ("Windmill", [
        (None, ["A windmill is a machine that uses sails to turn the power of the wind into rotating motion. For "
                "centuries windmills were used to grind grain into flour, and in low-lying countries such as "
                "the Netherlands they were also used to pump water out of the land so that it could be farmed."]),
        ("Types", ["In the post mill, the oldest European type, the whole body of the mill, carrying the sails "
                   "and machinery, is balanced on a single upright post and can be turned to face the wind. In "
                   "the tower mill, only the cap at the top turns, while the rest of the building stands still, "
                   "which allowed much larger mills to be built. The smock mill is a tower mill with a timber "
                   "body, usually eight-sided, named for its resemblance to a farm worker's smock.",
                   "A mill works best when its sails face directly into the wind. At first the miller turned the "
                   "mill by hand, but in the middle of the eighteenth century the fantail was introduced: a small "
                   "wind wheel set at right angles to the main sails, which turns the cap automatically whenever "
                   "the wind changes direction."]),
        ("Decline", ["Steam engines and later electric motors replaced most working windmills during the "
                     "nineteenth and twentieth centuries. Many mills were demolished or lost their sails, but a "
                     "number have been restored, and some still grind flour for sale. Modern wind turbines, which "
                     "generate electricity, are descended from the same idea but are designed very differently."]),
    ]),
    ("Glacier", [
        (None, ["A glacier is a large mass of ice that forms on land and moves slowly under its own weight. "
                "Glaciers form where more snow falls in winter than melts in summer, so that the snow builds up "
                "year after year. As it is buried, the snow is compressed into a granular material called firn "
                "and finally into dense glacial ice."]),
        ("Movement", ["Glacial ice flows in two ways. The ice itself deforms slowly, like a very thick liquid, "
                      "and the whole glacier can also slide over its bed, especially where meltwater lubricates "
                      "the base. Most glaciers move a few centimetres to a few metres a day, although some "
                      "outlet glaciers move much faster. Where the ice is stretched as it flows over uneven "
                      "ground, deep cracks called crevasses open at the surface."]),
        ("Landforms", ["A glacier wears away the rock beneath it and carries the debris downhill. Valleys that "
                       "were once filled by glaciers typically have a broad U-shaped cross section, quite "
                       "unlike the narrow V shape cut by rivers. The rock and soil that the ice leaves behind "
                       "when it melts form ridges and mounds known as moraines, and large boulders may be left "
                       "far from the place where they were picked up.",
                       "Most of the world's glaciers have been shrinking since the middle of the nineteenth "
                       "century, and the rate of loss has increased in recent decades. Their retreat affects "
                       "water supplies in the regions that depend on summer meltwater, and it contributes to "
                       "the rise in sea level."]),
    ]),
    ("Printing press", [
        (None, ["A printing press is a machine that presses an inked surface against paper or cloth in order to "
                "transfer an image or text. Printing with carved wooden blocks was practised in East Asia long "
                "before it reached Europe, and movable type made of clay and later of metal was also first used "
                "there."]),
        ("In Europe", ["In Europe, printing with movable metal type was developed by Johannes Gutenberg in Mainz "
                       "around the middle of the fifteenth century. His system combined several inventions: a "
                       "hand mould for casting large numbers of identical letters, a metal alloy that melted "
                       "easily and hardened quickly, an oil-based ink that stuck to metal, and a screw press "
                       "adapted from those used to make wine and oil. His best known work is a large Latin Bible "
                       "completed in the 1450s.",
                       "The new technique spread quickly. Within a few decades there were presses in most of the "
                       "major cities of western Europe, and Venice became one of the great centres of the trade. "
                       "Books became far cheaper and more numerous, which helped to spread learning, new ideas "
                       "and standard forms of written languages."]),
    ]),
    ("Tide", [
        (None, ["Tides are the regular rise and fall of the level of the sea, caused mainly by the gravitational "
                "pull of the Moon and, to a lesser degree, of the Sun. Most coasts have two high tides and two "
                "low tides in a little over a day, because the Earth turns beneath two bulges of water, one on "
                "the side facing the Moon and one on the opposite side."]),
        ("Spring and neap tides", ["When the Sun, the Moon and the Earth are roughly in line, at new moon and "
                                   "full moon, their effects combine and the difference between high and low "
                                   "water is largest. These are called spring tides, although they have nothing "
                                   "to do with the season. When the Sun and Moon pull at right angles to each "
                                   "other, the range is smallest, giving neap tides.",
                                   "The shape of the coast and the sea floor has a great influence on the tides. "
                                   "In some narrow bays and estuaries the water is funnelled and the range "
                                   "becomes very large; the Bay of Fundy in Canada has some of the highest tides "
                                   "in the world. Elsewhere, in enclosed seas, the tide may be barely noticeable."]),
    ]),
]

GENERATED = [(settlement, 36), (river, 24), (bird, 24), (person, 30), (ship, 21), (building, 24), (album, 21),
             (storm, 18)]


# ---------------------------------------------------------------------------
# WikiText-style formatting.
def wikify(text):
    """Split punctuation off with spaces and mark in-word hyphens and number separators as WikiText does."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "\x01", text)
    text = re.sub(r"(?<=\d)\.(?=\d)", "\x02", text)
    text = re.sub(r"(?<=\w)-(?=\w)", "\x03", text)
    text = re.sub(r"(\w)'s\b", r"\1 's", text)
    text = re.sub(r"([,.;:()\"£–])", r" \1 ", text)
    text = text.replace("\x01", " @,@ ").replace("\x02", " @.@ ").replace("\x03", " @-@ ")
    return " ".join(text.split())


def render(title, sections):
    lines = ["", f" = {wikify(title)} = ", ""]
    for heading, paragraphs in sections:
        if heading:
            lines += [f" = = {wikify(heading)} = = ", ""]
        for paragraph in paragraphs:
            lines += [f" {wikify(paragraph)} ", ""]
    return lines


def main():
    rng = random.Random(SEED)
    world = {"places": {c["city"] for c in COUNTIES.values()}, "towns": [], "rivers": set(), "birds": set(),
             "bands": set(), "albums": set(), "storms": set()}
    articles = [render(title, sections) for title, sections in HANDWRITTEN]
    titles = {title for title, _ in HANDWRITTEN}
    for writer, count in GENERATED:
        for _ in range(count):
            title, sections = writer(rng, world)
            while title in titles:  # a repeated ship or building name: draw the article again
                title, sections = writer(rng, world)
            titles.add(title)
            articles.append(render(title, sections))
    rng.shuffle(articles)

    splits = {"test": [], "validation": [], "train": []}
    for lines in articles:
        target = next((s for s in ("test", "validation") if
                       sum(bool(l.strip()) for l in splits[s]) < HELD_OUT_LINES), "train")
        splits[target] += lines
    OUT.mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        (OUT / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(split, sum(bool(l.strip()) for l in lines), "non-empty lines")
    if "--vocab" in sys.argv[1:]:
        write_vocab(splits["train"])


def write_vocab(lines):
    """Train a BERT-style (lower-cased) word-piece vocabulary on `lines` and write it to VOCAB."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(lines, trainer)
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    VOCAB.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    print(len(tokens), "tokens in", VOCAB.name)


if __name__ == "__main__":
    main()
