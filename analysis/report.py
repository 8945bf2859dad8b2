"""Results tables and plots of an experiment (or one sweep of it), as files.

    python -m analysis.report --experiment ofat [--sweep ID] [--baseline experiment=paper]
                              [--tracking-uri URI] [--out results/]
    python -m analysis.report --runs-csv results/ablation/mnist-ofat/runs.csv --out /tmp/check [--margin 0.1]

writes variants.{md,tex,csv,html}, factors.{md,tex,csv,html}, runs.csv, variants.png,
factors.png and learning_curves.png, then prints the Markdown variant table with its line of
verdicts (worse, better, equivalent within ±margin points of test error, or undecided with the
seeds that would decide it: `analysis.stats.verdicts`; the margin defaults to the dataset's,
`analysis.stats.MARGINS`). With --runs-csv
the tables are rebuilt from a committed runs.csv, without the store (learning curves left out). The CSV files
hold the unrounded numbers; the other tables are rounded for reading. A report that cannot be
made prints one `error: ...` line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
from pandas.io.formats.style import Styler

from . import plots
from .runs import DEFAULT_TRACKING_URI, ReportError, load_curves, load_runs, read_runs_csv
from .stats import CONFIDENCE, default_margin, factor_table, variant_table, verdict_summary

BEST_MARK = "★"
#: Unicode used in the tables, as LaTeX commands (after LaTeX-escaping the text around them).
LATEX_SYMBOLS = str.maketrans({"±": r"$\pm$", "→": r"$\rightarrow$", "Δ": r"$\Delta$", "★": r"$\star$", "∞": r"$\infty$", "α": r"$\alpha$"})
LATEX_SPECIALS = str.maketrans({c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\^{}", "\\": r"\textbackslash{}"})
CI_HEADER = f"{CONFIDENCE:.0%} CI"
#: Text columns holding numbers, right-aligned in Markdown.
DELTA_HEADER, DELTA_CI_HEADER = "Δ vs baseline (pp, HL)", f"Δ {CI_HEADER}"
NUMERIC_TEXT = {
    "test error % (mean ± std)", CI_HEADER, DELTA_HEADER, DELTA_CI_HEADER, "p (Holm)", "p TOST (Holm)", "seeds needed",
    "effect (pp, HL)", "stalls", "stall p (Holm)",
}  # fmt: skip
HTML_TABLE_CSS = [
    {"selector": "", "props": "border-collapse: collapse; font-family: sans-serif; font-size: 0.9em;"},
    {"selector": "th, td", "props": "padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right;"},
    {"selector": "td:first-child, th:first-child", "props": "text-align: left;"},
    {"selector": "caption", "props": "caption-side: top; font-weight: bold; padding: 6px;"},
]


def _number(value: float, signed: bool = False) -> str:
    """Two decimals (percent or percentage points), blank for NaN, ∞ for an unbounded interval's end."""
    if math.isinf(value):
        return "+∞" if value > 0 else "-∞"
    return "" if math.isnan(value) else f"{value:+.2f}" if signed else f"{value:.2f}"


def _interval(low: float, high: float, signed: bool = False) -> str:
    return "" if math.isnan(low) else f"[{_number(low, signed)}, {_number(high, signed)}]"


def _p_value(p: float) -> str:
    return "" if math.isnan(p) else f"{p:#.3g}"


def _seeds(needed: float) -> str:
    """Seeds an undecided comparison needs: blank when decided (NaN), ∞ when no number would do."""
    return "" if math.isnan(needed) else "∞" if math.isinf(needed) else f"{needed:.0f}"


def _verdict_columns(table: pd.DataFrame) -> dict[str, list[str]]:
    """The verdict columns of a variant or factor table as text: the signed-rank rule's p-values,
    verdict and plan (`analysis.stats.RULE`), then the paired t-test's verdict, the rule the
    studies published before it declared (docs/studies.md#verdicts)."""
    return {
        "p (Holm)": [_p_value(p) for p in table["p_holm"]],
        "p TOST (Holm)": [_p_value(p) for p in table["p_tost_holm"]],
        "verdict": list(table["verdict"]),
        "seeds needed": [_seeds(n) for n in table["seeds_needed"]],
    }


def _t_verdicts(table: pd.DataFrame) -> dict[str, list[str]]:
    return {"t-test verdict": list(table["verdict_t"])}


