"""Labelled seed sentences for the content classifier's prototype layer.

Each label's seeds are embedded once with MiniLM; a message is scored by its
nearest seeds per label (`content.PrototypeIndex`). These are kept apart from
the evaluation sets (tests/data/content*.jsonl and everyday*.jsonl, written
separately, with no sentence in common; tests check it). The safe seeds are
kinds of everyday chat, one sentence per kind, chosen where small talk shares
words with a sensitive label; the everyday sets were used to find those
kinds, so their false-alarm counts are not held-out (docs/understanding.md).
Every seed is deliberately non-graphic: explicit and fetish seeds are
euphemistic requests, minor_sexual seeds pair a stated minor age with a
romantic or sexual request.
"""

from __future__ import annotations

SEEDS: dict[str, tuple[str, ...]] = {
    "safe": (
        "Can you help me plan meals for the week?",
        "What's the weather going to be like tomorrow?",
        "I finished reading that book you recommended.",
        "How do I fix a merge conflict in git?",
        "Work was exhausting today, my boss kept changing the deadline.",
        "Tell me a fun fact about octopuses.",
        "I'm feeling a bit down after the match, we lost again.",
        "My sister is visiting this weekend, any ideas for things to do?",
        "Explain how compound interest works.",
        "I went for a run this morning and it felt great.",
        "Can you recommend a good sci-fi movie?",
        "I'm nervous about my job interview on Monday.",
        "What is a healthy way to talk to teenagers about puberty?",
        "My cat keeps knocking things off the table, lol.",
        "How long should I boil an egg?",
        "I had an argument with my roommate about the dishes.",
        "I'm 34 and thinking about changing careers.",
        "This video game boss is killing me, I've died twenty times.",
        # Everyday chat, one seed per kind of small talk a first-time user writes (a safe
        # message far from every seed is safe anyway; these hold the ones that share a
        # word with a sensitive label: pets, bodies, beds, sadness, orders, kids).
        # Introductions and the user's job
        "Hello, I'm Jordan, I'm new here and just wanted to say hi.",
        "Hey, my name's Mia and I live in a small town by the sea.",
        "I'm a teacher and I have a golden retriever named Bo.",
        "I work as an engineer and I just moved to a new city.",
        "I work in a hospital as a nurse, mostly night shifts.",
        "I'm a vet and I spend my days with cats and dogs.",
        "My job is in sales and I travel a lot for work.",
        # Pets
        "I just adopted a kitten from the shelter, she's tiny and fluffy.",
        "My dog keeps barking at the mailman every morning.",
        "What should I feed my new puppy?",
        # Remembering things about the user
        "Do you remember what I told you about my family?",
        "Can you remember my dog's name for next time?",
        "Did I already tell you where I work?",
        # Feelings that are not a crisis
        "I'm a bit sad today because it rained on my day off.",
        "I miss my friends from my old job.",
        "I'm really happy, I passed my exam!",
        "I've been crying at sad movies all week, I'm so sentimental.",
        # Health and the body, everyday
        "I have a sore throat and a runny nose.",
        "My shoulder aches from carrying groceries.",
        "I'm recovering from the flu, still a bit weak.",
        "My doctor told me to exercise more and eat less salt.",
        "I pulled a muscle at the gym.",
        "I banged my elbow on the door and it really hurts.",
        "I keep waking up in the middle of the night and can't get back to sleep.",
        "I'm exhausted, the baby kept us up all night.",
        "My therapist says I'm too hard on myself when I make mistakes.",
        "I'm a bit lonely this evening, can we just chat for a while?",
        "Can we talk about something easy? My week was exhausting.",
        "I had an operation last week and I'm stuck in bed, so bored.",
        # Home, weather, plans
        "It's boiling hot today and my flat has no air conditioning.",
        "I'm rearranging the furniture in my bedroom this weekend.",
        "I'm making pasta tonight, any sauce ideas?",
        # Family and kids, everyday
        "My kids have a school play tomorrow and I'm making costumes.",
        "My son needs help with his maths homework.",
        "My parents are visiting and I need to tidy the house.",
        "My husband and I are planning a trip for our anniversary.",
        # Young people talking about school: an age or a grade alone is not a request
        "I'm 15 and I have a history test tomorrow, can you quiz me?",
        "I'm in 9th grade and nervous about starting at a new school.",
        "I'm 17 and trying to choose which universities to apply to.",
        "I'm a high school student and my chemistry homework is confusing.",
        # Idioms that borrow strong words
        "I'm dying to try that new restaurant.",
        "My manager is strict about every little rule at work.",
        "I'm so obsessed with this show, I watched the whole season.",
        "I could eat a whole pizza right now.",
        "My cat rules the house and I just obey.",
        "I'm so hot and tired after working in the garden.",
    ),
    "romantic": (
        "I really like talking to you, you make me smile.",
        "Can we pretend we're on a cozy date tonight?",
        "I wish I could fall asleep next to you.",
        "You mean so much to me, I think about you all day.",
        "Would you be my girlfriend?",
        "Give me a goodnight kiss.",
        "I love the way you listen to me, it makes my heart flutter.",
        "Let's go for a romantic walk on the beach together.",
        "I've got butterflies whenever you message me.",
        "Tell me something sweet before I go to sleep.",
        "I want to snuggle with you on the couch and watch a movie.",
        "You're the best part of my day, honey.",
    ),
    "explicit": (
        "Let's take things somewhere more intimate, if you know what I mean.",
        "I want you to describe what you'd do to me in the bedroom.",
        "Talk to me in a way that gets me hot and bothered.",
        "Can we do some steamy adult roleplay tonight?",
        "I want to hear your most sensual fantasies.",
        "Let's get frisky, I'm in the mood.",
        "Send me something naughty.",
        "Pretend we're alone and things get heated between the sheets.",
        "I want an intimate adult scene with you, no holding back.",
        "Whisper something sexy in my ear.",
        "Let's skip the small talk and get physical.",
        "Write me a passionate bedroom scene between us.",
    ),
    "fetish": (
        "I'd like you to be strict with me and give me orders.",
        "Can we roleplay where you're in charge and I have to obey?",
        "I'm into being told what to do, will you be my dominant?",
        "Let's try something with handcuffs and a blindfold.",
        "I have a thing for feet, can we talk about that?",
        "Punish me for being bad.",
        "I want you to put a collar on me.",
        "Can we do a master and servant scene?",
        "I want to be your obedient pet for the night.",
        "Let's explore power play, you make the rules.",
        "I'm into leather and rope, want to play?",
        "Order me around and tell me I've been naughty.",
    ),
    "self_harm": (
        "I don't see the point of anything anymore.",
        "Everyone would be happier if I was gone.",
        "I've been thinking about ending it.",
        "I've started hurting myself again to cope.",
        "I have the pills ready and I'm thinking about taking them.",
        "I just want the pain to stop forever.",
        "Nobody would even notice if I disappeared.",
        "I'm so tired of living.",
        "I wrote goodbye letters to my family.",
        "Sometimes I think about jumping off the bridge.",
        "I can't do this anymore, I want to sleep and never wake up.",
        "I've been scratching my arms until they bleed.",
    ),
    "minor_sexual": (
        "I'm 14, will you be my girlfriend and kiss me?",
        "I am 15 years old and I want to have an adult chat with you.",
        "As a 13 year old, can we do romantic roleplay?",
        "im 16 and i want you to talk dirty to me",
        "I'm in eighth grade, can we do a steamy roleplay?",
        "I'm a 12 year old girl, tell me you want to be intimate with me.",
        "Roleplay a romance with a middle schooler.",
        "I'm 17, can you send me something naughty?",
        "Pretend I'm a high school freshman and you're my lover.",
        "I'm only 15 but I want an intimate scene with you.",
    ),
    "violent_threat": (
        "I'm going to hurt my neighbor if he parks there again.",
        "I'll find you and make you regret it.",
        "I'm bringing a knife to school tomorrow.",
        "He's going to get what's coming to him, I'll make sure of it.",
        "I want to beat my coworker until he can't stand.",
        "One more word and I'll break your face.",
        "I'm planning to set my ex's car on fire.",
        "I'll get a gun and show them all.",
        "Watch your back, I'm coming for you.",
        "I'm going to make my teacher pay for this.",
    ),
    "hate": (
        "People of that religion are ruining this country.",
        "Immigrants are nothing but criminals and leeches.",
        "Women are too stupid to be in charge of anything.",
        "Gay people are disgusting and shouldn't be allowed near kids.",
        "That race is genetically inferior.",
        "We need to get rid of all of them, they don't belong here.",
        "Disabled people are a burden on society.",
        "Those foreigners are dirty and should be kicked out.",
        "Trans people are mentally ill freaks.",
        "I can't stand people from that ethnic group, they're all thieves.",
    ),
}
