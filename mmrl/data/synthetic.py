"""Generated tasks with verifiable answers, for CPU demos and tests (no downloads)."""
from __future__ import annotations

import random


def addition(num_examples: int, max_operand: int, seed: int) -> list[dict]:
    """'What is a + b?' with a, b in [0, max_operand]; the reference solution is '<answer>a+b</answer>'."""
    rng = random.Random(seed)
    rows = []
    for i in range(num_examples):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        rows.append({"id": f"add-{i}", "question": f"What is {a} + {b}?", "answer": str(a + b),
                     "solution": f"<answer>{a + b}</answer>"})
    return rows


def shapes(num_examples: int, max_operand: int, seed: int, image_size: int = 56) -> list[dict]:
    """'How many squares are there?' on a black image with 1..max_operand coloured squares, each in
    its own cell of a 4 x 4 grid (cells of image_size / 4 pixels: one vision patch at 56 px).
    `images` holds the PIL image; `thought` a short counting trace; `solution` the SFT target."""
    from PIL import Image, ImageDraw

    if not 1 <= max_operand <= 16:
        raise ValueError(f"data.synthetic.max_operand={max_operand}: the shapes task counts 1..16 squares")
    rng = random.Random(seed)
    cell = image_size // 4
    colours = [(230, 40, 40), (40, 200, 60), (50, 90, 230), (230, 210, 40)]
    rows = []
    for i in range(num_examples):
        count = rng.randint(1, max_operand)
        image = Image.new("RGB", (image_size, image_size))
        draw = ImageDraw.Draw(image)
        for c in rng.sample(range(16), count):
            x, y = (c % 4) * cell, (c // 4) * cell
            draw.rectangle([x + 1, y + 1, x + cell - 2, y + cell - 2], fill=rng.choice(colours))
        thought = "count: " + " ".join(str(k) for k in range(1, count + 1))
        rows.append({"id": f"shapes-{i}", "question": "How many squares are there?", "answer": str(count),
                     "images": [image], "thought": thought,
                     "solution": f"<think>{thought}</think><answer>{count}</answer>"})
    return rows


def colours(num_examples: int, max_operand: int, seed: int, image_size: int = 56,
            multiple_choice: bool = False) -> list[dict]:
    """'What colour is the square?' on a black image with one square (side 14-28 px, anywhere) in
    one of the first `max_operand` of red, green, blue, yellow; the answer is the colour's name.
    With `multiple_choice`, 'What is the colour of the square?' with the colours as shuffled
    `options` and the right option's letter as the answer."""
    from PIL import Image, ImageDraw

    names = ["red", "green", "blue", "yellow"][:max(2, min(4, max_operand))]
    rgb = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40)}
    rng = random.Random(seed)
    rows = []
    for i in range(num_examples):
        name, side = rng.choice(names), rng.randint(14, 28)
        x, y = rng.randint(0, image_size - side), rng.randint(0, image_size - side)
        image = Image.new("RGB", (image_size, image_size))
        ImageDraw.Draw(image).rectangle([x, y, x + side - 1, y + side - 1], fill=rgb[name])
        thought = f"the square is {name}"
        row = {"id": f"colours-{i}", "question": "What colour is the square?", "answer": name,
               "images": [image], "thought": thought}
        if multiple_choice:
            options = rng.sample(names, len(names))
            row.update(question="What is the colour of the square?", options=options,
                       answer="ABCD"[options.index(name)])
        row["solution"] = f"<think>{thought}</think><answer>{row['answer']}</answer>"
        rows.append(row)
    return rows


IMAGE_COLOURS = ("red", "green", "blue", "yellow", "cyan", "magenta", "white", "black")  # dllm.image.models.PALETTE


def image_colours(max_operand: int) -> list[str]:
    """The first `max_operand` (2 to 8) colours of the image generation tasks."""
    return list(IMAGE_COLOURS[:max(2, min(max_operand, 8))])


def colour_layout(num_examples: int, max_operand: int, seed: int) -> list[dict]:
    """Image generation prompts 'red left, blue right' / 'green top, yellow bottom': two different
    colours of the first `max_operand` (at most 8) of the colour_layout reward's palette, split
    left-right or top-bottom; scored on the generated image by that reward (dllm.image.rewards)."""
    names = image_colours(max_operand)
    rng = random.Random(seed)
    rows = []
    for i in range(num_examples):
        first, second = rng.sample(names, 2)
        near, far = rng.choice([("left", "right"), ("top", "bottom")])
        rows.append({"id": f"layout-{i}", "question": f"{first} {near}, {second} {far}", "answer": "", "solution": ""})
    return rows


def colour_fill(num_examples: int, max_operand: int, seed: int) -> list[dict]:
    """Image generation prompts 'a red image': one of the first `max_operand` (at most 8) palette
    colours, scored on the whole generated image by the colour_layout reward."""
    names = image_colours(max_operand)
    rng = random.Random(seed)
    return [{"id": f"fill-{i}", "question": f"a {rng.choice(names)} image", "answer": "", "solution": ""}
            for i in range(num_examples)]


TASKS = {"addition": addition, "shapes": shapes, "colours": colours, "colour_layout": colour_layout,
         "colour_fill": colour_fill}


def generate(task: str, num_examples: int, max_operand: int, seed: int, **options) -> list[dict]:
    """Rows of synthetic task `task`; `options` are task-specific (colours: multiple_choice)."""
    if task not in TASKS:
        raise ValueError(f"data.synthetic.task: unknown task '{task}'; valid: {sorted(TASKS)}")
    return TASKS[task](num_examples=num_examples, max_operand=max_operand, seed=seed, **options)