def variants_display(table: pd.DataFrame) -> pd.DataFrame:
    """`variant_table` as text for a paper: errors in % with 2 decimals, p-values with 3
    significant digits, the best variant marked ★, the baseline's Δ cell saying so (Δ: the
    Hodges-Lehmann estimate of the paired differences, with its interval), each variant's
    verdict against the baseline and, undecided, the seeds that would decide it; its stalls
    (stalled seeds / seeds) with Fisher's test against the baseline's where either stalled; the
    paired t-test's verdict."""
    has_baseline = table["baseline"].any()
    delta = [
        "baseline" if is_baseline else _number(effect, signed=True) if has_baseline else ""
        for effect, is_baseline in zip(table["effect"], table["baseline"])
    ]
    base_stalls = int(table.loc[table["baseline"], "stalls"].iloc[0]) if has_baseline else 0
    stall_p = [
        "" if is_baseline or not (stalls or base_stalls) else _p_value(p)
        for p, stalls, is_baseline in zip(table["stall_p_holm"], table["stalls"], table["baseline"])
    ]
    return pd.DataFrame(
        {
            "variant": [f"{v} {BEST_MARK}" if best else v for v, best in zip(table["variant"], table["best"])],
            "n": table["n"],
            "test error % (mean ± std)": [
                _number(mean) if math.isnan(std) else f"{mean:.2f} ± {std:.2f}" for mean, std in zip(table["mean"], table["std"])
            ],
            CI_HEADER: [_interval(low, high) for low, high in zip(table["ci_low"], table["ci_high"])],
            DELTA_HEADER: delta,
            DELTA_CI_HEADER: [_interval(low, high, signed=True) for low, high in zip(table["effect_low"], table["effect_high"])],
            **_verdict_columns(table),
            "stalls": [f"{stalls}/{n}" for stalls, n in zip(table["stalls"], table["n"])],
            "stall p (Holm)": stall_p,
            **_t_verdicts(table),
        }
    )


def factors_display(table: pd.DataFrame) -> pd.DataFrame:
    """`factor_table` as text: effects (Hodges-Lehmann) and intervals in signed percentage
    points, 2 decimals, and each change's verdict, the paired t-test's beside it."""
    return pd.DataFrame(
        {
            "factor": table["factor"],
            "change": table["change"],
            "effect (pp, HL)": [_number(effect, signed=True) for effect in table["effect"]],
            CI_HEADER: [_interval(low, high, signed=True) for low, high in zip(table["ci_low"], table["ci_high"])],
            "variant pairs": table["n_pairs"],
            "paired seeds": table["n"],
            **_verdict_columns(table),
            **_t_verdicts(table),
            "flag": table["flag"],
        }
    )


def _styled(display: pd.DataFrame, highlighted: pd.Series | None, css: str) -> Styler:
    """`display` without its index; `css` on the rows where `highlighted` is True."""
    styler = display.style.hide(axis="index")
    if highlighted is None:
        return styler
    emphasis = pd.DataFrame("", index=display.index, columns=display.columns)
    emphasis.loc[highlighted.to_numpy()] = css
    return styler.apply(lambda _: emphasis, axis=None)


def _alignment(display: pd.DataFrame) -> list[str]:
    """"right" for columns of numbers (formatted or not), "left" for text."""
    return ["right" if c in NUMERIC_TEXT or pd.api.types.is_numeric_dtype(display[c]) else "left" for c in display]


def markdown_table(display: pd.DataFrame) -> str:
    """GitHub Markdown, cells exactly as formatted (tabulate would re-read "+0.50" as 0.5)."""
    return display.to_markdown(index=False, disable_numparse=True, colalign=_alignment(display))


def _write_tables(
    display: pd.DataFrame, numbers: pd.DataFrame, highlighted: pd.Series | None, caption: str, stem: Path, note: str = ""
) -> dict[str, Path]:
    """stem.md and stem.tex and stem.html from the text table `display` (`note`, its paragraphs
    one a line, below the Markdown table), stem.csv from the unrounded `numbers`; returns {file name: path}."""
    paths = {suffix: stem.with_suffix(f".{suffix}") for suffix in ("md", "tex", "csv", "html")}
    paragraphs = "".join(f"\n{line}\n" for line in note.splitlines())
    paths["md"].write_text(markdown_table(display) + "\n" + paragraphs, encoding="utf-8")
    numbers.to_csv(paths["csv"], index=False)
    latex = (
        _styled(display, highlighted, "font-weight: bold;")
        .format(escape="latex")
        .format_index(escape="latex", axis=1)
        .set_caption(caption.translate(LATEX_SPECIALS))
        .to_latex(hrules=True, convert_css=True, column_format="".join(side[0] for side in _alignment(display)))
    )
    paths["tex"].write_text(latex.translate(LATEX_SYMBOLS), encoding="utf-8")
    page = _styled(display, highlighted, "font-weight: bold; background-color: #e6f4ea;")
    # Styler ids its table with a random uuid by default: the same runs would give a different
    # page each time, and a committed study's HTML would change on every rerun of its command.
    page = page.set_uuid(stem.name).set_caption(caption).set_table_styles(HTML_TABLE_CSS)
    paths["html"].write_text(page.to_html(doctype_html=True), encoding="utf-8")
    return {path.name: path for path in paths.values()}


