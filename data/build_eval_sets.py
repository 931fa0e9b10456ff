"""Writes the bundled evaluation sets (self-made, deterministic) under data/eval/.

    python data/build_eval_sets.py        # -> data/eval/{mc,arith}_{test,dev}.jsonl

- mc_*.jsonl: multiple choice in MMLU / C-Eval format, half English, half Chinese:
  {"question", "choices": [4 strings], "answer": index 0..3, "subject", "language"}.
- arith_*.jsonl: arithmetic word problems in GSM8K format, half English, half Chinese:
  {"question", "answer": "worked solution\\n#### N"}.

`test` is what the tasks score; `dev` holds the few-shot examples (other items). Every item is
composed here from templates and a seeded generator: no external source (data/README.md).
"""

from __future__ import annotations

import json
import os
import random

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval")
LETTERS = "ABCD"

DAYS_EN = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DAYS_ZH = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
MONTHS_EN = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
             "November", "December"]
MONTHS_ZH = ["一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月", "十一月", "十二月"]
# (country, capital) in English and Chinese
CAPITALS = [("France", "Paris", "法国", "巴黎"), ("Japan", "Tokyo", "日本", "东京"), ("China", "Beijing", "中国", "北京"),
            ("Italy", "Rome", "意大利", "罗马"), ("Germany", "Berlin", "德国", "柏林"), ("Egypt", "Cairo", "埃及", "开罗"),
            ("Spain", "Madrid", "西班牙", "马德里"), ("Russia", "Moscow", "俄罗斯", "莫斯科"),
            ("the United Kingdom", "London", "英国", "伦敦"), ("South Korea", "Seoul", "韩国", "首尔")]
# (thing, count) facts
COUNTS_EN = [("legs does a spider have", 8), ("days are in a week", 7), ("months are in a year", 12),
             ("sides does a triangle have", 3), ("minutes are in an hour", 60), ("legs does a cat have", 4),
             ("sides does a hexagon have", 6), ("hours are in a day", 24)]
COUNTS_ZH = [("蜘蛛有几条腿", 8), ("一个星期有几天", 7), ("一年有几个月", 12), ("三角形有几条边", 3),
             ("一小时有多少分钟", 60), ("猫有几条腿", 4), ("六边形有几条边", 6), ("一天有多少小时", 24)]


def _options(rng: random.Random, right, wrong_pool) -> tuple[list, int]:
    wrong = rng.sample([w for w in dict.fromkeys(wrong_pool) if w != right], 3)
    choices = wrong + [right]
    rng.shuffle(choices)
    return [str(c) for c in choices], choices.index(right)


def _near(rng: random.Random, n: int) -> list[int]:
    return [n + d for d in rng.sample([-10, -3, -2, -1, 1, 2, 3, 10], 6) if n + d >= 0]


def mc_items(rng: random.Random, zh: bool) -> list[dict]:
    items = []

    def add(q, right, pool, subject):
        choices, answer = _options(rng, right, pool)
        items.append({"question": q, "choices": choices, "answer": answer, "subject": subject,
                      "language": "zh" if zh else "en"})

    for _ in range(14):
        a, b = rng.randint(10, 89), rng.randint(10, 89)
        if rng.random() < 0.5:
            add(f"{a} 加 {b} 等于多少？" if zh else f"What is {a} + {b}?", a + b, _near(rng, a + b), "arithmetic")
        else:
            a, b = max(a, b), min(a, b)
            add(f"{a} 减 {b} 等于多少？" if zh else f"What is {a} - {b}?", a - b, _near(rng, a - b), "arithmetic")
    for _ in range(8):
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        add(f"{a} 乘以 {b} 等于多少？" if zh else f"What is {a} times {b}?", a * b, _near(rng, a * b), "arithmetic")
    days = DAYS_ZH if zh else DAYS_EN
    for i in rng.sample(range(7), 6):
        add(f"{days[i]}的后一天是星期几？" if zh else f"Which day comes after {days[i]}?", days[(i + 1) % 7], days,
            "calendar")
    months = MONTHS_ZH if zh else MONTHS_EN
    for i in rng.sample(range(12), 6):
        add(f"{months[i]}的下一个月是几月？" if zh else f"Which month comes after {months[i]}?", months[(i + 1) % 12],
            months, "calendar")
    for en_c, en_cap, zh_c, zh_cap in CAPITALS[:8]:
        caps = [c[3] if zh else c[1] for c in CAPITALS]
        add(f"{zh_c}的首都是哪座城市？" if zh else f"What is the capital of {en_c}?", zh_cap if zh else en_cap, caps,
            "geography")
    for thing, n in (COUNTS_ZH if zh else COUNTS_EN):
        add(f"{thing}？" if zh else f"How many {thing}?", n, [2, 3, 4, 5, 6, 7, 8, 10, 12, 24, 30, 60, 100],
            "common sense")
    return items


