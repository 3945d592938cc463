#!/usr/bin/python3
"""ChatML instruction pairs for the demo model: short Python tasks and answers.

  python3 scripts/demo/chat_data.py --out DIR [--corpus DIR] [--max-corpus-pairs 60000]

Two kinds of pairs, each rendered with CHAT_TEMPLATE (the demo's chat template, Python
Jinja2) and written to DIR/chat_train.jsonl and DIR/chat_val.jsonl:
  - the TASKS below, written for this file (all compile with Python 3), each phrased several
    ways; a few tasks are held out for validation;
  - with --corpus (make_corpus.py's output), pairs made from the corpus itself: every short
    top-level function with a one-line docstring summary becomes "Write a Python function
    `name(args)`. <summary>" answered by the function's source; functions from validation
    files go to chat_val.jsonl.
"""
import argparse
import ast
import json
import os
import random
import sys

import jinja2

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful coding assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# (task description, code)
TASKS = [
    ("reverses a list", "def reverse_list(items):\n    return items[::-1]"),
    ("reverses a string", "def reverse_string(s):\n    return s[::-1]"),
    ("returns the sum of a list of numbers", "def sum_list(numbers):\n    total = 0\n    for n in numbers:\n        total += n\n    return total"),
    ("returns the largest element of a list", "def max_element(items):\n    best = items[0]\n    for x in items[1:]:\n        if x > best:\n            best = x\n    return best"),
    ("returns the smallest element of a list", "def min_element(items):\n    best = items[0]\n    for x in items[1:]:\n        if x < best:\n            best = x\n    return best"),
    ("computes the factorial of n", "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result"),
    ("returns the n-th Fibonacci number", "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
    ("checks whether a number is prime", "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True"),
    ("checks whether a string is a palindrome", "def is_palindrome(s):\n    return s == s[::-1]"),
    ("counts the vowels in a string", "def count_vowels(s):\n    return sum(1 for c in s.lower() if c in 'aeiou')"),
    ("removes duplicates from a list while keeping the order", "def unique(items):\n    seen = set()\n    result = []\n    for x in items:\n        if x not in seen:\n            seen.add(x)\n            result.append(x)\n    return result"),
    ("flattens a list of lists", "def flatten(lists):\n    return [x for sub in lists for x in sub]"),
    ("returns the average of a list of numbers", "def average(numbers):\n    return sum(numbers) / len(numbers)"),
    ("counts how often each word occurs in a text", "def word_counts(text):\n    counts = {}\n    for word in text.split():\n        counts[word] = counts.get(word, 0) + 1\n    return counts"),
    ("sorts a list of numbers in ascending order", "def sort_numbers(numbers):\n    return sorted(numbers)"),
    ("returns the even numbers of a list", "def even_numbers(numbers):\n    return [n for n in numbers if n % 2 == 0]"),
    ("returns the odd numbers of a list", "def odd_numbers(numbers):\n    return [n for n in numbers if n % 2 == 1]"),
    ("squares every number in a list", "def squares(numbers):\n    return [n * n for n in numbers]"),
    ("converts a temperature from Celsius to Fahrenheit", "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32"),
    ("converts a temperature from Fahrenheit to Celsius", "def fahrenheit_to_celsius(f):\n    return (f - 32) * 5 / 9"),
    ("computes the greatest common divisor of two numbers", "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a"),
    ("computes the least common multiple of two numbers", "def lcm(a, b):\n    x, y = a, b\n    while y:\n        x, y = y, x % y\n    return a * b // x"),
    ("merges two dictionaries", "def merge_dicts(a, b):\n    result = dict(a)\n    result.update(b)\n    return result"),
    ("reads a text file and returns its lines", "def read_lines(path):\n    with open(path) as f:\n        return f.read().splitlines()"),
    ("writes a list of strings to a file, one per line", "def write_lines(path, lines):\n    with open(path, 'w') as f:\n        for line in lines:\n            f.write(line + '\\n')"),
    ("capitalizes the first letter of every word", "def capitalize_words(text):\n    return ' '.join(w.capitalize() for w in text.split())"),
    ("checks whether two strings are anagrams", "def is_anagram(a, b):\n    return sorted(a) == sorted(b)"),
    ("returns the length of the longest word in a sentence", "def longest_word_length(sentence):\n    return max(len(w) for w in sentence.split())"),
    ("splits a list into chunks of size n", "def chunks(items, n):\n    return [items[i:i + n] for i in range(0, len(items), n)]"),
    ("performs a binary search on a sorted list", "def binary_search(items, target):\n    lo, hi = 0, len(items) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if items[mid] == target:\n            return mid\n        if items[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n    return -1"),
    ("sorts a list with bubble sort", "def bubble_sort(items):\n    items = list(items)\n    n = len(items)\n    for i in range(n):\n        for j in range(n - 1 - i):\n            if items[j] > items[j + 1]:\n                items[j], items[j + 1] = items[j + 1], items[j]\n    return items"),
    ("counts the number of words in a string", "def count_words(text):\n    return len(text.split())"),
    ("returns the digits of a number as a list", "def digits(n):\n    return [int(c) for c in str(abs(n))]"),
    ("sums the digits of a number", "def digit_sum(n):\n    return sum(int(c) for c in str(abs(n)))"),
    ("checks whether a year is a leap year", "def is_leap_year(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)"),
    ("returns the index of an element in a list, or -1", "def find_index(items, target):\n    for i, x in enumerate(items):\n        if x == target:\n            return i\n    return -1"),
    ("converts a list of strings to uppercase", "def to_upper(strings):\n    return [s.upper() for s in strings]"),
    ("returns the first n prime numbers", "def first_primes(n):\n    primes = []\n    candidate = 2\n    while len(primes) < n:\n        if all(candidate % p for p in primes):\n            primes.append(candidate)\n        candidate += 1\n    return primes"),
    ("returns the common elements of two lists", "def common_elements(a, b):\n    return [x for x in a if x in set(b)]"),
    ("rotates a list by k positions", "def rotate(items, k):\n    if not items:\n        return items\n    k %= len(items)\n    return items[-k:] + items[:-k]"),
    ("returns the second largest number in a list", "def second_largest(numbers):\n    return sorted(set(numbers))[-2]"),
    ("counts the characters in a string", "def char_counts(s):\n    counts = {}\n    for c in s:\n        counts[c] = counts.get(c, 0) + 1\n    return counts"),
    ("converts a binary string to an integer", "def binary_to_int(bits):\n    return int(bits, 2)"),
    ("converts an integer to a binary string", "def int_to_binary(n):\n    return bin(n)[2:]"),
    ("removes all whitespace from a string", "def remove_whitespace(s):\n    return ''.join(s.split())"),
    ("returns the product of a list of numbers", "def product(numbers):\n    result = 1\n    for n in numbers:\n        result *= n\n    return result"),
    ("zips two lists into a dictionary", "def to_dict(keys, values):\n    return dict(zip(keys, values))"),
    ("inverts a dictionary", "def invert_dict(d):\n    return {v: k for k, v in d.items()}"),
    ("returns the keys of a dictionary sorted by value", "def keys_by_value(d):\n    return sorted(d, key=d.get)"),
    ("checks whether a list is sorted", "def is_sorted(items):\n    return all(a <= b for a, b in zip(items, items[1:]))"),
    ("returns the running sum of a list", "def running_sum(numbers):\n    total = 0\n    result = []\n    for n in numbers:\n        total += n\n        result.append(total)\n    return result"),
    ("computes the power of a number", "def power(base, exponent):\n    return base ** exponent"),
    ("clamps a value between a minimum and a maximum", "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))"),
    ("returns the last n elements of a list", "def last_n(items, n):\n    return items[-n:] if n > 0 else []"),
    ("computes the distance between two points", "import math\n\n\ndef distance(p, q):\n    return math.hypot(q[0] - p[0], q[1] - p[1])"),
    ("checks whether a string contains only digits", "def is_number(s):\n    return s.isdigit()"),
    ("reverses the words in a sentence", "def reverse_words(sentence):\n    return ' '.join(reversed(sentence.split()))"),
    ("returns a list of numbers from 1 to n", "def numbers_up_to(n):\n    return list(range(1, n + 1))"),
    ("counts the lines in a file", "def count_lines(path):\n    with open(path) as f:\n        return sum(1 for _ in f)"),
    ("returns the most common element of a list", "from collections import Counter\n\n\ndef most_common(items):\n    return Counter(items).most_common(1)[0][0]"),
    ("parses a JSON string into a Python object", "import json\n\n\ndef parse_json(text):\n    return json.loads(text)"),
    ("returns the current date as a string", "import datetime\n\n\ndef today():\n    return datetime.date.today().isoformat()"),
    ("prints the numbers from 1 to 100 with FizzBuzz rules", "def fizzbuzz():\n    for i in range(1, 101):\n        if i % 15 == 0:\n            print('FizzBuzz')\n        elif i % 3 == 0:\n            print('Fizz')\n        elif i % 5 == 0:\n            print('Buzz')\n        else:\n            print(i)"),
    ("transposes a matrix given as a list of lists", "def transpose(matrix):\n    return [list(row) for row in zip(*matrix)]"),
    ("adds two matrices", "def add_matrices(a, b):\n    return [[x + y for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]"),
    ("returns the length of a linked list", "def list_length(node):\n    n = 0\n    while node is not None:\n        n += 1\n        node = node.next\n    return n"),
    ("implements a stack class with push and pop", "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n\n    def is_empty(self):\n        return not self.items"),
    ("implements a queue class with enqueue and dequeue", "from collections import deque\n\n\nclass Queue:\n    def __init__(self):\n        self.items = deque()\n\n    def enqueue(self, item):\n        self.items.append(item)\n\n    def dequeue(self):\n        return self.items.popleft()"),
    ("checks whether the brackets in a string are balanced", "def balanced(s):\n    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n    for c in s:\n        if c in '([{':\n            stack.append(c)\n        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n                return False\n    return not stack"),
]

PHRASINGS = [
    "Write a function that {t}.",
    "Write a Python function that {t}.",
    "Implement a function that {t}.",
    "Create a Python function which {t}.",
    "Can you write a function that {t}?",
    "Please write a function that {t}.",
]
INTROS = ["", "Here is a function that {t}:\n\n", "Sure. This function {t}:\n\n"]


def corpus_functions(path, limit):
    """(prompt, answer) pairs from the short documented top-level functions of a jsonl corpus."""
    pairs = []
    with open(path) as f:
        for line in f:
            text = json.loads(line)["text"]
            try:
                tree = ast.parse(text)
            except (SyntaxError, ValueError, RecursionError):
                continue
            for node in tree.body:
                if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.decorator_list:
                    continue
                doc = ast.get_docstring(node)
                src = ast.get_source_segment(text, node)
                if not doc or not src or not (3 <= src.count("\n") <= 24) or len(src) > 1200:
                    continue
                summary = doc.strip().split("\n")[0].strip()
                if not (12 <= len(summary) <= 120) or not summary[0].isalpha() or not summary.endswith("."):
                    continue
                args = ast.unparse(node.args)
                prompt = "Write a Python function `%s(%s)`. %s" % (node.name, args, summary)
                pairs.append((prompt, "```python\n" + src + "\n```"))
                if len(pairs) >= limit:
                    return pairs
    return pairs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tmp/demo-data")
    ap.add_argument("--corpus", help="make_corpus.py output folder (train.jsonl, val.jsonl)")
    ap.add_argument("--max-corpus-pairs", type=int, default=60000)
    a = ap.parse_args()
    rng = random.Random(1234)
    tmpl = jinja2.Environment().from_string(CHAT_TEMPLATE)
    for _, code in TASKS:
        compile(code, "<task>", "exec")
    idx = list(range(1, len(TASKS)))  # task 0 (the README demo prompt) stays in training
    rng.shuffle(idx)
    val_tasks = set(idx[:6])
    os.makedirs(a.out, exist_ok=True)
    n = {"train": 0, "val": 0}
    with open(os.path.join(a.out, "chat_train.jsonl"), "w") as ftr, open(os.path.join(a.out, "chat_val.jsonl"), "w") as fva:
        for i, (t, code) in enumerate(TASKS):
            for p in PHRASINGS:
                intro = rng.choice(INTROS).format(t=t)
                answer = intro + "```python\n" + code + "\n```"
                msgs = [{"role": "user", "content": p.format(t=t)}, {"role": "assistant", "content": answer}]
                text = tmpl.render(messages=msgs, add_generation_prompt=False)
                split = "val" if i in val_tasks else "train"
                (fva if split == "val" else ftr).write(json.dumps({"text": text, "messages": msgs}) + "\n")
                n[split] += 1
        if a.corpus:
            for split, fout in (("train", ftr), ("val", fva)):
                pairs = corpus_functions(os.path.join(a.corpus, split + ".jsonl"), a.max_corpus_pairs)
                for prompt, answer in pairs:
                    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
                    fout.write(json.dumps({"text": tmpl.render(messages=msgs, add_generation_prompt=False),
                                           "messages": msgs}) + "\n")
                n["corpus_" + split] = len(pairs)
    print("chat pairs", n, "tasks", len(TASKS), flush=True)


if __name__ == "__main__":
    main()