#: What a table's numbers measure, by how its runs' training recipes were chosen (the `stage`
#: tag a fair study puts on its finals, lenet5.study).
RECIPE_NOTES = {
    "fixed": "Fixed recipe: every variant trained with its preset's optimizer settings, none tuned for it, "
    "so the table also measures how well that recipe suits each variant (docs/studies.md).",
    "tuned": "Tuned recipe: each variant's learning rate selected on the validation error of held-out "
    "training images, never on test (tuning.md), then trained on all training images over seeds.",
    "mixed": "Mixed recipes: some runs are a fair study's finals (learning rate tuned per variant), "
    "others trained with their preset's fixed settings; compare with care.",
}


def recipe_of(runs: pd.DataFrame) -> str:
    """"tuned" when every run is a study's final, "fixed" when none is, else "mixed"."""
    finals = (runs["stage"] == "final") if "stage" in runs else pd.Series(False, index=runs.index)
    return "tuned" if finals.all() else "fixed" if not finals.any() else "mixed"


def write_report(
    tracking_uri: str,
    experiment: str,
    out_dir: str | Path,
    sweep_id: str | None = None,
    baseline: str | None = None,
    margin: float | None = None,
) -> dict[str, Path]:
    """Write every table and figure of `experiment` (its sweep `sweep_id` only, when given)
    into `out_dir` (created if needed); returns {file name: path}. `baseline`: a variant label
    or key=value filters (see `analysis.stats.select_baseline`); `margin`: the equivalence
    margin of the verdicts, points of test error (None: the dataset's). Raises ReportError."""
    runs = load_runs(tracking_uri, experiment, sweep_id)
    scope = f"experiment '{experiment}'" + (f", sweep {sweep_id}" if sweep_id else "")
    return write_tables(runs, tracking_uri, out_dir, scope, baseline, margin=margin)


#: The params a fair study selects per variant (lenet5.study): never a difference between
#: variants in its factor table.
TUNED_PARAMS = ("optim.lr",)


def write_tables(
    runs: pd.DataFrame,
    tracking_uri: str | None,
    out_dir: str | Path,
    scope: str,
    baseline: str | None = None,
    tuned: tuple[str, ...] | None = None,
    margin: float | None = None,
) -> dict[str, Path]:
    """`write_report` for the runs of `load_runs`' frame `runs` (`scope` names them in the
    captions); `tuned`: params selected per variant, no difference in the factor table (default:
    `TUNED_PARAMS` when every run is a study's final); `margin`: see `write_report`. The Markdown
    tables and the captions state the margin and count the verdicts (`verdict_summary`).
    `tracking_uri` None (runs read back from a runs.csv) leaves out learning_curves.png, the one
    file that needs the per-epoch metrics."""
    if runs["test_error"].isna().all():
        raise ReportError(f"no run of {scope} has a test error (a study's tuning runs evaluate validation only)")
    recipe = recipe_of(runs)
    if tuned is None:
        tuned = TUNED_PARAMS if recipe == "tuned" else ()
    margin = default_margin(runs) if margin is None else margin
    variants, factors = variant_table(runs, baseline, margin), factor_table(runs, tuned, margin)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    note = RECIPE_NOTES[recipe]
    summary = verdict_summary(variants, margin)
    files = _write_tables(
        variants_display(variants), variants, variants["best"], f"Final test error per variant, {scope}. {summary} {note}",
        out / "variants", f"{summary}\n{note}",
    )  # fmt: skip
    summary = verdict_summary(factors, margin)
    files |= _write_tables(
        factors_display(factors), factors, None, f"Effect of each factor on test error, {scope}. {summary} {note}",
        out / "factors", f"{summary}\n{note}",
    )  # fmt: skip
    files |= write_factorial(runs, out, margin)
    runs.to_csv(out / "runs.csv", index=False)
    files["runs.csv"] = out / "runs.csv"
    figures = {"variants.png": lambda: plots.variants_figure(variants), "factors.png": lambda: plots.factors_figure(factors)}
    if tracking_uri is not None:
        curves = load_curves(tracking_uri, runs["run_id"], metrics=("test_error",))
        figures["learning_curves.png"] = lambda: plots.learning_curves_figure(curves, runs)
    for name, figure in figures.items():
        files[name] = plots.save(figure(), out / name)
    return files


def _contrast_display(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contrast": table["contrast"],
            "n": table["n"],
            "estimate (pp, HL)": [_number(e, signed=True) for e in table["estimate"]],
            CI_HEADER: [_interval(low, high, signed=True) for low, high in zip(table["ci_low"], table["ci_high"])],
            **_verdict_columns(table),
            **_t_verdicts(table),
        }
    )


