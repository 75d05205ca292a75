"""Word lists and sentence templates of the LoCoMo-style generator (``generator.py``), written for it.

Persona and event vocabulary (names, cities with their countries, jobs with a skill each, pets, hobbies with
an outing each, trip purposes, made-up bands, books, companies and restaurants) and the templates that turn
a fact into a dialogue turn or a question. The lists of handles (a city, a pet's name, a band...: the first
field) are drawn without replacement within a conversation, so a handle names one fact of one speaker, and
none contains another as a word (``Porto``/``Portland`` differ at the word level), which is what lets
evidence be checked by searching a turn for its handle. The open-domain pairs (city -> country, job ->
skill, hobby -> outing, dogs need walks) are common knowledge, kept deliberately uncontroversial.

Template fields: ``{n}`` a speaker's name, ``{h}`` the fact's handle, ``{d}`` its detail, ``{x}`` its extra
(species, country, skill or outing), ``{w}`` the relative date of an event, and ``{ah}``/``{ad}``/``{ax}``
the same preceded by "a" or "an".
"""

from __future__ import annotations


def _table(text: str) -> list[tuple[str, ...]]:
    return [tuple(item.split(":")) for item in text.split("|")]


# Word lists. Handles (the first field) never contain one another, so a turn names only its own facts.
NAMES = ("Alma Bruno Carmen Dario Elena Felix Greta Hugo Ines Jonah Keira Leon Marta Nils Olga Pavel Quinn Rosa "
         "Silas Tamsin Umar Vera Wendell Xenia Yusuf Zora").split()
CITIES = _table(
    "Lisbon:Portugal|Porto:Portugal|Madrid:Spain|Seville:Spain|Valencia:Spain|Lyon:France|Bordeaux:France|"
    "Marseille:France|Munich:Germany|Hamburg:Germany|Leipzig:Germany|Vienna:Austria|Zurich:Switzerland|"
    "Geneva:Switzerland|Amsterdam:the Netherlands|Utrecht:the Netherlands|Brussels:Belgium|Copenhagen:Denmark|"
    "Stockholm:Sweden|Oslo:Norway|Helsinki:Finland|Dublin:Ireland|Edinburgh:the United Kingdom|"
    "Manchester:the United Kingdom|Prague:the Czech Republic|Krakow:Poland|Budapest:Hungary|Athens:Greece|"
    "Florence:Italy|Naples:Italy|Turin:Italy|Toronto:Canada|Vancouver:Canada|Montreal:Canada|"
    "Denver:the United States|Portland:the United States|Austin:the United States|Chicago:the United States|"
    "Seattle:the United States|Boston:the United States|Melbourne:Australia|Sydney:Australia|"
    "Auckland:New Zealand|Kyoto:Japan|Osaka:Japan|Seoul:South Korea|Mexico City:Mexico|Buenos Aires:Argentina")
FEATURES = ("riverside trails", "old bookshops", "street food", "farmers' market", "jazz bars", "little bakeries",
            "parks in autumn", "night markets", "old tram lines", "sunsets over the water")
JOBS = _table(  # job: a skill anyone in that job is expected to have (open-domain questions)
    "nurse:check someone's blood pressure|pharmacist:explain how two medicines interact|electrician:rewire a "
    "light switch|carpenter:build a bookshelf|accountant:prepare a tax return|architect:read a floor plan|"
    "chef:cook a three-course dinner|librarian:help someone find a good book|paramedic:perform CPR|"
    "software developer:write a small computer program|graphic designer:design a poster|veterinarian:tell "
    "when a dog is unwell|translator:translate a letter|physiotherapist:suggest exercises for a sore back|"
    "plumber:fix a leaking tap|pilot:read a weather chart|dental hygienist:clean teeth|urban planner:read a "
    "zoning map")
COMPANIES = ("Brightwater|Cobalt Works|Fernhill|Harbourline|Juniper Group|Kestrel Studio|Larkspur & Co|Oakridge|"
             "Quillon|Redfern Partners|Silverpine|Tidewell|Upland Labs|Willowby|Yarrowfield|Northgate|Emberly|"
             "Moss & Vale|Pinecrest|Alder Systems").split("|")
