"""The eight chat prompts the engine A/B scripts share."""

PROMPTS = [
    "Write a Python function that reverses a string.",
    "Explain what a hash map is in two sentences.",
    "Write a bash one-liner that counts lines in all .py files.",
    "What is the difference between a list and a tuple in Python?",
    "Write a SQL query selecting the ten newest users.",
    "How do I read a JSON file in Python?",
    "Write a haiku about compilers.",
    "What does the git rebase command do?",
]
