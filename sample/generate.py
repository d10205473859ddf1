"""Write sample/todos.json: todos shaped like the public API's, the same every time.

Usage: python sample/generate.py [COUNT] [PATH]   (default: 200 sample/todos.json)
"""
import json
import random
import sys
from pathlib import Path

WORDS = ("delectus aut autem quis ut nam facilis et officia qui fugiat veniam minus porro "
         "tempora laboriosam mollitia enim quasi adipisci quia provident illum qui ullam "
         "ratione quibusdam voluptatem quia omnis illo expedita consequatur harum sint "
         "molestiae accusamus praesentium").split()
# A few titles with accents and quotes, so the output shows they stay readable.
EXTRA = ("señal de prueba", "revisión añadida", "café \"con\" leche", "über straße")


def todos(count: int, seed: int = 0) -> list:
    """count todos: 20 per user, ids from 1, titles of 3 to 8 words."""
    rng = random.Random(seed)
    result = []
    for i in range(count):
        words = rng.choices(WORDS, k=rng.randint(3, 8))
        title = " ".join(words) if i % 50 != 7 else EXTRA[(i // 50) % len(EXTRA)]
        result.append({"userId": i // 20 + 1, "id": i + 1, "title": title,
                       "completed": rng.random() < 0.4})
    return result


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    path = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("todos.json")
    path.write_text(json.dumps(todos(count), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