SPECIES = {"dog": ("beagle", "corgi", "greyhound", "poodle", "border collie"),
           "cat": ("tabby", "Siamese", "Maine Coon", "Persian"), "rabbit": ("Holland Lop", "Rex", "Lionhead"),
           "parrot": ("cockatiel", "African grey", "lovebird"), "guinea pig": ("Peruvian", "Teddy", "Sheltie")}
PET_NAMES = ("Biscuit Miso Ziggy Clover Luna Chester Rocket Sprout Pumpkin Mochi Waffles Pickles Juno Bramble "
             "Pixel Marble Comet Domino Gizmo Hazel").split()
HOBBIES = _table(  # hobby: an outing a fan of it would likely enjoy (open-domain questions)
    "hiking:a weekend walking in a national park|rock climbing:a day at a bouldering gym|pottery:a ceramics "
    "fair|painting:an afternoon at an art museum|baking:a bread-making workshop|chess:a chess tournament|"
    "birdwatching:a morning at a wetland reserve|gardening:a visit to a plant nursery|cycling:a bike tour|"
    "swimming:a day at the lake|knitting:a visit to a yarn shop|woodworking:a furniture-making class|yoga:a "
    "meditation retreat|salsa dancing:a dance festival|board games:an evening at a board game cafe|kayaking:a "
    "day paddling on a river|sketching:a life drawing class|tennis:watching a tennis final")
SINCE = ("since high school", "since college", "since my twenties", "since I was a kid", "since my first job")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
PURPOSES = ("a friend's wedding|a work conference|a food festival|a football match|a cousin's graduation|a jazz "
            "festival|a family reunion|a design fair|a book fair|a language course|a sailing weekend|a film "
            "festival|a cooking class|a half marathon|a job interview|a birthday party").split("|")
# Bands, books and restaurants are made up from word pairs (256, 144, 144 of them), so long conversations do not
# run out; the three families share no words, and within a family no name contains another.
BANDS = [f"The {a} {b}" for a in "Paper Velvet Northbound Static Copper Midnight Glass Quiet Hollow Brass Wandering "
         "Polar Marigold Silver Amber Crimson".split() for b in "Lanterns Owls Foxes Tides Pines Kites Keys Engines "
         "Parlors Arcades Meadows Canyons Harbors Rivers Sparks Ghosts".split()]
COMPANIONS = ("sister", "brother", "cousin", "neighbour", "roommate", "coworkers", "best friend", "dad", "mom",
              "aunt", "uncle", "partner")
BOOKS = [f"{a} of {b}" for a in "Letters Songs Maps Houses Bridges Stories Winters Gardens Rooms Roads Islands "
         "Lights".split() for b in "Salt Honey Iron Rain Stone Smoke Dust Snow Thunder Silk Moss Tin".split()]
AUTHORS = [f"{a} {b}" for a in "Mara Tobias Priya Elise Kofi Ruth Sven Dana Lucia Hamid Ivy Otto Mei Agnes Teodor "
           "Nadia".split() for b in "Quint Lind Danner Moreau Mensah Okoro Aalto Whitlock Ferro Roshan Calder Brandt "
           "Zhou Holm Vlasic Karim".split()]
RESTAURANTS = [f"{a} {b}" for a in "Saffron Ember Nori Lotus Sparrow Thistle Clove Basil Mango Cedar Fennel "
               "Lantana".split() for b in "Table Kitchen Spoon Fork Ladle Grill Bistro Diner Cellar Pantry Tavern "
               "Canteen".split()]
DISHES = ("mushroom risotto", "lamb tagine", "seafood paella", "duck ramen", "beef rendang", "lentil dal",
          "fish tacos", "chicken katsu", "spinach gnocchi", "pork bao", "tuna poke", "goat curry")
GREETINGS = ("Hey {o}! How have you been?", "Hi {o}, good to hear from you!", "{o}! It's been a while, how are "
             "things?", "Hey {o}, hope your week is going well.")