def arith_items(rng: random.Random, zh: bool, count: int) -> list[dict]:
    names_en = ["Tom", "Anna", "Li Wei", "Maria", "Sam", "Chen Jie", "Omar", "Lucy"]
    names_zh = ["小明", "小红", "李伟", "王芳", "张强", "陈杰", "刘洋", "赵敏"]
    things_en = ["apples", "books", "pencils", "stamps", "marbles", "cookies"]
    things_zh = [("个", "苹果"), ("本", "书"), ("支", "铅笔"), ("张", "邮票"), ("颗", "弹珠"), ("块", "饼干")]
    items = []
    for _ in range(count):
        name = rng.choice(names_zh if zh else names_en)
        k = rng.randrange(len(things_en))
        m, thing = things_zh[k] if zh else ("", things_en[k])
        kind = rng.randrange(4)
        a, b, c = rng.randint(5, 40), rng.randint(2, 20), rng.randint(2, 6)
        if kind == 0:
            n = a + b
            q = (f"{name}有{a}{m}{thing}，又买了{b}{m}。{name}现在一共有多少{m}{thing}？" if zh else
                 f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?")
            s = f"{a} + {b} = {n}。" if zh else f"{name} has {a} + {b} = {n} {thing}."
        elif kind == 1:
            a = a + b
            n = a - b
            q = (f"{name}有{a}{m}{thing}，送给朋友{b}{m}。{name}还剩多少{m}{thing}？" if zh else
                 f"{name} has {a} {thing} and gives {b} to a friend. How many {thing} are left?")
            s = f"{a} - {b} = {n}。" if zh else f"{name} has {a} - {b} = {n} {thing} left."
        elif kind == 2:
            n = b * c
            q = (f"每个盒子里有{b}{m}{thing}，{name}有{c}个盒子。一共有多少{m}{thing}？" if zh else
                 f"Each box holds {b} {thing}. {name} has {c} boxes. How many {thing} are there in all?")
            s = f"{b} × {c} = {n}。" if zh else f"There are {b} * {c} = {n} {thing}."
        else:
            n = a + b * c
            q = (f"{name}有{a}{m}{thing}，然后每天买{b}{m}，买了{c}天。{name}现在有多少{m}{thing}？" if zh else
                 f"{name} has {a} {thing}, then buys {b} each day for {c} days. How many {thing} does {name} have now?")
            s = (f"{c}天买了{b} × {c} = {b * c}{m}，{a} + {b * c} = {n}。" if zh else
                 f"{name} buys {b} * {c} = {b * c} {thing}, so {name} has {a} + {b * c} = {n} {thing}.")
        items.append({"question": q, "answer": f"{s}\n#### {n}"})
    return items


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(20240527)
    mc = {lang: mc_items(rng, lang == "zh") for lang in ("en", "zh")}
    for items in mc.values():
        rng.shuffle(items)
    sets = {
        "mc_test": mc["en"][:47] + mc["zh"][:47],
        "mc_dev": mc["en"][47:] + mc["zh"][47:],
        "arith_test": arith_items(rng, False, 50) + arith_items(rng, True, 50),
        "arith_dev": arith_items(rng, False, 4) + arith_items(rng, True, 4),
    }
    for name, rows in sets.items():
        with open(os.path.join(OUT, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"wrote {name}.jsonl: {len(rows)} items")


if __name__ == "__main__":
    main()
