"""The markdown table the demo benchmarks print: one row per run, printed as it finishes, then the
whole table printed and written to <out>/summary.md."""
from pathlib import Path


def run_table(header: str, names: list[str], row, out: Path) -> list[str]:
    """`row(name)` gives the markdown row of each name, under `header` ("| a | b |") and its rule."""
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in names:
        lines.append(row(name))
        print(lines[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return lines