def write_factorial(runs: pd.DataFrame, out: Path, margin: float) -> dict[str, Path]:
    """factorial.md (and factorial_{main,interactions,simple,anova,cells}.csv, factorial.png) when
    the variants of `runs` form a factorial (`analysis.factorial`): the cells, the main effects,
    the interactions and the simple effects with their verdicts, and the least-squares ANOVA; an
    incomplete factorial's factorial.md says what is missing. Nothing for a study that is no factorial."""
    from . import factorial

    design = factorial.factorial_design(runs)
    if design is None:
        return {}
    path = out / "factorial.md"
    if not design.complete:
        path.write_text(design.describe_missing() + "\n", encoding="utf-8")
        return {path.name: path}
    cells = factorial.cell_table(runs, design)
    tables = factorial.contrasts(runs, design, margin)
    anova = factorial.anova(runs, design)
    files = {}
    for name, frame in {**tables, "anova": anova, "cells": cells}.items():
        files[f"factorial_{name}.csv"] = out / f"factorial_{name}.csv"
        frame.to_csv(files[f"factorial_{name}.csv"], index=False)
    cells_shown = cells.assign(
        **{"test error % (mean)": [_number(m) for m in cells["mean"]],
           CI_HEADER: [_interval(low, high) for low, high in zip(cells["ci_low"], cells["ci_high"])]}
    ).drop(columns=["mean", "ci_low", "ci_high"])  # fmt: skip
    anova_shown = anova.assign(**{c: [f"{v:#.3g}" if pd.notna(v) else "" for v in anova[c]] for c in anova.columns if c != "term"})
    seeds = design.balanced_seeds
    sections = [
        f"# Factorial: {' × '.join(design.factors)}",
        f"{len(design.cells)} cells, seeds {', '.join(map(str, seeds))} in every cell (the balanced set: seeds a cell has "
        "beyond it are counted in the cells' table, not analysed). Each contrast is a per-seed number, decided by the "
        "signed-rank rule (docs/studies.md#verdicts); estimate: Hodges-Lehmann, with its 95% interval.",
        factorial.summary(tables),
        "## Cells", markdown_table(cells_shown),
        "## Main effects", markdown_table(_contrast_display(tables["main"])),
        f"## Interactions (margin ±{factorial.INTERACTION_MARGIN_FACTOR * margin:g} pp)", markdown_table(_contrast_display(tables["interactions"])),
        "## Simple effects", markdown_table(_contrast_display(tables["simple"])),
        "## Least-squares ANOVA (test error ~ factors, all interactions, seed as a block)", markdown_table(anova_shown),
    ]  # fmt: skip
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    files[path.name] = path
    files["factorial.png"] = plots.save(factorial.factorial_figure(cells, design), out / "factorial.png")
    return files


def rebuild_from_runs_csv(
    runs_csv: str | Path, out_dir: str | Path, scope: str | None = None, baseline: str | None = None, margin: float | None = None
) -> dict[str, Path]:
    """The tables and figures of a committed report from its runs.csv alone, no MLflow store:
    variants.* and factors.* come out as the report wrote them (given its `scope`, `baseline`
    and `margin`); learning_curves.png needs the store and is not made."""
    runs = read_runs_csv(runs_csv)
    return write_tables(runs, None, out_dir, scope or Path(runs_csv).parent.name, baseline, margin=margin)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="MLflow experiment name (tracking.experiment of the runs)")
    source.add_argument("--runs-csv", type=Path, metavar="FILE", help="rebuild the tables from a report's runs.csv instead of the store")
    parser.add_argument("--scope", help="with --runs-csv: what the captions call the runs (default: the folder's name)")
    parser.add_argument("--sweep", metavar="ID", help="only the runs of this sweep (its sweep_id tag)")
    parser.add_argument("--baseline", help="variant label, or key=value filters such as experiment=paper (default: the variant 'paper', if any)")
    parser.add_argument(
        "--margin", type=_margin, metavar="PP",
        help="equivalence margin of the verdicts, in percentage points of test error (default: the dataset's, 0.1 on MNIST)",
    )  # fmt: skip
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"MLflow tracking URI (default {DEFAULT_TRACKING_URI})")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default results/)")
    return parser.parse_args(argv)


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"a margin is a positive number of points, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.runs_csv is not None:
            files = rebuild_from_runs_csv(args.runs_csv, args.out, args.scope, args.baseline, args.margin)
        else:
            files = write_report(
                args.tracking_uri, args.experiment, args.out, sweep_id=args.sweep, baseline=args.baseline, margin=args.margin
            )
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(files["variants.md"].read_text(encoding="utf-8"))
    print(f"report written to {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
