"""General-knowledge questions outside the fusion expert's task (country capitals), and scoring.

A hand-written pool of short factual questions (science, history, literature, geography
other than capitals, arts, everyday facts), each with one or more accepted answers.
bench/fusion.py selects from it the questions the 1.5B base answers and the 0.5B base does
not ("knowledge the large model has and the small model lacks"), in the same greedy
decoding as the evaluation. The answers are checked as whole words in the first line of the
output after folding case and accents, so `` [[Paris]]``, ``Paris.`` and ``The capital is
Paris`` all count, while ``Parisian`` or a later line do not.
"""

from __future__ import annotations

import re
import unicodedata

TEMPLATE = "Q: {q}\nA:"

# (question, accepted answers); answers are matched as whole words after folding
QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the chemical symbol for gold?", ("Au",)),
    ("What is the chemical symbol for sodium?", ("Na",)),
    ("What is the chemical symbol for iron?", ("Fe",)),
    ("What is the chemical symbol for silver?", ("Ag",)),
    ("What is the chemical symbol for lead?", ("Pb",)),
    ("Which element has atomic number 1?", ("hydrogen",)),
    ("Which element has atomic number 6?", ("carbon",)),
    ("Which element has atomic number 8?", ("oxygen",)),
    ("Which element has atomic number 2?", ("helium",)),
    ("Which planet is closest to the Sun?", ("Mercury",)),
    ("Which planet is the largest in the Solar System?", ("Jupiter",)),
    ("Which planet is known as the Red Planet?", ("Mars",)),
    ("Which planet has the most famous rings?", ("Saturn",)),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("What is the longest river in South America?", ("Amazon",)),
    ("What is the highest mountain in the world?", ("Everest",)),
    ("On which continent is the Sahara desert?", ("Africa",)),
    ("On which continent is Argentina?", ("South America",)),
    ("Which country has the largest population in South America?", ("Brazil",)),
    ("What is the largest country in the world by area?", ("Russia",)),
    ("Which ocean lies between Africa and Australia?", ("Indian",)),
    ("What is the currency of Japan?", ("yen",)),
    ("What is the currency of the United Kingdom?", ("pound", "pounds", "sterling")),
    ("What is the currency of India?", ("rupee", "rupees")),
    ("What is the currency of Switzerland?", ("franc", "francs")),
    ("What is the currency of Russia?", ("ruble", "rubles", "rouble", "roubles")),
    ("What language is mainly spoken in Brazil?", ("Portuguese",)),
    ("What language is mainly spoken in Argentina?", ("Spanish",)),
    ("What language is mainly spoken in Iran?", ("Persian", "Farsi")),
    ("Who wrote the play Hamlet?", ("Shakespeare",)),
    ("Who wrote the novel Pride and Prejudice?", ("Austen",)),
    ("Who wrote the novel War and Peace?", ("Tolstoy",)),
    ("Who wrote the novel Don Quixote?", ("Cervantes",)),
    ("Who wrote the novel 1984?", ("Orwell",)),
    ("Who wrote the Odyssey?", ("Homer",)),
    ("Who wrote the novel Moby-Dick?", ("Melville",)),
    ("Who wrote the novel Crime and Punishment?", ("Dostoevsky", "Dostoyevsky")),
    ("Who wrote The Divine Comedy?", ("Dante",)),
    ("Who painted the Mona Lisa?", ("Leonardo", "da Vinci")),
    ("Who painted The Starry Night?", ("Van Gogh",)),
    ("Who painted Guernica?", ("Picasso",)),
    ("Who sculpted the statue of David in Florence?", ("Michelangelo",)),
    ("Who composed the Fifth Symphony that begins with four famous notes?", ("Beethoven",)),
    ("Who composed the opera The Magic Flute?", ("Mozart",)),
    ("Who composed The Four Seasons?", ("Vivaldi",)),
    ("Who developed the theory of general relativity?", ("Einstein",)),
    ("Who proposed the theory of evolution by natural selection?", ("Darwin",)),
    ("Who formulated the three laws of motion?", ("Newton",)),
    ("Who discovered penicillin?", ("Fleming",)),
    ("Who was the first person to walk on the Moon?", ("Armstrong",)),
    ("Who was the first President of the United States?", ("Washington",)),
    ("Who was the first woman to win a Nobel Prize?", ("Curie",)),
    ("Who invented the telephone?", ("Bell",)),
    ("Who was the first emperor of Rome?", ("Augustus",)),
    ("Which ship sank in 1912 after hitting an iceberg?", ("Titanic",)),
    ("In which year did World War II end?", ("1945",)),
    ("In which year did World War I begin?", ("1914",)),
    ("In which year did the Berlin Wall fall?", ("1989",)),
    ("In which year did Christopher Columbus first reach the Americas?", ("1492",)),
    ("In which year did humans first land on the Moon?", ("1969",)),
    ("In which year did the French Revolution begin?", ("1789",)),
    ("In which country are the pyramids of Giza?", ("Egypt",)),
    ("In which country is Machu Picchu?", ("Peru",)),
    ("In which city is the Colosseum?", ("Rome",)),
    ("In which city is the Eiffel Tower?", ("Paris",)),
    ("In which city is the Statue of Liberty?", ("New York",)),
    ("In which country is the Taj Mahal?", ("India",)),
    ("In which country is Mount Kilimanjaro?", ("Tanzania",)),
    ("In which country is the city of Timbuktu?", ("Mali",)),
    ("In which country is the Acropolis?", ("Greece",)),
    ("What is the largest organ of the human body?", ("skin",)),
    ("How many bones are in the adult human body?", ("206",)),
    ("How many chambers does the human heart have?", ("four", "4")),
    ("What gas do plants absorb from the air for photosynthesis?", ("carbon dioxide", "CO2")),
    ("What is the hardest natural substance?", ("diamond", "diamonds")),
    ("What is the boiling point of water in degrees Celsius at sea level?", ("100",)),
    ("What is the freezing point of water in degrees Fahrenheit?", ("32",)),
    ("How many continents are there?", ("seven", "7")),
    ("How many sides does a hexagon have?", ("six", "6")),
    ("How many players are on a soccer team on the field?", ("eleven", "11")),
    ("What is the square root of 144?", ("12", "twelve")),
    ("What is the largest mammal?", ("blue whale",)),
    ("What is the fastest land animal?", ("cheetah", "cheetahs")),
    ("What is the tallest animal?", ("giraffe", "giraffes")),
    ("What do bees make?", ("honey",)),
    ("What is the main language of Quebec?", ("French",)),
    ("Which sport is played at Wimbledon?", ("tennis",)),
    ("How many rings are on the Olympic flag?", ("five", "5")),
    ("Which country hosted the 2016 Summer Olympics?", ("Brazil",)),
    ("Which instrument has 88 keys?", ("piano",)),
    ("What is the name of the galaxy that contains the Solar System?", ("Milky Way",)),
    ("What is the smallest prime number?", ("2", "two")),
    ("What is the longest river in Africa?", ("Nile",)),
    ("Which desert is the largest hot desert in the world?", ("Sahara",)),
]


def fold(text: str) -> str:
    """Lower case without accents: ``Bogotá`` → ``bogota``, ``Chișinău`` → ``chisinau``."""
    norm = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in norm if not unicodedata.combining(ch)).lower()


def first_line(text: str) -> str:
    return text.strip().split("\n")[0]


def contains_answer(text: str, answers: str | tuple[str, ...]) -> bool:
    """Whether the first line of ``text`` holds one of ``answers`` as whole words (folded)."""
    if isinstance(answers, str):
        answers = (answers,)
    line = fold(first_line(text))
    for a in answers:
        pat = r"(?<![0-9a-z])" + re.escape(fold(a)).replace(r"\ ", r"[\s-]+") + r"(?![0-9a-z])"
        if re.search(pat, line):
            return True
    return False
