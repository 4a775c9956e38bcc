"""The model card's learning curve: validation figures against the number of training photographs.

usage: python -m bench.learning_curve POINTS.json OUT.png
POINTS.json: [{"photos": N, "rule": {"hue": h, "psnr_gain": g}, "full": {"hue": h, "psnr_gain": g}}, ...]
with "rule" the choice rule's figures (metrics/train.json: the last 3 epochs on 128 px val crops)
and "full" the val photographs at full resolution (bench.model_quality ... val MODEL). Draws both
figures on two panels and prints the card's Markdown table. Not a speed benchmark: `make bench`
does not run it.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def main(points_path: str, out: str) -> None:
    points = sorted(json.loads(Path(points_path).read_text()), key=lambda p: p["photos"])
    photos = [p["photos"] for p in points]
    figure, (hue, gain) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    for key, label, style in (
        ("rule", "128 px val crops (choice rule)", "o-"),
        ("full", "val at full resolution", "s--"),
    ):
        hue.plot(photos, [p[key]["hue"] for p in points], style, label=label)
        gain.plot(photos, [p[key]["psnr_gain"] for p in points], style, label=label)
    hue.set(xlabel="training photographs", ylabel="hue agreement", title="Hue agreement (val)")
    gain.set(xlabel="training photographs", ylabel="dB over grey", title="PSNR gain over grey (val)")
    gain.axhline(0.0, color="grey", linewidth=0.8)
    hue.legend(fontsize=7)
    for axes in (hue, gain):
        axes.set_xticks(photos)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out)
    print("| training photographs | hue, rule | PSNR gain, rule | hue, full res | PSNR gain, full res |")
    print("|---|---|---|---|---|")
    for p in points:
        rule, full = p["rule"], p["full"]
        cells = [
            f"{rule['hue']:.3f}",
            f"{rule['psnr_gain']:+.2f} dB",
            f"{full['hue']:.3f}",
            f"{full['psnr_gain']:+.2f} dB",
        ]
        print(f"| {p['photos']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
