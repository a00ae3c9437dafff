"""Markdown tables, for the verify report, the sweep report and the benchmarks."""


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A table from cells already formatted as text; `|` and line breaks in a cell are escaped."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])