GOODBYES = ("Anyway, I should get going. Talk soon!", "This was fun, let's catch up again soon.",
            "Take care, {o}! Bye for now.", "Gotta run, but great chatting!")
REACTIONS = ("That's so nice to hear!", "Wow, how exciting!", "Oh nice, that sounds lovely.",
             "Ha, that's great to hear.", "Oh, I didn't know that!", "I love that for you.")
SMALL_TALK = ("Things have been pretty busy, but good.", "The weather has been all over the place lately.",
              "I've been trying to get more sleep, with mixed results.", "It's been a long few days, honestly.",
              "I keep meaning to call you more often.", "Honestly, I just need a quiet evening.",
              "What have you been up to?", "Any plans coming up?", "I made way too much coffee this morning.",
              "It's nice to just chat like this.")
SHORT_REACTIONS = ("Oh nice!", "Wow!", "That's great!", "How fun!", "Love that.")

# Turn templates: {h} handle, {d} detail, {x} extra, {w} when, {ah}/{ad}/{ax} with "a"/"an" before them.
TEXT = {"hometown": "I grew up in {h} and I still live there. I love the {d}.",
        "job": "I work as {ah} at {d}. Busy, but I like it.",
        "pet": "My {x} {h} says hi! {h} is {ad} and a total goofball.",
        "hobby": "I've been into {h} {d}. It keeps me sane.",
        "new_job": "Big news: I started a new job as {ah} at {d} {w}!",
        "move": "I moved to {h} {w} for the new job. Still unpacking boxes!",
        "new_hobby": "Since the move I've taken up {h}. I started {w} and now I go every {d}.",
        "adopt": "I adopted {ax} named {h} {w}! {h} is {ad}.",
        "trip": "I just got back from {h}! I went {w} for {d}.",
        "concert": "I saw {h} live {w} with my {d}. What a show!",
        "book": 'I finished reading "{h}" by {d} {w}. Could not put it down.',
        "restaurant": "I tried {h} {w} and had the {d}. So good!"}
# Questions whose answer is the detail: single-hop about the owner, adversarial about the other speaker.
DETAIL_QUESTION = {"hometown": "What does {n} love most about {h}?", "job": "Where has {n} worked as {ah}?",
                   "new_job": "Where has {n} worked as {ah}?", "pet": "What breed is {n}'s {x} {h}?",
                   "adopt": "What breed is {n}'s {x} {h}?", "hobby": "Since when has {n} been into {h}?",
                   "new_hobby": "Which day of the week does {n} do {h}?", "move": "Why did {n} move to {h}?",
                   "trip": "Why did {n} go to {h}?", "concert": "Who did {n} see {h} live with?",
                   "book": 'Who wrote "{h}", the book {n} finished?', "restaurant": "What did {n} have at {h}?"}
HANDLE_QUESTION = {"hometown": "Where did {n} grow up?", "job": "What was {n}'s job at {d}?",
                   "new_job": "What was {n}'s job at {d}?", "pet": "What is the name of {n}'s {x}?",
                   "adopt": "What is the name of {n}'s {x}?", "trip": "Where did {n} go for {d}?",
                   "book": "Which book by {d} did {n} finish?"}
EVENT_PHRASES = {"new_job": ("start working as {ah}", "started working as {ah}"),
                 "move": ("move to {h}", "moved to {h}"), "new_hobby": ("take up {h}", "took up {h}"),
                 "adopt": ("adopt {h}", "adopted {h}"), "trip": ("go to {h}", "went to {h}"),
                 "concert": ("see {h} live", "saw {h} live"),
                 "book": ('finish reading "{h}"', 'finished reading "{h}"'), "restaurant": ("try {h}", "tried {h}")}
LISTS = (("hometown move", "Which cities has {n} lived in?"), ("job new_job", "Which jobs has {n} had?"),
         ("pet adopt", "What are the names of {n}'s pets?"), ("hobby new_hobby", "What are {n}'s hobbies?"),
         ("trip", "Which cities has {n} visited on trips?"), ("concert", "Which bands has {n} seen live?"),
         ("book", "Which books has {n} finished reading?"), ("restaurant", "Which restaurants has {n} tried?"))
