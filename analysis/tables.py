"""The seed paper's tables (results and architecture) as Markdown and LaTeX, from the summary frame."""
from __future__ import annotations

import math

import pandas as pd

RESULTS_HEADER = ["Model", "Params", "Top-1 Acc (%)", "Top-5 Acc (%)", "Peak Epoch", "Δ(P→F) (%)",
                  "Throughput (img/s)"]
ARCH_HEADER = ["Model", "Params", "MLP Params", "Unique MLPs", "GFLOPs", "Expansion Ratio"]
DASH = "–"


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def fmt_count(n) -> str:
    """86_567_656 -> '86.6M' (the paper's style); small models keep a readable unit."""
    if not _finite(n):
        return DASH
    n = float(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def fmt_pm(mean, std, decimals: int = 2, thousands: bool = False) -> str:
    """'81.05±0.11'; the mean alone when std is undefined (one seed)."""
    if not _finite(mean):
        return DASH
    spec = f"{',' if thousands else ''}.{decimals}f"
    text = format(mean, spec)
    return f"{text}±{format(std, spec)}" if _finite(std) else text


def fmt_gflops(x) -> str:
    """One decimal like the paper (16.9); three significant digits for toy models (0.00435)."""
    if not _finite(x):
        return DASH
    return f"{x:.1f}" if x >= 1 else f"{x:.3g}"


def fmt_num(x, decimals: int = 1) -> str:
    return format(float(x), f".{decimals}f") if _finite(x) else DASH


def throughput_cell(row) -> str:
    if row["throughput_source"] == "train":
        cell = fmt_pm(row["throughput_img_s"], row["throughput_std"], 0, thousands=True)
        return f"{cell} (train)" if cell != DASH else DASH
    return fmt_pm(row["throughput_img_s"], math.nan, 0, thousands=True)


def results_rows(summary: pd.DataFrame, prefix: str = "") -> list[list[str]]:
    """Rows of the seed's results table; prefix selects the plain ("") or EMA ("ema_") accuracies."""
    rows = []
    for _, r in summary.iterrows():
        fin, peak = f"final_{prefix}top1", f"{prefix}peak_epoch"
        rows.append([
            r["name"], fmt_count(r["params"]),
            fmt_pm(r[f"{fin}_mean"], r[f"{fin}_std"]),
            fmt_pm(r[f"final_{prefix}top5_mean"], r[f"final_{prefix}top5_std"]),
            fmt_pm(r[f"{peak}_mean"], r[f"{peak}_std"], 0),
            fmt_pm(r[f"{prefix}delta_pf_mean"], r[f"{prefix}delta_pf_std"]),
            throughput_cell(r),
        ])
    return rows


def arch_rows(summary: pd.DataFrame) -> list[list[str]]:
    return [[r["name"], fmt_count(r["params"]), fmt_count(r["mlp_params"]),
             fmt_num(r["unique_mlps"], 0), fmt_gflops(r["gflops"]),
             fmt_num(r["expansion_ratio"], 1)]
            for _, r in summary.iterrows()]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "→": r"$\rightarrow$", "–": "--"}


def tex_escape(text: str) -> str:
    out = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    for sym, tex in _TEX_SYMBOLS.items():
        out = out.replace(sym, tex)
    return out


def latex(header: list[str], rows: list[list[str]], caption: str, label: str) -> str:
    """A booktabs table; needs \\usepackage{booktabs}."""
    cols = "l" + "r" * (len(header) - 1)
    body = [" & ".join(tex_escape(c) for c in row) + r" \\" for row in rows]
    return "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(caption)}}}", rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
        " & ".join(tex_escape(h) for h in header) + r" \\", r"\midrule",
        *body, r"\bottomrule", r"\end{tabular}", r"\end{table}",
    ])


def seeds_note(summary: pd.DataFrame) -> str:
    """How many seeds each mean stands on (the paper: 'Mean ± std over two seeds')."""
    ns = summary["n_seeds"].astype(int)
    if ns.nunique() == 1:
        n = int(ns.iloc[0])
        return f"Mean ± sample std over n = {n} seed{'s' if n != 1 else ''} per condition."
    parts = ", ".join(f"{name} {n}" for name, n in zip(summary["name"], ns))
    return f"Mean ± sample std over seeds; n per condition: {parts}."


def throughput_note(summary: pd.DataFrame) -> str:
    sources = sorted(set(summary["throughput_source"]))
    notes = []
    for s in sources:
        if s == "train":
            notes.append("'(train)': training images/s of all ranks (median over epochs), "
                         "not inference throughput")
        else:
            notes.append(f"inference throughput from jobs bench on {s[len('bench ('):-1]}")
    return "Throughput: " + "; ".join(notes) + "."


def tables_markdown(summary: pd.DataFrame, ema: bool) -> str:
    parts = ["### Results", "", markdown(RESULTS_HEADER, results_rows(summary)), "",
             seeds_note(summary) + " Δ(P→F) = peak − final top-1 (lower is better). " + throughput_note(summary)]
    if ema:
        parts += ["", "### Results with the EMA weights", "", markdown(RESULTS_HEADER, results_rows(summary, "ema_"))]
    parts += ["", "### Architecture", "", markdown(ARCH_HEADER, arch_rows(summary)), "",
              "Params count shared weights once. Expansion Ratio = MLP hidden width / embedding width."]
    return "\n".join(parts) + "\n"


def tables_latex(summary: pd.DataFrame, ema: bool) -> str:
    parts = [latex(RESULTS_HEADER, results_rows(summary),
                   seeds_note(summary) + " " + throughput_note(summary), "tab:results")]
    if ema:
        parts.append(latex(RESULTS_HEADER, results_rows(summary, "ema_"), "Results with the EMA weights.",
                           "tab:results-ema"))
    parts.append(latex(ARCH_HEADER, arch_rows(summary), "Architecture comparison.", "tab:architecture"))
    return "\n\n".join(parts) + "\n"
